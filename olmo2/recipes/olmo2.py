"""The published OLMo 2 recipes (1B, 7B, 13B; stage 1 pretraining and stage 2 anneal).

Numbers come from ../shared/docs/olmo2-facts.md §1.4 (size table), §3 (stage 1) and §4
(stage 2). Schedules are in tokens: warmup 8,388,608,000 tokens (4000 steps of the 1B's
2,097,152-token batch), cosine toward 0.1×peak at t_max 5e12 while training stops earlier;
so the LR at the 1B's last stage-1 step is 7.4487e-5, the stage-2 start LR.

Data: `data_root` is where a local tokenized copy of OLMo-mix-1124 / Dolmino-mix-1124 lives
(`olmo2.data.mix` documents the directory layout); nothing is read until training starts.

Caveats (UNCONFIRMED in the facts): the 7B/13B warmup length is taken to be the 1B's in
tokens; with t_max 5e12 the 7B schedule ends at 6.135e-5 (published start 6.1499e-5) and
the 13B's at the floor 3e-5 (published start 9e-5), so their stage-2 start LRs are the
published values, not derived. The 13B 100B/300B mixes are approximated by scaling the
Dolmino 50B composition.
"""
from __future__ import annotations

from olmo2.config import preset
from olmo2.data.mix import dolmino_50b, olmo_mix_1124
from olmo2.recipes import Recipe
from olmo2.train.config import TrainConfig, anneal

SEQ_LEN = 4096
WARMUP_TOKENS = 8_388_608_000
T_MAX_TOKENS = 5_000_000_000_000
STAGE1_SEED = 6198
DEFAULT_ROOT = "data"

# size: (preset, peak lr, batch in sequences, stage-1 steps, stage-2 start lr, stage-2 seeds)
SIZES = {
    "1b": ("olmo2-1b", 4.0e-4, 512, 1_907_359, 7.4487e-5, (42069, 666, 42)),
    "7b": ("olmo2-7b", 3.0e-4, 1024, 928_646, 6.1499e-5, (42, 42069, 666)),
    "13b": ("olmo2-13b", 3.0e-4, 2048, 596_057, 9.0e-5, (1110, 2662, 6209)),
}
#: Stage-2 anneal length in tokens per size (13B: 100B ingredients, plus one of 300B).
STAGE2_TOKENS = {"1b": 50_000_000_000, "7b": 50_000_000_000, "13b": 100_000_000_000}


def stage1_train(size: str) -> TrainConfig:
    """The stage-1 TrainConfig of a size (AdamW 0.9/0.95, eps 1e-8, wd 0.1, z-loss, clip 1)."""
    _, lr, batch, steps, _, _ = SIZES[size]
    return TrainConfig(lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, decay_embeddings=False,
                       max_grad_norm=1.0, schedule="cosine", warmup_tokens=WARMUP_TOKENS,
                       t_max_tokens=T_MAX_TOKENS, alpha_f=0.1, global_batch_size=batch, seq_len=SEQ_LEN,
                       max_steps=steps, max_tokens=None, z_loss_coeff=1e-4, seed=STAGE1_SEED)


def _stage1(size: str, data_root: str) -> Recipe:
    name, _, batch, steps, _, _ = SIZES[size]
    return Recipe(name=f"olmo2_{size}_stage1", model=preset(name), train=stage1_train(size),
                  data=olmo_mix_1124(f"{data_root}/olmo-mix-1124", seed=STAGE1_SEED),
                  notes=f"OLMo-mix-1124, natural proportions; {steps:,} steps × {batch}×{SEQ_LEN} tokens")


def _stage2(size: str, seed: int, data_root: str, init_from: str | None, tokens: int | None = None) -> Recipe:
    name, _, batch, steps1, start_lr, seeds = SIZES[size]
    tokens = tokens or STAGE2_TOKENS[size]
    step_tokens = batch * SEQ_LEN
    # The OLMo trainer stops at round(tokens / batch tokens) + 10: the last ~10 steps run at LR 0.
    stop_at = round(tokens / step_tokens) + 10
    train = anneal(stage1_train(size), start_lr, tokens, seed=seed,
                   init_from=init_from or f"checkpoints/olmo2-{size}/stage1/step-{steps1:06d}")
    train = train.replace(max_tokens=None, max_steps=stop_at)
    mix = dolmino_50b(f"{data_root}/dolmino-mix-1124", seed=seed, scale=tokens / 50e9)
    return Recipe(name=f"olmo2_{size}_stage2", model=preset(name), train=train, data=mix,
                  notes=f"anneal {tokens / 1e9:.0f}B tokens, LR {start_lr:g} linearly to 0, {stop_at:,} steps; "
                        f"seed {seed} (published seeds {seeds}); init_from stage 1 with AdamW moments")


def olmo2_1b_stage1(data_root: str = DEFAULT_ROOT) -> Recipe:
    """OLMo-2-0425-1B pretraining: 4T tokens, peak 4e-4, seed 6198."""
    return _stage1("1b", data_root)


def olmo2_1b_stage2(seed: int = 42, data_root: str = DEFAULT_ROOT, init_from: str | None = None) -> Recipe:
    """1B anneal: Dolmino 50B, LR 7.4487e-5 → 0 over 23,852 steps; seeds 42069/666/42 (final = 42, no soup)."""
    return _stage2("1b", seed, data_root, init_from)


def olmo2_7b_stage1(data_root: str = DEFAULT_ROOT) -> Recipe:
    """OLMo-2-1124-7B pretraining: 3.9T tokens, peak 3e-4, batch 1024×4096."""
    return _stage1("7b", data_root)


def olmo2_7b_stage2(seed: int = 42, data_root: str = DEFAULT_ROOT, init_from: str | None = None) -> Recipe:
    """7B anneal: Dolmino 50B, LR 6.1499e-5 → 0; seeds 42/42069/666, souped."""
    return _stage2("7b", seed, data_root, init_from)


def olmo2_13b_stage1(data_root: str = DEFAULT_ROOT) -> Recipe:
    """OLMo-2-1124-13B pretraining: 5T tokens, peak 3e-4, batch 2048×4096."""
    return _stage1("13b", data_root)


def olmo2_13b_stage2(seed: int = 1110, data_root: str = DEFAULT_ROOT, init_from: str | None = None,
                     tokens: int = 100_000_000_000) -> Recipe:
    """13B anneal: 100B × seeds 1110/2662/6209 plus 300B × seed 2662 (tokens=300e9), all souped."""
    return _stage2("13b", seed, data_root, init_from, tokens=tokens)


def olmo2_1b_sft():
    """OLMo-2-0425-1B-SFT: tulu-3-sft-olmo-2-mixture-0225, LR 3e-5 linear, 3% warmup, 2 epochs, 128 × 4096.

    facts §5 (open-instruct finetune.py, 8×H100): batch 2 per device × 8 accumulation × 8
    GPUs, wd 0, seed 1, `--add_bos`, tulu template, reduce_loss mean (per micro-batch, so
    micro_batch_size 2 as there). Betas/eps are AdamW's defaults (0.9, 0.999, 1e-8), no
    z-loss, gradient checkpointing, bf16 on GPU; no gradient clipping (the script's default
    clip_grad_norm -1; the 1B command's value is UNCONFIRMED)."""
    from olmo2.post.recipe import PostRecipe, SFTConfig
    train = TrainConfig(lr=3e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, max_grad_norm=None,
                        schedule="linear", warmup_tokens=0, t_max_tokens=1, alpha_f=0.0,
                        global_batch_size=128, micro_batch_size=2, seq_len=SEQ_LEN, max_steps=1, max_tokens=None,
                        z_loss_coeff=0.0, activation_checkpointing=True, seed=1, save_every=500, keep_last=3)
    return PostRecipe(name="olmo2_1b_sft", train=train,
                      stage=SFTConfig(epochs=2, warmup_ratio=0.03, add_bos=True, packing=True, reduce_loss="mean"),
                      notes="allenai/tulu-3-sft-olmo-2-mixture-0225; the step count and warmup follow from the "
                            "packed data (2 epochs, 3% warmup)")


def olmo2_1b_dpo():
    """OLMo-2-0425-1B-DPO: dpo_norm, β 5, LR 2.5e-6 linear, 10% warmup, 1 epoch, 128 pairs × 2048, wd 0.

    facts §5 (open-instruct dpo_tune_cache.py, 8×H100): batch 8 per device × 2 accumulation
    × 8 GPUs, seed 111, `--add_bos`, tulu template, gradient checkpointing; data
    allenai/olmo-2-0425-1b-preference-mix. AdamW defaults (0.9, 0.999, 1e-8), no z-loss; no
    gradient clipping (the script's default; the 1B command's value is UNCONFIRMED)."""
    from olmo2.post.dpo_run import DPOConfig
    from olmo2.post.recipe import PostRecipe
    train = TrainConfig(lr=2.5e-6, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, max_grad_norm=None,
                        schedule="linear", warmup_tokens=0, t_max_tokens=1, alpha_f=0.0,
                        global_batch_size=128, micro_batch_size=8, seq_len=2048, max_steps=1, max_tokens=None,
                        z_loss_coeff=0.0, activation_checkpointing=True, seed=111, save_every=100, keep_last=3)
    return PostRecipe(name="olmo2_1b_dpo", train=train,
                      stage=DPOConfig(beta=5.0, loss_type="dpo_norm", epochs=1, warmup_ratio=0.1, add_bos=True,
                                      data_seed=111),
                      notes="allenai/olmo-2-0425-1b-preference-mix; steps follow from the pairs (1 epoch, 10% warmup)")


def olmo2_1b_rlvr():
    """OLMo-2-0425-1B-RLVR1: GRPO, 16 samples per prompt, temperature 1, constant LR 5e-7, β 0.01 (k3), clip 0.2.

    facts §5 (open-instruct grpo_vllm_thread_ray_gtrl.py, 2 nodes of H100): response and
    prompt length 2048, reward 10 for a verified answer else 0, no reward model, no
    non-stop penalty, seed 1; data allenai/RLVR-GSM-MATH-IF-Mixed-Constraints. Batch: 48
    prompts × 16 completions per step (the modern re-run's num_unique_prompts_rollout 48;
    the original's per-GPU rollout/mini-batch sizes do not give one global figure here:
    UNCONFIRMED), one update per rollout; total_episodes 2,000,000 ≈ 2,604 steps."""
    from olmo2.post.recipe import PostRecipe
    from olmo2.post.rlvr import RLVRConfig
    train = TrainConfig(lr=5e-7, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, max_grad_norm=None,
                        schedule="constant", warmup_tokens=0, global_batch_size=48 * 16, micro_batch_size=4,
                        seq_len=4096, max_steps=2_000_000 // (48 * 16), max_tokens=None, z_loss_coeff=0.0,
                        activation_checkpointing=True, seed=1, save_every=20, keep_last=3, eval_every=20)
    return PostRecipe(name="olmo2_1b_rlvr", train=train,
                      stage=RLVRConfig(group_size=16, temperature=1.0, max_new_tokens=2048, max_prompt_tokens=2048,
                                       clip=0.2, beta=0.01),
                      notes="allenai/RLVR-GSM-MATH-IF-Mixed-Constraints; checkpoints every 20 steps as the "
                            "released step_XXX revisions")
