"""Training checkpoints: no code runs from a file, a bad checkpoint is named and skipped,
nothing is silently overwritten or pruned away, and saves are durable.

Cases (each one a bug that was real): a planted pickle in DCP `.metadata`, in a DCP byte
item, or in our per-rank state ran on resume/export/soup; `keep_last=-1` deleted every
checkpoint; a truncated `.distcp` or a changed `model.d_model` gave a traceback
(CheckpointException is a BaseException); `resume=None` restarted at step 1 over
`step-000005`; HF saves were not fsynced and `model.safetensors` was 0600 whatever the
umask; index.json entries could point outside the checkpoint.
"""
import io
import json
import os
import pickle
import re
import sys
from pathlib import Path

import pytest
import torch

from olmo2.checkpoint import load_model, save_model
from olmo2.cli import main
from olmo2.config import preset
from olmo2.errors import CheckpointError, ConfigError
from olmo2.model import Olmo2
from olmo2.train.loop import train
from olmo2.train.state import export_hf, list_checkpoints

sys.path.insert(0, str(Path(__file__).parent))
from test_train_loop import MODEL_CFG, ArraySource, cfg, corpus, one_thread  # noqa: E402,F401 (autouse)

OLMO2 = Path(__file__).resolve().parents[1] / "olmo2"


def run(out, **kw):
    kw = {"max_steps": 4, "save_every": 2, "save_final": True, "keep_last": None, **kw}
    return train(MODEL_CFG, cfg(**kw), ArraySource(corpus(16), 4, seed=3), out)


class Payload:
    """Unpickling this creates `marker`: the proof that a file ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.fixture
def finished_run(tmp_path):
    run(tmp_path / "run")
    return tmp_path / "run"


# ---- code from files ----------------------------------------------------------------------

def test_no_unsafe_deserialisation_in_the_package():
    pat = re.compile(r"pickle\.loads?\(|allow_pickle\s*=\s*True|weights_only\s*=\s*False|"
                     r"torch\.load\((?![^)]*weights_only\s*=\s*True)")
    hits = [f"{p.relative_to(OLMO2.parent)}:{i}: {line.strip()}"
            for p in OLMO2.rglob("*.py") for i, line in enumerate(p.read_text().splitlines(), 1)
            if pat.search(line)]
    assert hits == []


def test_own_state_is_json(finished_run):
    ck = finished_run / "step-000004"
    assert not list(ck.glob("*.pt"))
    state = json.loads((ck / "rank-00000.json").read_text())
    assert set(state) == {"data", "rng"}


def plant_in_metadata(ck: Path, marker: Path) -> None:
    md = pickle.loads((ck / ".metadata").read_bytes())  # test-side only: we wrote it just now
    md.planner_data = Payload(marker)
    (ck / ".metadata").write_bytes(pickle.dumps(md))


def plant_in_byte_item(ck: Path, marker: Path) -> None:
    """Replace a torch.save'd byte item (an AdamW param-group value) in the .distcp file."""
    md = pickle.loads((ck / ".metadata").read_bytes())
    key = next(k for k in md.storage_data if k.fqn.startswith("optim.param_groups.") and k.fqn.endswith(".lr"))
    info = md.storage_data[key]
    buf = io.BytesIO()
    torch.save(Payload(marker), buf)
    blob = buf.getvalue()
    distcp = ck / info.relative_path
    data = distcp.read_bytes()
    distcp.write_bytes(data + blob)
    info.offset, info.length = len(data), len(blob)
    (ck / ".metadata").write_bytes(pickle.dumps(md))


@pytest.mark.parametrize("plant", [plant_in_metadata, plant_in_byte_item])
@pytest.mark.parametrize("how", ["resume", "export", "soup"])
def test_planted_pickle_does_not_run(tmp_path, finished_run, capsys, plant, how):
    marker = tmp_path / "PWNED"
    ck = finished_run / "step-000004"
    plant(ck, marker)
    if how == "resume":
        # the planted newest checkpoint is refused and named; resume falls back to step 2
        res = run(finished_run, max_steps=6)
        assert res.resumed_from.name == "step-000002"
        err = capsys.readouterr().err
        assert "step-000004" in err and "Traceback" not in err
    else:
        argv = (["export", str(ck), "--out", str(tmp_path / "hf")] if how == "export" else
                ["soup", str(ck), str(finished_run / "step-000002"), "--out", str(tmp_path / "s")])
        rc = main(argv)
        err = capsys.readouterr().err
        assert "Traceback" not in err
        if plant is plant_in_metadata:  # refused, named; the byte items are optimizer state,
            assert rc == 2 and "step-000004" in err and len(err.strip().splitlines()) == 1
        else:  # which export and soup never read: they succeed without touching them
            assert rc == 0
    assert not marker.exists(), "a pickle payload in a checkpoint ran"


def test_chat_template_from_a_checkpoint_cannot_reach_python(tmp_path):
    from olmo2.errors import Olmo2Error
    from olmo2.tokenizer import Tokenizer
    sys.path.insert(0, str(Path(__file__).parent))
    from test_data_tokenize import make_tokenizer
    d = tmp_path / "tok"
    d.mkdir()
    make_tokenizer(d / "tokenizer.json")
    marker = tmp_path / "PWNED"
    (d / "chat_template.jinja").write_text(
        "{{ cycler.__init__.__globals__.os.system('touch " + str(marker) + "') }}")
    tok = Tokenizer.from_pretrained(d)
    with pytest.raises(Olmo2Error, match="chat_template.jinja"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert not marker.exists()


def test_old_pickled_rank_state_is_refused_not_loaded(tmp_path, finished_run):
    marker = tmp_path / "PWNED"
    for ck in (finished_run / "step-000002", finished_run / "step-000004"):
        (ck / "rank-00000.json").unlink()
        torch.save(Payload(marker), ck / "rank-00000.pt")
    with pytest.raises(CheckpointError, match=r"no checkpoint .* loads.*rank-00000\.pt.*old pickle format"):
        run(finished_run, max_steps=6)
    assert not marker.exists()


def test_metadata_pointing_outside_the_checkpoint_is_refused(tmp_path, finished_run):
    ck = finished_run / "step-000004"
    md = pickle.loads((ck / ".metadata").read_bytes())
    for info in md.storage_data.values():
        info.relative_path = "../../elsewhere.distcp"
    (ck / ".metadata").write_bytes(pickle.dumps(md))
    with pytest.raises(CheckpointError, match="outside the checkpoint directory"):
        export_hf(ck, tmp_path / "hf")


@pytest.mark.parametrize("entry", ["../outside.safetensors", "/tmp/abs.safetensors", "LINK", 7])
def test_index_entries_outside_the_checkpoint_are_refused(tmp_path, entry):
    m = Olmo2(preset("tiny"))
    d = save_model(m, tmp_path / "m", max_shard_bytes=200_000)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    if entry == "LINK":
        (tmp_path / "outside.safetensors").write_bytes((d / first).read_bytes())
        (d / first).unlink()
        (d / first).symlink_to(tmp_path / "outside.safetensors")
    else:
        index["weight_map"] = {k: (entry if v == first else v) for k, v in index["weight_map"].items()}
        (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="outside the checkpoint directory|not a file name inside") as e:
        load_model(d)
    assert "\n" not in str(e.value)


# ---- checkpoints are never lost ------------------------------------------------------------

@pytest.mark.parametrize("bad", [-1, 0, -5, True, 1.5])
def test_keep_last_is_validated(bad):
    with pytest.raises(ConfigError, match="keep_last"):
        cfg(keep_last=bad)


def test_keep_last_never_deletes_the_checkpoint_just_written(tmp_path, finished_run):
    # an explicit resume from an older checkpoint writes step 3 while step 4 exists
    res = run(finished_run, max_steps=3, keep_last=1, resume=str(finished_run / "step-000002"))
    assert res.last_checkpoint.name == "step-000003" and res.last_checkpoint.is_dir()


def truncate(ck):
    f = ck / "__0_0.distcp"
    with open(f, "r+b") as fh:
        fh.truncate(f.stat().st_size // 3)


def garbage_metadata(ck):
    (ck / ".metadata").write_bytes(b"\x80\x04not a pickle at all")


def broken_state_json(ck):
    (ck / "rank-00000.json").write_text("{")


@pytest.mark.parametrize("damage", [truncate, garbage_metadata, broken_state_json])
def test_corrupt_latest_checkpoint_falls_back_and_is_named(finished_run, capsys, damage):
    damage(finished_run / "step-000004")
    res = run(finished_run, max_steps=6)
    err = capsys.readouterr().err
    assert res.resumed_from.name == "step-000002" and res.step == 6
    assert "warning: " in err and "step-000004" in err and "does not load" in err and "Traceback" not in err


def test_all_checkpoints_corrupt_is_one_line_naming_the_newest(finished_run):
    for ck in ("step-000002", "step-000004"):
        truncate(finished_run / ck)
    with pytest.raises(CheckpointError) as e:
        run(finished_run, max_steps=6)
    msg = str(e.value)
    assert "\n" not in msg and "step-000004" in msg and "--restart" in msg


def test_changed_model_config_names_the_field(finished_run, capsys):
    from olmo2.train.resume import restore
    other = MODEL_CFG.replace(d_model=MODEL_CFG.d_model * 2)
    with pytest.raises(CheckpointError, match=r"model\.d_model is 64 .* but 128 now"):
        restore(cfg(), other, finished_run, None, None)


def test_fresh_start_over_checkpoints_is_refused(finished_run):
    before = {p.name: p.stat().st_mtime_ns for _, p in list_checkpoints(finished_run)}
    with pytest.raises(CheckpointError, match="already holds checkpoints.*--restart"):
        run(finished_run, resume=None)
    assert {p.name: p.stat().st_mtime_ns for _, p in list_checkpoints(finished_run)} == before


def test_restart_deletes_then_starts_at_step_zero(finished_run):
    res = train(MODEL_CFG, cfg(max_steps=1, save_final=True, resume="auto"), ArraySource(corpus(16), 4),
                finished_run, restart=True)
    assert res.resumed_from is None and [s for s, _ in list_checkpoints(finished_run)] == [1]


def test_tiny_recipes_resume_by_default():
    from olmo2.recipes import get_recipe
    for name in ("tiny_stage1", "tiny_stage2"):
        assert get_recipe(name).train.resume == "auto"


def test_second_train_into_the_same_dir_is_refused(finished_run):
    from olmo2.fsio import LockedError, exclusive_lock
    with exclusive_lock(finished_run, "held by the test"):
        with pytest.raises(LockedError, match="another olmo2 process"):
            run(finished_run, max_steps=6)


def test_orphan_step_tmp_is_removed_on_the_next_run(finished_run, capsys):
    (finished_run / "step-000006.tmp").mkdir()
    (finished_run / "step-000006.tmp" / "__0_0.distcp").write_bytes(b"x" * 1000)
    run(finished_run, max_steps=4)
    assert not (finished_run / "step-000006.tmp").exists()
    assert "step-000006.tmp" in capsys.readouterr().err


# ---- HF saves: durable, umask permissions, tokenizer fits ---------------------------------

def test_hf_save_fsyncs_files_and_directories_and_honours_umask(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real(fd))
    old = os.umask(0o022)
    try:
        d = save_model(Olmo2(preset("tiny")), tmp_path / "m")
    finally:
        os.umask(old)
    names = {Path(p).name for p in synced}
    assert {"model.safetensors", "config.json"} <= names  # each file, before the rename
    assert str(tmp_path) in synced  # the parent, after the rename
    assert (d / "model.safetensors").stat().st_mode & 0o777 == 0o644
    assert d.stat().st_mode & 0o777 == 0o755


def test_export_refuses_a_tokenizer_bigger_than_the_model(tmp_path, finished_run, capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers
    vocab = {"[UNK]": 0, "<|endoftext|>": 1, "<|pad|>": 2, **{f"w{i}": i + 3 for i in range(200)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<|endoftext|>", "<|pad|>"])
    tok.save(str(tmp_path / "big.json"))
    assert main(["export", str(finished_run), "--out", str(tmp_path / "hf"), "--tokenizer",
                 str(tmp_path / "big.json")]) == 2
    err = capsys.readouterr().err
    assert "embeds only 64" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "hf").exists()
