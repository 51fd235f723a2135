"""Exact resume after SIGKILL, ignored temp checkpoints, keep-last-k, and the stage-2 warm start.

Each run is a fresh subprocess (1 thread, deterministic algorithms), so the killed run
really dies mid-training and the resumed one starts cold from the files on disk.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch

from olmo2.model import Olmo2
from olmo2.train.loop import KILL_ENV, Callback, lm_loss_sums, train
from olmo2.train.optim import build_optimizer
from olmo2.train.state import list_checkpoints, load_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from test_train_loop import MODEL_CFG, ArraySource, cfg, corpus, one_thread  # noqa: E402,F401 (autouse)

TESTS = Path(__file__).parent
SCRIPT = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from test_train_loop import MODEL_CFG, ArraySource, cfg, corpus
    from olmo2.train.loop import train
    out = sys.argv[1]
    # keep in sync with the in-process reference run in the test
    c = cfg(max_steps=8, save_every=3, keep_last=2, save_final=True, deterministic=True, resume="auto")
    res = train(MODEL_CFG, c, ArraySource(corpus(16), 4, seed=3), out)
    torch.save(res.model.state_dict(), out + "/final.pt")
""").format(tests=str(TESTS))


def run(out: Path, kill_after: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop(KILL_ENV, None)
    if kill_after is not None:
        env[KILL_ENV] = str(kill_after)
    return subprocess.run([sys.executable, "-c", SCRIPT, str(out)], env=env, capture_output=True, text=True,
                          timeout=120)


def losses(out: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


def test_sigkill_then_auto_resume_is_bitwise_identical(tmp_path):
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    # the uninterrupted reference runs in this process (one thread via the fixture, same kernels)
    c = cfg(max_steps=8, save_every=3, keep_last=2, save_final=True, deterministic=True, resume="auto")
    res = train(MODEL_CFG, c, ArraySource(corpus(16), 4, seed=3), full)
    torch.save(res.model.state_dict(), full / "final.pt")
    assert not torch.are_deterministic_algorithms_enabled()  # train() restored the global flag
    assert [s for s, _ in list_checkpoints(full)] == [6, 8]  # keep_last=2 pruned step 3

    p = run(crashed, kill_after=7)
    assert p.returncode == -signal.SIGKILL, p.stderr[-3000:]
    assert [s for s, _ in list_checkpoints(crashed)] == [3, 6]
    assert len(losses(crashed)) == 7  # step 7 ran and was logged, but never checkpointed
    # what a kill during a save leaves behind: incomplete .tmp dirs, ignored by auto-resume
    for name in ("step-000007.tmp", "step-000008.tmp"):
        (crashed / name).mkdir()
        (crashed / name / ".metadata").write_bytes(b"garbage")

    p = run(crashed)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resumed from" in p.stderr and "step-000006" in p.stderr
    assert losses(crashed) == losses(full)  # exact floats, steps 1..8, no duplicates
    assert [s for s, _ in list_checkpoints(crashed)] == [6, 8]
    assert not (crashed / "step-000008.tmp").exists()  # the real save replaced the stale temp dir
    a, b = torch.load(full / "final.pt"), torch.load(crashed / "final.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_warm_start_loads_weights_and_moments_with_a_fresh_schedule(tmp_path):
    rows = corpus(16)
    s1 = train(MODEL_CFG, cfg(max_steps=4, save_final=True), ArraySource(rows, 4), tmp_path / "s1")
    ck = s1.last_checkpoint
    assert ck.name == "step-000004"

    # the checkpoint holds the AdamW moments: load them into a fresh model/optimizer
    fresh = Olmo2(MODEL_CFG)
    opt = build_optimizer(fresh, cfg())
    assert load_checkpoint(ck, fresh, opt, full=False) == {}
    for p, q in zip(fresh.parameters(), s1.model.parameters()):
        assert torch.equal(p, q)
    st = opt.state[fresh.lm_head.weight]
    assert float(st["step"]) == 4 and st["exp_avg"].abs().sum() > 0

    # stage 2: linear anneal from 1e-3 to 0 over 4 steps' tokens; fresh step counter and data
    tok = 4 * 4 * 32
    c2 = cfg(schedule="linear", lr=1e-3, warmup_tokens=0, t_max_tokens=tok, alpha_f=0.0, max_steps=None,
             max_tokens=tok, init_from=str(ck))
    src = ArraySource(rows, 4, seed=9)
    first = next(iter(ArraySource(rows, 4, seed=9)))
    s2 = train(MODEL_CFG, c2, src, tmp_path / "s2")
    assert s2.step == 4 and s2.resumed_from is None
    recs = [json.loads(ln) for ln in (tmp_path / "s2" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    np.testing.assert_allclose([r["lr"] for r in recs], [7.5e-4, 5e-4, 2.5e-4, 0.0], atol=1e-12)
    with torch.no_grad():  # stage 2's first loss is the stage-1 model's loss on that batch
        ce, _ = lm_loss_sums(s1.model(first["input_ids"]), first["labels"], 0.0)
    assert abs(recs[0]["loss"] - float(ce) / (4 * 31)) < 1e-5


class _GroupSpy(Callback):
    """Records each optimizer param group's hyperparameters after the first step taken."""

    def __init__(self):
        self.groups = None

    def on_step_end(self, state):
        if self.groups is None:
            self.groups = [{k: g[k] for k in ("name", "weight_decay", "betas", "eps", "foreach")}
                           for g in state.optimizer.param_groups]


def _expected_groups(c):
    return [{"name": "decay", "weight_decay": c.weight_decay, "betas": c.betas, "eps": c.eps, "foreach": False},
            {"name": "no_decay", "weight_decay": 0.0, "betas": c.betas, "eps": c.eps, "foreach": False}]


def test_warm_start_and_resume_use_this_runs_optimizer_settings_not_the_checkpoints(tmp_path):
    rows = corpus(16)
    s1_cfg = cfg(max_steps=2, save_final=True, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8)
    s1 = train(MODEL_CFG, s1_cfg, ArraySource(rows, 4), tmp_path / "s1")
    changed = dict(weight_decay=0.033, betas=(0.8, 0.99), eps=1e-6)

    # warm start (stage 2): fresh step counter, this config's AdamW settings, loaded moments
    spy = _GroupSpy()
    c2 = cfg(max_steps=1, init_from=str(s1.last_checkpoint), **changed)
    train(MODEL_CFG, c2, ArraySource(rows, 4, seed=5), tmp_path / "s2", callbacks=[spy])
    assert spy.groups == _expected_groups(c2)

    # resume of the same run with settings changed on the command line (--set train.eps=...)
    spy = _GroupSpy()
    c3 = s1_cfg.replace(max_steps=3, resume="auto", **changed)
    res = train(MODEL_CFG, c3, ArraySource(rows, 4), tmp_path / "s1", callbacks=[spy])
    assert res.resumed_from == s1.last_checkpoint and res.step == 3
    assert spy.groups == _expected_groups(c3)
