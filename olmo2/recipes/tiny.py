"""CPU-sized recipes for the offline replication (`olmo2 replicate --recipe tiny`).

Same shape of experiment as the published one, scaled to a 2-core laptop: a ~3M-parameter
OLMo 2 (d 128, 4 layers, 4 heads, MLP 384, the 8192-entry demo BPE) trained
on the demo corpus with a warmup + cosine schedule that, like the 1B's (t_max 5e12 > 4T), is
cut before it reaches its floor; then stage 2 anneals from where stage 1 ended linearly to 0
on a mix of demo text and synthetic arithmetic (as Dolmino adds synthetic math), once per
seed, warm-started with the AdamW moments (`init_from`).

`data_root` holds `demo/` and `arith/` token shards (written by `olmo2.replicate`).
`quick=True` is the ~3-minute variant. Tuned by running it: see the replicate report.
"""
from __future__ import annotations

from olmo2.config import preset
from olmo2.data.mix import Mix, Source
from olmo2.recipes import Recipe
from olmo2.train.config import TrainConfig
from olmo2.train.schedule import build_schedule

DEFAULT_ROOT = "runs/replicate-tiny/data"
SEQ_LEN = 128
BATCH = 16
SEEDS = (42069, 666, 42)
#: (stage-1 steps, stage-2 steps) for the full and the quick run.
STEPS = {False: (900, 200), True: (300, 80)}
PEAK_LR = 3e-3
COSINE_CUT = 0.6
"""Fraction of the cosine that stage 1 runs before stopping (the 1B ran 4T of t_max 5e12)."""
ARITH_FRAC = 0.05
"""Share of stage-2 tokens that are arithmetic problems; the rest stays demo text so that
validation bpb on general text keeps improving while the LR anneals. Measured on the quick
run: 0% → val bpb 2.274→2.240; 5% → 2.261 with arithmetic 0%→5.5%; 15% → 2.291 (worse:
at this size the easy, low-entropy problems pull the model away from prose)."""


def tiny_model():
    """tiny-demo's vocab/ids (8192, eos 8190, pad 8191) at d 128, 4 layers, MLP 384: the
    8192×128 untied embeddings already cost as much as the blocks, and d 256 trains at
    only ~1-2k tokens/s on 2 busy cores."""
    return preset("tiny-demo").replace(d_model=128, n_layers=4, n_heads=4, n_kv_heads=4, d_ff=384)


def _base(steps: int, seed: int) -> TrainConfig:
    tokens = steps * BATCH * SEQ_LEN
    return TrainConfig(lr=PEAK_LR, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, max_grad_norm=1.0,
                       schedule="cosine", warmup_tokens=max(1, steps // 20) * BATCH * SEQ_LEN,
                       # like the 1B (t_max 5e12, stop at 4T) the cosine is cut before its floor;
                       # at 60% the LR is still ~0.4x peak, so the anneal has room to work
                       t_max_tokens=int(tokens / COSINE_CUT), alpha_f=0.1,
                       global_batch_size=BATCH, micro_batch_size=BATCH, seq_len=SEQ_LEN,
                       max_steps=steps, max_tokens=None, z_loss_coeff=1e-4, precision="fp32",
                       save_every=None, keep_last=1, resume="auto", seed=seed, log_every=1)


def tiny_stage1(data_root: str = DEFAULT_ROOT, quick: bool = False, steps: int | None = None) -> Recipe:
    """Stage 1 on the demo corpus: peak 3e-3, 5% warmup, cosine cut at 60%."""
    steps = steps or STEPS[quick][0]
    return Recipe(name="tiny_stage1", model=tiny_model(), train=_base(steps, seed=6198),
                  data=Mix([Source("demo", [f"{data_root}/demo"])], seed=6198, name="demo"),
                  notes=f"demo corpus, {steps} steps × {BATCH}×{SEQ_LEN} tokens")


def stage1_final_lr(train: TrainConfig) -> float:
    """The LR of stage 1's last step (where the stage-2 anneal starts)."""
    return build_schedule(train).lr(train.max_steps * train.global_batch_size * train.seq_len)


def tiny_stage2(seed: int = 42, data_root: str = DEFAULT_ROOT, quick: bool = False, steps: int | None = None,
                start_lr: float | None = None, init_from: str | None = None,
                arith_frac: float = ARITH_FRAC) -> Recipe:
    """Stage 2: demo text + arithmetic, LR from stage 1's final LR linearly to 0, warm start."""
    steps = steps or STEPS[quick][1]
    if start_lr is None:
        start_lr = stage1_final_lr(tiny_stage1(data_root, quick).train)
    tokens = steps * BATCH * SEQ_LEN
    train = _base(steps, seed).replace(schedule="linear", lr=start_lr, warmup_tokens=0, t_max_tokens=tokens,
                                       alpha_f=0.0, init_from=init_from)
    arith = int(tokens * arith_frac)
    # + one batch of slack per source so whole-instance rounding never leaves < `steps` batches
    mix = Mix([Source("demo", [f"{data_root}/demo"], tokens - arith + BATCH * SEQ_LEN),
               Source("arith", [f"{data_root}/arith"], arith + BATCH * SEQ_LEN)], seed=seed, name="demo+arith")
    return Recipe(name="tiny_stage2", model=tiny_model(), train=train, data=mix,
                  notes=f"{1 - arith_frac:.0%} demo text + {arith_frac:.0%} arithmetic, {steps} steps, "
                        f"LR {start_lr:.3g} → 0, seed {seed}")
