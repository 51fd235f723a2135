"""No verb loses data through --out: foreign files, its own inputs, and existing checkpoints
(replaced only with --force, atomically); plus the guard's own rules in olmo2/outdir.py.

Every case runs the real CLI entry point (`olmo2.cli.main`) in-process and checks the
promise: exit 2, one `error:` line naming the directory, no traceback, and the directory
exactly as it was.
"""
import os
import sys
from pathlib import Path

import pytest
import torch

from olmo2.checkpoint import load_model, save_model
from olmo2.cli import main
from olmo2.config import preset
from olmo2.model import Olmo2
from olmo2.outdir import OutputError, check_out

sys.path.insert(0, str(Path(__file__).parent))
from test_data_tokenize import make_tokenizer, write_jsonl, docs  # noqa: E402
from test_train_loop import MODEL_CFG, ArraySource, cfg, corpus, one_thread  # noqa: E402,F401 (autouse)


def snapshot(d: Path) -> dict:
    """{relative path: bytes} of every file under d (what must survive a refusal)."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def one_error_line(capsys, *needles):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert str(n) in lines[0], (n, lines[0])
    return lines[0]


def _hf(path, seed=0):
    m = Olmo2(preset("tiny"))
    m.reset_parameters(torch.Generator().manual_seed(seed))
    return save_model(m, path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two HF checkpoints, a finished training run, a jsonl input and a tokenizer."""
    from olmo2.train.loop import train
    w = tmp_path_factory.mktemp("world")
    _hf(w / "a", 0)
    _hf(w / "b", 1)
    torch.set_num_threads(1)
    train(MODEL_CFG, cfg(max_steps=2, save_final=True), ArraySource(corpus(8), 4), w / "run")
    write_jsonl(w / "in.jsonl", docs(20, 0))
    make_tokenizer(w / "tok.json")
    return w


def verbs(w: Path) -> dict:
    """verb -> argv builder for an --out; every verb that writes a directory."""
    return {
        "init": lambda o: ["init", "--preset", "tiny", "--out", o],
        "soup": lambda o: ["soup", w / "a", w / "b", "--out", o],
        "export": lambda o: ["export", w / "run", "--out", o],
        "train": lambda o: ["train", "--recipe", "tiny_stage1", "--set", "train.max_steps=1", "--out", o],
        "replicate": lambda o: ["replicate", "--quick", "--out", o],
        "tokenize": lambda o: ["data", "tokenize", w / "in.jsonl", "--tokenizer", w / "tok.json", "--out", o],
        "trace": lambda o: ["trace", "index", w / "run", "--out", o],
        "sft": lambda o: ["sft", "--model", w / "a", "--data", w / "in.jsonl", "--out", o],
    }


FORCE_VERBS = ("init", "soup", "export")


# --force only for the verbs that have it (the others would fail on the flag, not the guard).
@pytest.mark.parametrize("verb,force", [(v, False) for v in ("init", "soup", "export", "train", "replicate",
                                                           "tokenize", "trace", "sft")]
                         + [(v, True) for v in FORCE_VERBS])
def test_foreign_nonempty_out_is_refused(world, tmp_path, capsys, verb, force):
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "thesis.txt").write_text("four years of work")
    before = snapshot(keep)
    argv = [str(a) for a in verbs(world)[verb](keep)] + (["--force"] if force else [])
    assert main(argv) == 2
    one_error_line(capsys, keep, "not empty")
    assert snapshot(keep) == before and sorted(os.listdir(tmp_path)) == ["keep"]


@pytest.mark.parametrize("case", ["export RUN --out RUN", "export STEP --out RUN", "export STEP --out STEP/hf",
                                  "soup A B --out A", "soup A B --out A/x", "soup A B --out PARENT",
                                  "tokenize --out INPUT_DIR", "train --out DATA", "trace index --out DATA",
                                  "sft --out MODEL"])
def test_out_overlapping_an_input_is_refused(world, tmp_path, capsys, case):
    step = world / "run" / "step-000002"
    w = world
    argv = {
        "export RUN --out RUN": ["export", w / "run", "--out", w / "run", "--force"],
        "export STEP --out RUN": ["export", step, "--out", w / "run", "--force"],
        "export STEP --out STEP/hf": ["export", step, "--out", step / "hf"],
        "soup A B --out A": ["soup", w / "a", w / "b", "--out", w / "a", "--force"],
        "soup A B --out A/x": ["soup", w / "a", w / "b", "--out", w / "a" / "x"],
        "soup A B --out PARENT": ["soup", w / "a", w / "b", "--out", w, "--force"],
        "tokenize --out INPUT_DIR": ["data", "tokenize", w / "in.jsonl", "--tokenizer", w / "tok.json", "--out", w],
        "train --out DATA": ["train", "--recipe", "tiny_stage1", "--data", w / "run", "--out", w / "run"],
        "trace index --out DATA": ["trace", "index", w / "run", "--out", w / "run" / "index"],
        "sft --out MODEL": ["sft", "--model", w / "a", "--data", w / "in.jsonl", "--out", w / "a" / "sft"],
    }[case]
    before = snapshot(world)
    assert main([str(a) for a in argv]) == 2
    line = one_error_line(capsys)
    assert any(k in line for k in (" is the input", " contains the input", " is inside the input")), line
    assert snapshot(world) == before


@pytest.mark.parametrize("verb", FORCE_VERBS)
def test_existing_checkpoint_replaced_only_with_force(world, tmp_path, capsys, verb):
    out = tmp_path / "out"
    _hf(out, seed=7)
    before = snapshot(out)
    argv = [str(a) for a in verbs(world)[verb](out)]
    assert main(argv) == 2
    one_error_line(capsys, out, "--force")
    assert snapshot(out) == before
    assert main(argv + ["--force"]) == 0
    after = snapshot(out)
    assert after != before and "config.json" in after
    load_model(out)  # a complete checkpoint under the final name
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no temp or moved-aside copy left


def test_fresh_and_empty_out_are_written(world, tmp_path):
    (tmp_path / "empty").mkdir()
    for o in (tmp_path / "empty", tmp_path / "new" / "deeper"):
        assert main(["init", "--preset", "tiny", "--out", str(o)]) == 0
        load_model(o)


def test_guard_rules_directly(tmp_path):
    run = tmp_path / "run"
    (run / "step-000003").mkdir(parents=True)
    (run / "notes.txt").write_text("mine")
    assert check_out(run, "run") == run  # a run of ours (with user files beside) is continued
    with pytest.raises(OutputError, match="not a directory"):
        (tmp_path / "f").write_text("x")
        check_out(tmp_path / "f", "hf", force=True)
    hf = _hf(tmp_path / "hf")
    (hf / "extra.txt").write_text("user file inside a checkpoint")
    with pytest.raises(OutputError, match="not empty"):
        check_out(hf, "hf", force=True)  # would delete extra.txt on replace
    link = tmp_path / "link"
    link.symlink_to(run)
    with pytest.raises(OutputError, match="is the input"):
        check_out(link, "run", inputs=[run])  # compared after resolving symlinks


def test_demo_cache_with_foreign_files_is_refused(tmp_path, capsys):
    demo = tmp_path / "cache" / "demo"
    demo.mkdir(parents=True)
    (demo / "thesis.txt").write_text("x")
    assert main(["data", "demo", "--cache-dir", str(tmp_path / "cache"), "--force"]) == 2
    one_error_line(capsys, demo)
    assert (demo / "thesis.txt").read_text() == "x"


def test_eval_run_dir_rules(tmp_path):
    """An eval run is replaced whole: only a pure one (results.json + <task>/predictions.jsonl)
    may be replaced, and only with --force; a user file anywhere inside makes it foreign."""
    run = tmp_path / "ev"
    (run / "gsm8k").mkdir(parents=True)
    (run / "results.json").write_text("{}")
    (run / "gsm8k" / "predictions.jsonl").write_text("")
    with pytest.raises(OutputError, match="--force"):
        check_out(run, "eval")
    assert check_out(run, "eval", force=True) == run
    (run / "gsm8k" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not empty"):
        check_out(run, "eval", force=True)
    model = tmp_path / "model"
    model.mkdir()
    with pytest.raises(OutputError, match="is inside the input"):
        check_out(model / "eval", "eval", inputs=[model])
