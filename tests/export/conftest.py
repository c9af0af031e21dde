from tests.tiny_hf import calib_ids, make_tiny_model, tiny_llama, tiny_model_factory  # noqa: F401
