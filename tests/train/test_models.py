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


def test_dropout_hooks_survive_recipe_conversion():
    pytest.importorskip("fp4lab.nn")
    from fp4lab.models import add_dropout, build_model
    from fp4lab.nn import convert

    x = torch.randint(0, 256, (2, 32))
    model = build_model("tiny", 256, seed=0)
    add_dropout(model, 0.3)
    convert(model, "mxfp4")  # replaces the Linear layers; the hooks sit on their parents
    model.train()
    a, b = model(input_ids=x).logits, model(input_ids=x).logits
    assert not torch.equal(a, b)
    model.eval()
    assert torch.equal(model(input_ids=x).logits, model(input_ids=x).logits)
    plain = build_model("tiny", 256, seed=0)
    convert(plain, "mxfp4")
    plain.eval()
    assert torch.equal(model(input_ids=x).logits, plain(input_ids=x).logits)  # eval: dropout is off


def test_shakespeare_char_preset_has_nanogpt_dropout_and_beta2(tmp_path):
    from fp4lab.train import TrainConfig

    cfg = TrainConfig(out=str(tmp_path), preset="shakespeare-char").resolve()
    assert (cfg.dropout, cfg.beta2) == (0.2, 0.99)
    cfg = TrainConfig(out=str(tmp_path), preset="tiny").resolve()
    assert (cfg.dropout, cfg.beta2) == (0.0, 0.95)
    with pytest.raises(ValueError, match="dropout"):
        TrainConfig(out=str(tmp_path), dropout=1.0).resolve()


def test_compile_mode_is_checked(tmp_path):
    from fp4lab.train import TrainConfig

    assert TrainConfig(out=str(tmp_path), compile=True, compile_mode="reduce-overhead").resolve().compile_mode \
        == "reduce-overhead"
    with pytest.raises(ValueError, match="compile_mode must be one of"):
        TrainConfig(out=str(tmp_path), compile_mode="fast").resolve()
