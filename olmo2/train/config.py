"""TrainConfig: every knob of the one training loop (pretrain, anneal, SFT, DPO).

Stages differ by a TrainConfig and a data source, never by a copied loop. The defaults
are the OLMo 2 1B stage-1 recipe (../shared/docs/olmo2-facts.md §3); `anneal()` derives
the stage-2 config (§4). Field docstrings are the `--help` text (`field_docs`).

Units: the schedule is counted in **tokens** (global batch instances × seq_len), so
changing the batch size does not silently stretch or shrink the warmup/decay.

Footguns:
- `z_loss_coeff` defaults to 1e-4 (what the OLMo trainer code applies), not the yaml's 1e-5.
- `global_batch_size` counts instances over all ranks; each rank's data source must
  yield batches of `global_batch_size // world_size` rows.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import json
from dataclasses import dataclass
from functools import lru_cache

from olmo2.config import check_value
from olmo2.errors import ConfigError

SCHEDULES = ("cosine", "linear", "constant")
_INF = float("inf")

# Type and range of every numeric field, checked when a TrainConfig is built (so a bad
# `--set` fails at parse time with the field named, not as a traceback or a NaN loss
# mid-run). Same (kind, low, high, optional) form as olmo2.config.FIELD_RANGES.
TRAIN_FIELD_RANGES: dict[str, tuple] = {
    "lr": ("float>=", 0.0, _INF, False),
    "eps": ("float>", 0.0, _INF, False),
    "weight_decay": ("float>=", 0.0, _INF, False),
    "max_grad_norm": ("float>", 0.0, _INF, True),
    "warmup_tokens": ("int", 0, 2**63 - 1, False),
    "warmup_start_frac": ("float>=", 0.0, 1.0, False),
    "t_max_tokens": ("int", 1, 2**63 - 1, False),
    "alpha_f": ("float>=", 0.0, 1.0, False),
    "global_batch_size": ("int", 1, 2**31 - 1, False),
    "micro_batch_size": ("int", 1, 2**31 - 1, False),
    "seq_len": ("int", 1, 2**24, False),
    "max_steps": ("int", 1, 2**63 - 1, True),
    "max_tokens": ("int", 1, 2**63 - 1, True),
    "z_loss_coeff": ("float>=", 0.0, _INF, False),
    "max_consecutive_skips": ("int", 1, 2**31 - 1, False),
    "loss_chunk_tokens": ("int", 1, 2**31 - 1, True),
    "seed": ("int", 0, 2**63 - 1, False),
    "save_every": ("int", 1, 2**63 - 1, True),
    "log_every": ("int", 1, 2**63 - 1, False),
    "eval_every": ("int", 1, 2**63 - 1, True),
    "peak_flops": ("float>", 0.0, _INF, True),
}


@dataclass(frozen=True)
class TrainConfig:
    """Optimizer, schedule, batch, duration, loss, precision, parallelism, checkpoints, logging."""

    # ---- optimizer (AdamW) -------------------------------------------------------
    lr: float = 4e-4
    """Peak learning rate (for `linear` anneals: the starting LR, e.g. 7.4487e-5)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    weight_decay: float = 0.1
    """Decoupled weight decay; applied to every parameter except the input embedding
    (norm weights ARE decayed: OLMo 2 decay_norm_and_bias=true, decay_embeddings=false)."""
    decay_embeddings: bool = False
    """Also decay model.embed_tokens.weight."""
    fused_adamw: bool = False
    """Use PyTorch's fused AdamW kernel (CUDA only; faster on GPUs). CPU runs refuse it with
    an error: they keep the per-parameter kernel, which keeps the 1-vs-2-rank and resume
    comparisons exact. Loading a checkpoint keeps this run's choice, not the writer's."""
    max_grad_norm: float | None = 1.0
    """Global-norm gradient clipping; None disables clipping (the norm is still logged)."""

    # ---- schedule (token units) ---------------------------------------------------
    schedule: str = "cosine"
    """cosine | linear | constant: linear warmup, then cosine or linear toward
    alpha_f×lr at t_max_tokens (constant: lr after warmup)."""
    warmup_tokens: int = 8_388_608_000
    """Linear warmup length in tokens (1B: 4000 steps × 2,097,152)."""
    warmup_start_frac: float = 0.0
    """LR at token 0 as a fraction of lr (0 = warm up from zero)."""
    t_max_tokens: int = 5_000_000_000_000
    """Where the decay reaches alpha_f×lr (1B stage 1: 5e12, beyond the 4T actually run)."""
    alpha_f: float = 0.1
    """Final LR as a fraction of lr (0 for the stage-2 anneal to zero)."""

    # ---- batch and duration --------------------------------------------------------
    global_batch_size: int = 512
    """Instances per optimizer step over all ranks (1B: 512 × 4096 tokens)."""
    micro_batch_size: int = 4
    """Instances per forward/backward on one rank; gradients accumulate over
    global_batch_size / (world_size × micro_batch_size) micro-batches."""
    seq_len: int = 4096
    """Tokens per instance (informational: the loop takes T from the batches)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (None: use max_tokens or the data's end)."""
    max_tokens: int | None = 4_000_000_000_000
    """Stop once this many tokens were consumed (whichever of max_steps/max_tokens first)."""

    # ---- loss ------------------------------------------------------------------------
    z_loss_coeff: float = 1e-4
    """z-loss coefficient × logsumexp(logits)² per non-ignored token; 0 disables it.
    1e-4 is what the OLMo trainer code applies (the 1B yaml says 1e-5 but the value is
    never passed to the loss function; facts §1.1). Logged separately from the CE."""
    loss_chunk_tokens: int | None = 512
    """Compute CE + z-loss from the final hidden states this many tokens at a time,
    recomputing each chunk's logits in backward, so the fp32 [tokens, vocab] logits and
    their gradient never exist whole (~6.6 GB each at the 1B micro-batch); None: one
    pass over the full logits."""
    max_consecutive_skips: int = 5
    """Abort with an Olmo2Error after this many non-finite (NaN/Inf) steps in a row;
    each such step is skipped (no optimizer update)."""

    # ---- precision and parallelism --------------------------------------------------
    precision: str = "auto"
    """auto | fast | fp32 | bf16: auto = bf16 on GPU, fp32 on CPU; fast = bf16 on GPU and
    on CPUs with native bf16 dot products (AMX / AVX-512 BF16), fp32 on others (AVX2-only
    CPUs emulate bf16 GEMM, ~7x slower). bf16 means bf16 autocast (none/ddp) or FSDP2
    MixedPrecisionPolicy(param bf16, reduce fp32); parameters and AdamW state stay fp32."""
    parallel: str = "fsdp"
    """fsdp | ddp | none: FSDP2 fully_shard per block then root; DDP; or plain. Falls
    back to none when running as a single process."""
    activation_checkpointing: bool = False
    """Recompute each block in backward (less memory, ~30% more compute)."""
    compile: bool = False
    """torch.compile each block (after activation checkpointing, before sharding)."""
    seed: int = 6198
    """Seed for the init and torch/numpy/python RNGs."""
    deterministic: bool = False
    """torch.use_deterministic_algorithms(True) (tests, exact-resume checks)."""

    # ---- checkpoints -----------------------------------------------------------------
    save_every: int | None = 1000
    """Write a sharded checkpoint every N steps (and at the end); None: only at the end."""
    keep_last: int | None = 3
    """Keep only the newest k >= 1 complete checkpoints (None keeps all); the checkpoint
    just written is never deleted."""
    resume: str | None = "auto"
    """auto (newest checkpoint in out_dir that loads, else start fresh) | a checkpoint
    path | None (start fresh; refused if out_dir holds checkpoints: use --restart)."""
    init_from: str | None = None
    """Warm start (stage 2): load model weights and AdamW moments from this checkpoint
    but start a fresh step counter, schedule and data position. Ignored when resuming."""
    save_final: bool = True
    """Write a checkpoint after the last step."""

    # ---- logging ----------------------------------------------------------------------
    log_every: int = 1
    """Write metrics.jsonl every N steps (the progress line updates every step)."""
    progress: bool = True
    """Show the stderr progress line (rank 0)."""
    eval_every: int | None = None
    """Call the eval hook every N steps (and at the end); None: only at the end."""
    peak_flops: float | None = None
    """Peak FLOP/s per device for MFU; None looks the GPU up in a small table (n/a on CPU)."""
    wandb_project: str | None = None
    """Also log to Weights & Biases under this project if wandb is installed."""
    tensorboard: bool = False
    """Also write TensorBoard scalars to out_dir/tb if tensorboard is installed."""

    def __post_init__(self):
        p = [msg for name, spec in TRAIN_FIELD_RANGES.items() if (msg := check_value(name, getattr(self, name), *spec))]
        if not isinstance(self.betas, tuple) or len(self.betas) != 2 or any(
                check_value("betas", b, "float>=", 0.0, 1.0) or b == 1.0 for b in self.betas):
            p.append(f"betas must be two numbers in [0, 1) (got {self.betas!r})")
        if p:  # the cross-field checks below assume every value is a number in range
            raise ConfigError("invalid train config: " + "; ".join(p))
        if self.schedule not in SCHEDULES:
            p.append(f"schedule must be one of {SCHEDULES} (got {self.schedule!r})")
        if self.precision not in ("auto", "fast", "fp32", "bf16"):
            p.append(f"precision must be auto|fast|fp32|bf16 (got {self.precision!r})")
        if self.parallel not in ("fsdp", "ddp", "none"):
            p.append(f"parallel must be fsdp|ddp|none (got {self.parallel!r})")
        if self.lr < 0 or not (0 <= self.alpha_f <= 1):
            p.append("lr must be >= 0 and alpha_f in [0, 1]")
        if self.global_batch_size <= 0 or self.micro_batch_size <= 0:
            p.append("global_batch_size and micro_batch_size must be > 0")
        if self.warmup_tokens < 0 or (self.schedule != "constant" and self.t_max_tokens <= self.warmup_tokens):
            p.append(f"need 0 <= warmup_tokens < t_max_tokens (got {self.warmup_tokens}, {self.t_max_tokens})")
        if self.max_steps is None and self.max_tokens is None:
            p.append("set max_steps or max_tokens")
        if self.keep_last is not None and (isinstance(self.keep_last, bool) or not isinstance(self.keep_last, int)
                                           or self.keep_last < 1):
            p.append(f"keep_last must be an integer >= 1, or None to keep every checkpoint "
                     f"(got {self.keep_last!r})")
        if self.max_consecutive_skips < 1:
            p.append("max_consecutive_skips must be >= 1")
        if p:
            raise ConfigError("invalid train config: " + "; ".join(p))

    def replace(self, **kw) -> "TrainConfig":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Build from a dict (e.g. a checkpoint's config); unknown keys are errors."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown TrainConfig fields: {', '.join(unknown)}")
        d = dict(d)
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d)


def check_run(model_cfg, train_cfg: TrainConfig, data_meta: dict | None = None, data_where: str = "--data") -> None:
    """Cross-checks of one run, before any model is built: the one place to add more.

    `data_meta` is the tokenize metadata of the training data (when known): its ids must
    all exist in the model's embedding, or the first batch dies with an IndexError.
    """
    if data_meta:
        vocab = int((data_meta.get("tokenizer") or {}).get("vocab_size") or 0)
        top = max(vocab - 1, int(data_meta.get("eos_id") or 0))
        if top >= model_cfg.vocab_size:
            from olmo2.config import pad_vocab
            raise ConfigError(
                f"{data_where}: the data was tokenized with a {vocab}-id tokenizer (ids up to {top}) but "
                f"model.vocab_size is {model_cfg.vocab_size}; pass that tokenizer with --tokenizer "
                f"or --set model.vocab_size={pad_vocab(top + 1)}")


def anneal(stage1: TrainConfig, start_lr: float, tokens: int, **kw) -> TrainConfig:
    """Stage-2 config: LR linear from start_lr to 0 over `tokens`, no warmup (facts §4)."""
    return stage1.replace(schedule="linear", lr=start_lr, warmup_tokens=0, t_max_tokens=tokens,
                          alpha_f=0.0, max_tokens=tokens, **kw)


@lru_cache(maxsize=None)
def field_docs(cls=TrainConfig) -> dict[str, str]:
    """{field: docstring} read from the attribute docstrings in the class source."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for prev, node in zip(body, body[1:]):
        if (isinstance(prev, ast.AnnAssign) and isinstance(prev.target, ast.Name)
                and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)):
            docs[prev.target.id] = " ".join(node.value.value.split())
    return docs
