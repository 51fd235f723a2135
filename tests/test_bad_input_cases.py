"""Table-driven bad-input suite: every row is a command line a user could type plus the setup
that makes it bad, and must end with exit 2, exactly one stderr line `error: ...` naming the
file/field, no traceback, and no new output files.

Rows run in-process (`olmo2.cli.main`) so the table stays fast; a few cases that need a real
process (bytes in argv, a closed pipe, a full disk) run as subprocesses at the end. Add a
row for every new kind of bad input a verb learns to refuse.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from olmo2.cli import main
from olmo2.config import ModelConfig
from olmo2.model import Olmo2

REPO = Path(__file__).resolve().parents[1]


# ---- fixtures: a tiny model with a tiny tokenizer, a tokenized data dir ---------------
@pytest.fixture(scope="module")
def tok():
    from tokenizers import Tokenizer as HFTok
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from olmo2.tokenizer import Tokenizer
    tk = HFTok(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(["hello world, the cat sat on the mat."] * 20, trainer)
    return Tokenizer(tk)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tok):
    """{model: ckpt dir (ctx 128), notok: ckpt without tokenizer, tokjson: tokenizer.json, root}."""
    from olmo2.checkpoint import save_model
    root = tmp_path_factory.mktemp("bad")
    cfg = ModelConfig(vocab_size=384, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=128,
                      eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    m = Olmo2(cfg)
    m.reset_parameters(torch.Generator().manual_seed(0))
    save_model(m, root / "model", tokenizer=tok)
    save_model(m, root / "notok")
    (root / "tokdir").mkdir()
    tok.save(root / "tokdir")
    return {"root": root, "model": root / "model", "notok": root / "notok",
            "tokjson": root / "tokdir" / "tokenizer.json"}


def _copy_with_config(world, tmp_path, **changes) -> Path:
    """A copy of the tiny checkpoint whose config.json has `changes` applied (None deletes)."""
    import shutil
    d = tmp_path / "ckpt"
    shutil.copytree(world["model"], d)
    cfg = json.loads((d / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (d / "config.json").write_text(json.dumps(cfg))  # NaN is written as NaN, as Python's json reads it
    return d


def _stdin(monkeypatch, data: bytes):
    class In(io.TextIOWrapper):
        def isatty(self):
            return False
    monkeypatch.setattr(sys, "stdin", In(io.BytesIO(data), encoding="utf-8"))


# ---- the table ------------------------------------------------------------------------
# (id, argv with {model}/{notok}/{tmp}/{tokjson}/{root} placeholders, setup(world, tmp_path,
#  monkeypatch) -> extra format keys or None, needles the one error line must contain)
def _cfg(**ch):
    return lambda w, t, mp: {"bad": str(_copy_with_config(w, t, **ch))}


def _index_list(w, t, mp):
    d = _copy_with_config(w, t)
    (d / "model.safetensors.index.json").write_text("[1, 2, 3]")
    return {"bad": str(d)}


def _file(name: str, data: bytes):
    def setup(w, t, mp):
        (t / name).write_bytes(data)
        return {"f": str(t / name)}
    return setup


def _stdin_setup(data: bytes):
    return lambda w, t, mp: _stdin(mp, data)


def _env(**kv):
    def setup(w, t, mp):
        for k, v in kv.items():
            mp.setenv(k, v)
    return setup


def _chdir(w, t, mp):
    mp.chdir(t)


def _runs_dir(w, t, mp):
    (t / "runs").mkdir()
    mp.chdir(t)


CASES = [
    # invalid UTF-8: argv (as Python hands it over: surrogate-escaped), stdin, files
    ("utf8-prompt-arg", ["generate", "--model", "{model}", "--prompt", "ab\udcffc"], None, ["--prompt", "0xff"]),
    ("utf8-prompt-stdin", ["generate", "--model", "{model}", "--prompt", "-"],
     _stdin_setup(b"fine\nbad \xc3\x28 here"), ["--prompt - (stdin)", "line 2", "0xc3"]),
    ("utf8-score-text", ["score", "--model", "{model}", "--text", "x\udcfe"], None, ["--text", "0xfe"]),
    ("utf8-score-file", ["score", "--model", "{model}", "--file", "{f}"], _file("latin1.txt", b"ok\ncaf\xe9\n"),
     ["latin1.txt", "line 2, column 4", "0xe9"]),
    ("utf8-system", ["chat", "--model", "{model}", "--system", "\udc80"], None, ["--system", "0x80"]),
    # config.json: every field's type and range, before anything is allocated
    ("cfg-rope-parameters-str", ["info", "--model", "{bad}"], _cfg(rope_parameters="x"), ["config.json", "rope_parameters"]),
    ("cfg-head-dim-0", ["score", "--model", "{bad}", "--text", "hi"], _cfg(head_dim=0), ["config.json", "head_dim"]),
    ("cfg-eps-negative", ["score", "--model", "{bad}", "--text", "hi"], _cfg(rms_norm_eps=-1), ["config.json", "rms_norm_eps"]),
    ("cfg-max-pos-1e11", ["score", "--model", "{bad}", "--text", "hi"], _cfg(max_position_embeddings=1e11),
     ["config.json", "max_position_embeddings"]),
    ("cfg-layers-1e6", ["score", "--model", "{bad}", "--text", "hi"], _cfg(num_hidden_layers=1e6),
     ["config.json", "num_hidden_layers"]),
    ("cfg-hidden-float", ["info", "--model", "{bad}"], _cfg(hidden_size=64.7), ["config.json", "hidden_size", "integer"]),
    ("cfg-kv-heads-0", ["info", "--model", "{bad}"], _cfg(num_key_value_heads=0), ["config.json", "num_key_value_heads"]),
    ("cfg-theta-nan", ["info", "--model", "{bad}"], _cfg(rope_theta=float("nan"), rope_parameters=None),
     ["config.json", "rope_theta"]),
    ("cfg-eos-negative", ["info", "--model", "{bad}"], _cfg(eos_token_id=-3), ["config.json", "eos_token_id"]),
    ("cfg-index-list", ["score", "--model", "{bad}", "--text", "hi"], _index_list, ["model.safetensors.index.json"]),
    ("cfg-too-big-for-ram", ["score", "--model", "{model}", "--text", "hi"], _env(OLMO2_MEMORY_BYTES="1000"),
     ["config.json", "needs about", "GB"]),
    # --set values: refused at parse time, before any run directory exists
    ("set-lr-nan", ["train", "--recipe", "tiny_stage1", "--set", "train.lr=nan", "--out", "{tmp}/run"], None,
     ["--set train.lr=nan", "lr"]),
    ("set-log-every-0", ["train", "--recipe", "tiny_stage1", "--set", "train.log_every=0", "--out", "{tmp}/run"], None,
     ["log_every"]),
    ("set-seq-len-0", ["train", "--recipe", "tiny_stage1", "--set", "train.seq_len=0", "--out", "{tmp}/run"], None,
     ["seq_len"]),
    ("set-max-steps-neg", ["train", "--recipe", "tiny_stage1", "--set", "train.max_steps=-5", "--out", "{tmp}/run"],
     None, ["max_steps"]),
    ("set-model-eps", ["train", "--recipe", "tiny_stage1", "--set", "model.norm_eps=-1", "--out", "{tmp}/run"], None,
     ["norm_eps"]),
    # sampling and other flag values
    ("seed-beyond-64-bits", ["generate", "--model", "{model}", "--prompt", "hi", "--seed", str(2**70)], None, ["--seed"]),
    ("init-out-dot", ["init", "--preset", "tiny", "--out", "."], _chdir, ["current directory"]),
    ("chat-max-new-too-big", ["chat", "--model", "{model}", "--max-new-tokens", "600"], _stdin_setup(b"hi\n"),
     ["--max-new-tokens 600", "128"]),
    # hints that fit
    ("no-tokenizer", ["generate", "--model", "{notok}", "--prompt", "hi"], None, ["tokenizer.json"]),
    ("local-typo-with-slash", ["info", "--model", "runs/typo"], _runs_dir, ["runs/typo", "no such directory"]),
    ("hub-id-offline", ["info", "--model", "nosuchorg/nosuchmodel"], _env(HF_HUB_OFFLINE="1"),
     ["nosuchorg/nosuchmodel", "no such local directory", "offline"]),
]


@pytest.mark.parametrize("argv,setup,needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_case(argv, setup, needles, world, tmp_path, monkeypatch, capsys):
    keys = {k: str(v) for k, v in world.items()} | {"tmp": str(tmp_path)}
    keys |= (setup(world, tmp_path, monkeypatch) if setup else None) or {}
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    rc = main([a.format(**keys) for a in argv])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("Note: this model")]
    assert rc == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before, "left files behind"


# ---- cases that are not plain refusals -------------------------------------------------
def test_no_hint_names_a_flag_the_verb_lacks(world, capsys):
    for verb in (["generate", "--prompt", "hi"], ["score", "--text", "hi"]):
        assert main([verb[0], "--model", str(world["notok"]), *verb[1:]]) == 2
        assert "--tokenizer" not in capsys.readouterr().err.replace("take --tokenizer", "")


def test_chat_survives_a_bad_line(world, monkeypatch, capsys):
    _stdin(monkeypatch, b"hello\n\xff\xfe bad\nthe cat\n/exit\n")
    assert main(["chat", "--model", str(world["model"]), "--max-new-tokens", "3", "--temperature", "0"]) == 0
    cap = capsys.readouterr()
    assert "error: stdin line 2: invalid UTF-8 at column 1 (byte 0xff); " in cap.err
    assert "the line was skipped" in cap.err
    assert cap.out.count("\n") == 2  # both good lines got a reply


def test_chat_ctrl_c_exits_130(world, monkeypatch, capsys):
    class Interrupting(io.BytesIO):
        def readline(self, *a):
            raise KeyboardInterrupt
    stdin = io.TextIOWrapper(Interrupting())
    monkeypatch.setattr(sys, "stdin", stdin)
    assert main(["chat", "--model", str(world["model"])]) == 130


@pytest.mark.parametrize("flags", [["--temperature", "1e-45"], ["--repetition-penalty", "1e-45"],
                                   ["--repetition-penalty", "1e45", "--temperature", "1e-30"]])
def test_extreme_sampling_values_generate(world, capsys, flags):
    assert main(["generate", "--model", str(world["model"]), "--prompt", "the cat the cat", "--max-new-tokens", "6",
                 "--seed", "0", *flags]) == 0
    assert "tokens" in capsys.readouterr().err


def test_python_api_refuses_bad_ids(world):
    from olmo2.errors import Olmo2Error
    from olmo2.checkpoint import load_model
    m = load_model(world["model"])
    for bad in ([[1.7, 2.0]], torch.tensor([[1.0, 2.0]]), [[1, 384]], torch.tensor([[-1, 2]])):
        with pytest.raises(Olmo2Error) as ei:
            m.generate(bad, 2)
        assert isinstance(ei.value, ValueError) and "token id" in str(ei.value)
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        m(torch.tensor([[3, 9999]]))
    with pytest.raises(ValueError, match="integer tensor"):
        m(torch.tensor([[3.0, 4.0]]))


def test_data_vocab_larger_than_model(world, tmp_path, capsys):
    from olmo2.data.tokenize import tokenize
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": f"the cat sat {i}"}) + "\n" for i in range(50)))
    tokenize([str(tmp_path / "a.jsonl")], str(world["tokjson"]), str(tmp_path / "tok"), progress=False)
    rc = main(["train", "--recipe", "tiny_stage1", "--data", str(tmp_path / "tok"), "--set", "model.vocab_size=128",
               "--set", "model.eos_token_id=0", "--set", "model.pad_token_id=1", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and "-id tokenizer (ids up to" in err and "model.vocab_size is 128" in err, err
    assert not (tmp_path / "run").exists()


# ---- corrupt compressed inputs to `data tokenize` --------------------------------------
def _corrupt_inputs(d: Path) -> dict[str, bytes]:
    import gzip

    import zstandard
    plain = "".join(json.dumps({"text": f"document {i} about the cat"}) + "\n" for i in range(3000)).encode()
    gz = gzip.compress(plain)
    zst = zstandard.ZstdCompressor().compress(plain)
    files = {"trunc.jsonl.gz": gz[: len(gz) // 2], "notgzip.jsonl.gz": plain, "trunc.jsonl.zst": zst[: len(zst) // 2],
             "garbage.jsonl.zst": b"this is not zstd data at all"}
    for name, data in files.items():
        (d / name).write_bytes(data)
    return files


@pytest.mark.parametrize("name,reason", [("trunc.jsonl.gz", "truncated or corrupt .gz"),
                                         ("notgzip.jsonl.gz", "not gzip data"),
                                         ("trunc.jsonl.zst", "truncated or corrupt .zst"),
                                         ("garbage.jsonl.zst", "truncated or corrupt .zst")])
def test_corrupt_compressed_input(world, tmp_path, capsys, name, reason):
    from olmo2.data.tokenize import tokenize
    from olmo2.errors import DataError
    _corrupt_inputs(tmp_path)
    src = str(tmp_path / name)
    with pytest.raises(DataError) as ei:  # --strict: fatal, naming file and line
        tokenize([src], str(world["tokjson"]), str(tmp_path / "strict"), strict=True, progress=False)
    assert str(ei.value).startswith(f"{src}:") and reason in str(ei.value)
    assert not list((tmp_path / "strict").glob("*.json")) or not (tmp_path / "strict" / "metadata.json").exists()
    # default: reported like a malformed line (file:line: reason), the rest of the file skipped
    meta = tokenize([src], str(world["tokjson"]), str(tmp_path / "lenient"), progress=False)
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if reason in ln)
    assert line.startswith(f"{src}:") and "re" in line
    assert meta["malformed_lines"] == 1


# ---- real processes: bytes in argv, a closed pipe, a full disk ---------------------------
def _run(*args, **kw):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "olmo2", *args], capture_output=True, env=env, timeout=120, **kw)


def test_invalid_utf8_bytes_in_argv(world):
    r = _run("score", "--model", str(world["model"]), "--text", b"caf\xe9")
    err = r.stderr.decode()
    assert r.returncode == 2 and "Traceback" not in err
    assert err.startswith("error: --text: invalid UTF-8") and "0xe9" in err and err.count("\n") == 1


def test_closed_pipe_ends_quietly(world):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.Popen([sys.executable, "-m", "olmo2", "generate", "--model", str(world["model"]), "--prompt",
                          "the cat", "--max-new-tokens", "50", "--temperature", "1", "--seed", "0"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    p.stdout.close()  # the reader is gone before the first byte: like `| head -c 0`
    _, err = p.communicate(timeout=120)
    err = err.decode()
    assert p.returncode == 0, err
    assert "error" not in err and "Traceback" not in err and "Exception ignored" not in err, err


def test_disk_full_simulated_init(tmp_path, monkeypatch, capsys):
    """ENOSPC as safetensors reports it (a SafetensorError, not an OSError): one line, nothing left."""
    import safetensors.torch as st
    from safetensors import SafetensorError

    def full(*a, **k):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    monkeypatch.setattr(st, "save_file", full)
    assert main(["init", "--preset", "tiny", "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'm'}: no space left on device") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


@pytest.fixture()
def full_dir(tmp_path):
    """A 256 KiB tmpfs: a real ENOSPC (root only; skipped elsewhere)."""
    d = tmp_path / "full"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(d)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield d
    subprocess.run(["umount", str(d)], capture_output=True)


def test_disk_full_real(world, full_dir, tmp_path):
    r = _run("init", "--preset", "tiny", "--out", str(full_dir / "m"))
    err = r.stderr.decode()
    assert r.returncode == 2 and err.startswith(f"error: {full_dir / 'm'}: no space left on device"), err
    assert list(full_dir.iterdir()) == []
    from olmo2.data.tokenize import tokenize
    from olmo2.errors import DiskFullError
    (tmp_path / "big.jsonl").write_text("".join(json.dumps({"text": "the cat sat on the mat " * 20}) + "\n"
                                                for _ in range(3000)))
    with pytest.raises(DiskFullError, match=f"{full_dir}/.*no space left on device"):
        tokenize([str(tmp_path / "big.jsonl")], str(world["tokjson"]), str(full_dir / "tok"), progress=False)
    assert not list((full_dir / "tok").glob("*.tmp")) and not list((full_dir / "tok").glob(".*.tmp"))
