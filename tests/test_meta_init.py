"""Meta-device build → FSDP2 sharding → per-shard init (olmo2/train/init.py).

Checks that the sharded init gives bit-identical weights to eager init with the same seed
on 1 and 2 ranks (gloo, CPU), that the RoPE tables are rebuilt after `to_empty`, and that a
rank of a 2-rank run really holds about half of the model: measured as (1) the bytes of
this rank's parameter shards plus AdamW state after a step, and (2) the growth of the
process's peak RSS (ru_maxrss) while the model is built and initialised — on main every
rank built the full fp32 model first, so (2) was the full size on every rank.
"""
import json
import resource
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from olmo2.config import preset
from olmo2.model import Olmo2
from olmo2.train.config import TrainConfig
from olmo2.train.init import build_model
from olmo2.train.optim import build_optimizer, clean_name

sys.path.insert(0, str(Path(__file__).parent))
from test_train_loop import MODEL_CFG, one_thread  # noqa: E402,F401 (autouse)

# ~35M parameters (140 MB fp32), mostly in the blocks, so the RSS signal dwarfs allocator noise.
BIG = preset("tiny").replace(d_model=512, n_layers=8, n_heads=8, n_kv_heads=8, d_ff=2048, vocab_size=1024,
                             max_seq_len=64)
SEED = 1234


def train_cfg(parallel, **kw):
    return TrainConfig(parallel=parallel, max_steps=1, seed=SEED, lr=1e-3, **kw)


def eager(cfg):
    m = Olmo2(cfg)
    m.reset_parameters(torch.Generator().manual_seed(SEED))
    return m


def assert_same_weights(state: dict, ref: Olmo2):
    state = {clean_name(k): v for k, v in state.items()}
    ref_sd = ref.state_dict()
    assert state.keys() == ref_sd.keys()
    for k, v in ref_sd.items():
        assert torch.equal(state[k], v), k


@pytest.mark.parametrize("ac", [False, True])
def test_meta_init_equals_eager_init_on_one_rank(ac):
    m = build_model(MODEL_CFG, train_cfg("none", activation_checkpointing=ac), None, torch.device("cpu"))
    assert not any(p.is_meta for p in m.parameters()) and not any(b.is_meta for b in m.buffers())
    ref = eager(MODEL_CFG)
    assert_same_weights(m.state_dict(), ref)
    # the RoPE buffers were uninitialised memory after to_empty; rebuilt, they match
    assert torch.equal(m.model.rotary.cos, ref.model.rotary.cos)
    assert torch.equal(m.model.rotary.sin, ref.model.rotary.sin)
    ids = torch.randint(0, MODEL_CFG.vocab_size, (2, 16))
    assert torch.equal(m(ids), ref(ids))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _local_bytes(t) -> int:
    t = t.to_local() if hasattr(t, "to_local") else t
    return t.numel() * t.element_size()


def _worker(rank: int, world: int, store: str, out: str, big: bool) -> None:
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        from olmo2.train import parallel
        from olmo2.train.state import full_state_dict
        cfg, mesh, cpu = train_cfg("fsdp", activation_checkpointing=not big), None, torch.device("cpu")
        mesh = parallel.build_mesh(cpu)
        # a throwaway tiny build first: it pays the lazy imports and one-time FSDP/DTensor
        # setup (~30 MB), so the RSS growth measured below is the model's
        model = build_model(MODEL_CFG, cfg, mesh, cpu)
        if big:
            before = _rss_bytes()
            model = build_model(BIG, cfg, mesh, cpu)
            # ru_maxrss (KiB on Linux) is the process's high-water mark: it catches transients
            build_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
        full = full_state_dict(model)  # collective; the weights as initialised
        if rank == 0:
            torch.save(full, Path(out, f"init-{world}.pt"))
        del full
        if not big:
            return
        opt = build_optimizer(model, cfg)
        ids = torch.randint(0, BIG.vocab_size, (1, 8), generator=torch.Generator().manual_seed(0))
        model(ids).float().square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        state_bytes = sum(_local_bytes(p) for p in model.parameters()) + sum(
            _local_bytes(v) for st in opt.state.values() for v in st.values() if v.dim() > 0)
        Path(out, f"mem-{world}-{rank}.json").write_text(json.dumps({"build_growth": build_growth,
                                                                     "state_bytes": state_bytes}))
    finally:
        if world > 1:
            dist.destroy_process_group()


def test_two_rank_fsdp_meta_init_equals_eager_init(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(tmp_path), False), nprocs=2, join=True)
    assert_same_weights(torch.load(tmp_path / "init-2.pt"), eager(MODEL_CFG))


@pytest.mark.slow
def test_two_rank_build_holds_half_the_model(tmp_path):
    # each run in fresh processes, so ru_maxrss measures only this build
    mp.spawn(_worker, args=(1, "", str(tmp_path), True), nprocs=1, join=True)
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(tmp_path), True), nprocs=2, join=True)
    ref = eager(BIG)
    for world in (1, 2):
        assert_same_weights(torch.load(tmp_path / f"init-{world}.pt"), ref)

    one = json.loads((tmp_path / "mem-1-0.json").read_text())
    two = [json.loads((tmp_path / f"mem-2-{r}.json").read_text()) for r in (0, 1)]
    full_bytes = BIG.num_params() * 4
    # params + AdamW moments (3x the parameter bytes) of this rank, exactly
    assert one["state_bytes"] == 3 * full_bytes
    for r in two:
        assert 0.5 <= r["state_bytes"] / one["state_bytes"] < 0.51, (r, one)
        # peak RSS growth while building: about half of the single rank's, which is the
        # whole fp32 model (plus allocator slack, ~20 MB here)
        assert one["build_growth"] > 0.9 * full_bytes, one
        assert r["build_growth"] < 0.7 * one["build_growth"], (r, one)
    print(f"\nfull fp32 params {full_bytes / 2**20:.0f} MiB; build peak-RSS growth 1 rank "
          f"{one['build_growth'] / 2**20:.0f} MiB, 2 ranks {[round(r['build_growth'] / 2**20) for r in two]} MiB; "
          f"params+AdamW state 1 rank {one['state_bytes'] / 2**20:.0f} MiB, "
          f"2 ranks {[round(r['state_bytes'] / 2**20) for r in two]} MiB")
