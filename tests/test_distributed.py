"""Two CPU ranks (gloo) vs one process on the same global batch: same per-step losses and
the same final weights, for FSDP2 (`fully_shard` on CPU) and DDP. The 2-rank run's sharded
DCP checkpoint is read back in this single process (resharding to full tensors)."""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from olmo2.train.loop import train
from olmo2.train.state import load_model_from_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from test_train_loop import MODEL_CFG, ArraySource, cfg, corpus, one_thread  # noqa: E402,F401 (autouse)

STEPS = 4


def run_cfg(parallel):
    # lr small: Adam's ~lr·sign(g) steps amplify rounding on ~0 gradients (see test_train_loop)
    # FSDP2 runs with activation checkpointing too: AC → fully_shard composition, and the
    # checkpoint's FQNs must not carry the wrapper's name (merged below into a plain Olmo2).
    return cfg(parallel=parallel, lr=3e-4, max_steps=STEPS, micro_batch_size=1, save_final=True,
               activation_checkpointing=parallel == "fsdp")


def _worker(rank: int, world: int, store: str, out: str, parallel: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        res = train(MODEL_CFG, run_cfg(parallel), ArraySource(corpus(16), 4, rank=rank, world=world), out)
        if rank == 0:
            Path(out, "losses.json").write_text(json.dumps(res.losses))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("parallel", ["fsdp", "ddp"])
def test_two_ranks_match_one(tmp_path, parallel):
    one = train(MODEL_CFG, run_cfg("none"), ArraySource(corpus(16), 4), tmp_path / "one")
    out = tmp_path / "two"
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(out), parallel), nprocs=2, join=True)
    two_losses = json.loads((out / "losses.json").read_text())
    np.testing.assert_allclose(two_losses, one.losses, rtol=0, atol=1e-5)
    ckpt = out / f"step-{STEPS:06d}"
    assert sorted(p.name for p in ckpt.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert json.loads((ckpt / "train_state.json").read_text())["world_size"] == 2
    merged = load_model_from_checkpoint(ckpt)
    for (n, p), q in zip(merged.named_parameters(), one.model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-5, msg=n)
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == STEPS  # rank 0 only
    # Adam is nearly invariant to the gradient's scale, so check the norm too: it catches a
    # rank-average vs rank-sum mistake that the weights alone would not.
    ref = [json.loads(ln)["grad_norm"] for ln in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    np.testing.assert_allclose([r["grad_norm"] for r in lines], ref, rtol=1e-5)


def _sync_worker(rank: int, world: int, store: str) -> None:
    from olmo2.train import parallel
    from olmo2.train.init import build_model
    from olmo2.train.loss import lm_loss_sums
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        c, cpu = run_cfg("fsdp"), torch.device("cpu")
        ids = torch.from_numpy(corpus(8, seed=rank)).long().view(4, 2, -1)  # 4 micro-batches of 2 rows
        grads = {}
        for last_only in (False, True):
            model = build_model(MODEL_CFG, c, parallel.build_mesh(cpu), cpu)
            for i in range(len(ids)):
                with parallel.grad_sync(model, "fsdp", sync=not last_only or i == len(ids) - 1):
                    ce, z = lm_loss_sums(model(ids[i]), ids[i], 1e-4)
                    (ce + 1e-4 * z).backward()
                if last_only and i < len(ids) - 1:
                    # no reduce-scatter ran: the sharded gradients do not exist yet
                    assert all(p.grad is None for p in model.parameters())
            grads[last_only] = [p.grad.to_local().clone() for p in model.parameters()]
        for (n, _), a, b in zip(model.named_parameters(), grads[True], grads[False]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=n)
    finally:
        dist.destroy_process_group()


def test_fsdp_syncs_gradients_only_on_the_last_micro_batch(tmp_path):
    """Accumulating unsharded gradients and reduce-scattering once gives the gradients of
    reduce-scattering after every micro-batch (to rounding), and skips the earlier syncs."""
    mp.spawn(_sync_worker, args=(2, str(tmp_path / "store")), nprocs=2, join=True)
