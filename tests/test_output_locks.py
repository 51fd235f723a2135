"""Concurrent and repeated writers of one output, and what killed writers leave behind.

- two `data tokenize` runs with different settings into one --out: the second is refused,
  naming the setting (it used to exit 0 with metadata disagreeing with the shards);
- a second run of the same part while one holds the lock is refused at once;
- temps of killed writers (a whole shard in tokenize, a half-written HF directory) are
  removed by the next run; temps a live writer holds are not.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from olmo2.checkpoint import load_model, save_model
from olmo2.config import preset
from olmo2.data import tokenize as tk
from olmo2.errors import DataError
from olmo2.fsio import LockedError, atomic_file, clean_stale_temps, exclusive_lock
from olmo2.model import Olmo2

sys.path.insert(0, str(Path(__file__).parent))
from test_data_tokenize import docs, make_tokenizer, write_jsonl  # noqa: E402


@pytest.fixture
def inp(tmp_path):
    write_jsonl(tmp_path / "x.jsonl", docs(200, 1))
    return str(tmp_path / "x.jsonl")


@pytest.fixture
def tokfile(tmp_path):
    return make_tokenizer(tmp_path / "tokenizer.json")


KW = dict(workers=1, progress=False)


@pytest.mark.parametrize("change,flag", [(dict(shard_tokens=500), "--shard-tokens"),
                                         (dict(text_field="body"), "--text-field"),
                                         (dict(eos_id=0), "--eos-id")])
def test_other_settings_into_the_same_out_are_refused(tmp_path, inp, tokfile, change, flag):
    out = tmp_path / "out"
    meta = tk.tokenize([inp], tokfile, str(out), shard_tokens=200, **KW)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(DataError, match=f"tokenized with {flag}") as e:
        tk.tokenize([inp], tokfile, str(out), **{"shard_tokens": 200, **change}, **KW)
    assert "\n" not in str(e.value) and ".olmo2-tokenize.json" in str(e.value)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert json.loads((out / "metadata.json").read_text())["total_tokens"] == meta["total_tokens"]


def test_other_tokenizer_is_refused(tmp_path, inp, tokfile):
    out = tmp_path / "out"
    tk.tokenize([inp], tokfile, str(out), **KW)
    other = make_tokenizer(tmp_path / "other.json", extra="zebra")
    with pytest.raises(DataError, match="--tokenizer"):
        tk.tokenize([inp], other, str(out), **KW)


def test_same_settings_rerun_and_parts_still_work(tmp_path, inp, tokfile):
    out = tmp_path / "out"
    a = tk.tokenize([inp], tokfile, str(out), shard_tokens=200, **KW)
    b = tk.tokenize([inp], tokfile, str(out), shard_tokens=200, **KW)
    assert a["shards"] == b["shards"]
    write_jsonl(tmp_path / "y.jsonl", docs(50, 2))
    parts = tmp_path / "parts"
    for i in range(2):
        tk.tokenize([inp, str(tmp_path / "y.jsonl")], tokfile, str(parts), num_shards=2, shard_index=i, **KW)
    with pytest.raises(DataError, match="--num-shards"):
        tk.tokenize([inp], tokfile, str(parts), num_shards=3, shard_index=0, **KW)


def test_concurrent_run_of_the_same_part_is_refused(tmp_path, inp, tokfile):
    out = tmp_path / "out"
    out.mkdir()
    with exclusive_lock(out / ".olmo2-tokenize.part-00000-of-00001.lock", "held by the test"):
        with pytest.raises(LockedError, match="another olmo2 process"):
            tk.tokenize([inp], tokfile, str(out), **KW)
    tk.tokenize([inp], tokfile, str(out), **KW)  # the lock died with its holder


KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    from olmo2.fsio import atomic_dir, atomic_file
    kind, target = sys.argv[1], sys.argv[2]
    if kind == "file":
        with atomic_file(target, "wb") as f:
            f.write(b"x" * 100000); f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    else:
        with atomic_dir(target) as d:
            (d / "model.safetensors").write_bytes(b"x" * 100000)
            os.kill(os.getpid(), signal.SIGKILL)
""")


def kill_mid_write(kind: str, target: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    r = subprocess.run([sys.executable, "-c", KILLED_WRITER, kind, str(target)], env=env, timeout=60)
    assert r.returncode == -9


def test_sigkilled_tokenize_shard_temp_is_cleaned_by_the_next_run(tmp_path, inp, tokfile, capsys):
    out = tmp_path / "out"
    out.mkdir()
    kill_mid_write("file", out / "f00000-00000.npy")  # what a killed tokenize leaves: a shard temp
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    tk.tokenize([inp], tokfile, str(out), workers=1, progress=True)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert "left by an interrupted run" in capsys.readouterr().err


def test_sigkilled_hf_save_temp_is_cleaned_by_the_next_save(tmp_path):
    kill_mid_write("dir", tmp_path / "m")
    assert len([p for p in tmp_path.iterdir() if p.name.startswith(".m.")]) == 1
    save_model(Olmo2(preset("tiny")), tmp_path / "m")
    assert sorted(os.listdir(tmp_path)) == ["m"]
    load_model(tmp_path / "m")


def test_live_temps_are_left_alone(tmp_path):
    with atomic_file(tmp_path / "a.json") as f:
        f.write("{}")
        assert clean_stale_temps(tmp_path) == []  # this writer holds its temp
        assert len(os.listdir(tmp_path)) == 1
    (tmp_path / ".b.json.abcdefgh.tmp").write_text("orphan")
    (tmp_path / ".hidden.tmp").write_text("not ours: no random part")
    (tmp_path / "user.tmp").write_text("not ours")
    assert [p.name for p in clean_stale_temps(tmp_path)] == [".b.json.abcdefgh.tmp"]
    assert sorted(os.listdir(tmp_path)) == [".hidden.tmp", "a.json", "user.tmp"]


def test_scratch_dir_is_locked_while_live_and_soup_cleans_a_dead_one(tmp_path):
    """Soup exports training-checkpoint ingredients into a locked temp beside --out (it used
    /tmp, where a killed soup left whole models behind forever)."""
    from olmo2.fsio import scratch_dir
    from olmo2.train.loop import train
    from olmo2.train.soup import soup
    sys.path.insert(0, str(Path(__file__).parent))
    from test_train_loop import MODEL_CFG, ArraySource, cfg, corpus
    with scratch_dir(tmp_path / "s") as live:
        assert live.parent == tmp_path and clean_stale_temps(tmp_path) == []
    assert not live.exists()
    (tmp_path / ".s.deadbeef.tmp").mkdir()  # what a SIGKILLed soup leaves
    train(MODEL_CFG, cfg(max_steps=1, save_final=True), ArraySource(corpus(8), 4), tmp_path / "run")
    ck = tmp_path / "run" / "step-000001"
    soup([ck, ck], tmp_path / "s", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "s"]
