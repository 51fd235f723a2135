"""Bad input gets one clear line on stderr, a non-zero exit, no traceback, nothing half-written."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from olmo2.checkpoint import load_model, save_model
from olmo2.config import ModelConfig, preset
from olmo2.errors import CheckpointError, ConfigError
from olmo2.model import Olmo2

TINY = preset("tiny").replace(vocab_size=320, eos_token_id=300, pad_token_id=301)


def run_cli(*args, debug=False):
    cmd = [sys.executable, "-m", "olmo2", *(["--debug"] if debug else []), *map(str, args)]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def assert_one_line_error(r, *needles):
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture()
def ckpt(tmp_path):
    m = Olmo2(TINY)
    m.reset_parameters(torch.Generator().manual_seed(0))
    return save_model(m, tmp_path / "m")


def test_truncated_safetensors(ckpt):
    f = ckpt / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(ckpt)
    assert_one_line_error(run_cli("info", "--model", ckpt), "model.safetensors")
    r = run_cli("score", "--model", ckpt, "--text", "hi")
    assert_one_line_error(r, "model.safetensors", "truncated")


def test_garbage_header(ckpt):
    (ckpt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + b"\0" * 64)
    with pytest.raises(CheckpointError, match="header is not JSON"):
        load_model(ckpt)


def test_missing_unexpected_misshaped(ckpt, tmp_path):
    from safetensors.torch import load_file, save_file
    f = ckpt / "model.safetensors"
    sd = load_file(f)
    missing = dict(sd); missing.pop("model.layers.1.mlp.up_proj.weight")
    save_file(missing, f, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="missing tensor 'model.layers.1.mlp.up_proj.weight'"):
        load_model(ckpt)
    extra = dict(sd); extra["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(64)
    save_file(extra, f, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="unexpected tensor 'model.layers.0.self_attn.q_proj.bias'"):
        load_model(ckpt)
    bad = dict(sd); bad["lm_head.weight"] = torch.zeros(10, 64)
    save_file(bad, f, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"'lm_head.weight' has shape \(10, 64\)"):
        load_model(ckpt)


def test_unknown_model_type(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["model_type"] = "llama"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="model_type is 'llama'"):
        load_model(ckpt)
    assert_one_line_error(run_cli("info", "--model", ckpt), "config.json", "llama")
    (ckpt / "config.json").write_text("{not json")
    assert_one_line_error(run_cli("info", "--model", ckpt), "config.json", "not valid JSON")


def test_nonexistent_paths(tmp_path):
    assert_one_line_error(run_cli("info", "--model", tmp_path / "nope"), "no such directory")
    assert_one_line_error(run_cli("score", "--model", tmp_path / "nope", "--file", tmp_path / "x.txt"))
    empty = tmp_path / "empty"; empty.mkdir()
    assert_one_line_error(run_cli("info", "--model", empty), "config.json")


def test_debug_shows_traceback(tmp_path):
    r = run_cli("info", "--model", tmp_path / "nope", debug=True)
    assert r.returncode == 2 and "Traceback" in r.stderr


def test_bad_flags_exit_nonzero():
    r = run_cli("init", "--preset", "nope-7b", "--out", "/tmp/never-written")
    assert_one_line_error(r, "invalid choice: 'nope-7b'", "olmo2-1b")  # --preset lists its choices
    assert not Path("/tmp/never-written").exists()
    with pytest.raises(ConfigError, match="unknown preset 'nope-7b'"):  # the Python API's one line
        preset("nope-7b")
    r = run_cli("info")  # missing required flag: one line too, exit 2
    assert_one_line_error(r, "olmo2 info", "--model")
    assert r.returncode == 2


def test_tokenizer_larger_than_embedding(tmp_path, dolma2_tokenizer_path):
    from olmo2.tokenizer import Tokenizer
    m = Olmo2(TINY)
    save_model(m, tmp_path / "small", tokenizer=Tokenizer.from_file(dolma2_tokenizer_path))
    assert_one_line_error(run_cli("score", "--model", tmp_path / "small", "--text", "hello"),
                          "100278 ids", "embeds only 320")


def test_invalid_config_values():
    with pytest.raises(ConfigError, match="multiple of n_kv_heads"):
        ModelConfig(n_heads=6, n_kv_heads=4, d_model=48)


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    m = Olmo2(TINY)
    out = tmp_path / "out"
    import safetensors.torch as st

    def boom(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(st, "save_file", boom)
    with pytest.raises(OSError):
        save_model(m, out)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_overwrite_keeps_old_until_new_is_complete(tmp_path):
    m = Olmo2(TINY)
    out = save_model(m, tmp_path / "out")
    before = (out / "model.safetensors").read_bytes()
    with torch.no_grad():
        m.lm_head.weight.add_(1)
    save_model(m, out)
    assert (out / "model.safetensors").read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_hub_id_offline_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="allenai/OLMo-2-0425-1B: no such local directory and, as a hub id, not in the local hub cache while offline"):
        load_model("allenai/OLMo-2-0425-1B")
    r = subprocess.run([sys.executable, "-m", "olmo2", "info", "--model", "allenai/OLMo-2-0425-1B"],
                       capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=120)
    assert_one_line_error(r, "no such local directory", "offline")
