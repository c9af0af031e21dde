"""Presets and config files give HF Llama models; a finished run is a loadable HF checkpoint."""
import json

import pytest
import torch

from fp4lab.models import build_model, count_parameters, model_config


@pytest.mark.parametrize("preset,low,high", [("tiny", 0.7e6, 1.2e6), ("shakespeare-char", 10.4e6, 11e6)])
def test_preset_sizes(preset, low, high):
    n = count_parameters(build_model(preset, 256, seed=0), non_embedding=False)
    assert low < n < high


def test_same_seed_same_weights_and_bad_preset(tmp_path):
    a, b = build_model("tiny", 256, seed=1), build_model("tiny", 256, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        model_config("huge", 256)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        model_config(str(bad), 256)


def test_config_file_run_saves_a_hf_checkpoint(tmp_path, data_dir):
    from transformers import LlamaForCausalLM

    from fp4lab.train import TrainConfig, load_checkpoint, train

    cfg_file = tmp_path / "model.json"
    cfg_file.write_text(json.dumps(dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1,
                                        max_position_embeddings=64)))
    out = tmp_path / "run"
    train(TrainConfig(out=str(out), preset=str(cfg_file), data=str(data_dir), steps=2, batch_size=2,
                      seq_len=16, eval_batches=1, progress=False))
    hf = LlamaForCausalLM.from_pretrained(out / "model")
    assert hf.config.num_key_value_heads == 1 and hf.config.vocab_size == 256
    saved = load_checkpoint(out / "checkpoint.pt")["model"]
    for name, tensor in hf.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
