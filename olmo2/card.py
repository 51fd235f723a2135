"""The model card written into every checkpoint directory we save (README.md).

People meet a model through its directory long after the run that made it; the card
says what it is, how it was made (when the caller knows), how to run it, and — always —
that it can produce false, biased or harmful text; nothing here makes the model safe.

This module is the one place the card's text lives: every verb that writes an HF model
directory (`init`, `export`, `soup`, and `replicate`'s stage and soup outputs) goes through
`model_card`, and tests/test_model_card.py checks each of them. Say here only what exists.
"""
from __future__ import annotations

from olmo2.config import ModelConfig

RISK_NOTICE = (
    "This model can produce text that is false, biased, offensive or harmful, and it states "
    "falsehoods with confidence. It has no safety tuning unless the card says so. Do not rely "
    "on it for facts, advice or decisions; review its output before using it."
)


def model_card(cfg: ModelConfig, description: str | None = None, training: dict | None = None) -> str:
    """Markdown for README.md in a checkpoint directory."""
    lines = [
        "---",
        "library_name: transformers",
        "license: apache-2.0",
        "tags: [olmo2, olmo2-python]",
        "---",
        "",
        "# OLMo 2 checkpoint",
        "",
        description or "An OLMo 2 architecture checkpoint written by the `olmo2` package.",
        "",
        "## Risks and limitations",
        "",
        RISK_NOTICE,
        "",
        "## Architecture",
        "",
        f"- {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads ({cfg.n_kv_heads} KV heads), "
        f"SwiGLU {cfg.d_ff}, vocab {cfg.vocab_size}, context {cfg.max_seq_len}, RoPE θ {cfg.rope_theta:g}",
        f"- {cfg.num_params():,} parameters; post-sublayer RMSNorm, QK-norm, untied embeddings, no biases",
        f"- eos {cfg.eos_token_id}, pad {cfg.pad_token_id}, no BOS in pretraining",
        "",
    ]
    if training:
        lines += ["## Training", ""] + [f"- {k}: {v}" for k, v in training.items()] + [""]
    lines += [
        "## Use",
        "",
        "```",
        "olmo2 generate --model THIS_DIR --prompt 'Language modeling is' --temperature 0",
        "olmo2 chat --model THIS_DIR",
        "olmo2 eval --model THIS_DIR --tasks truthfulqa,gsm8k --data-dir DATA --out RUN   # TruthfulQA MC1/MC2, GSM8K",
        "```",
        "",
        "It also loads in transformers: `AutoModelForCausalLM.from_pretrained(THIS_DIR)`.",
        "",
    ]
    return "\n".join(lines)
