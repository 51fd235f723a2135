"""Model configuration: one flat, typed dataclass, named presets, and HF `config.json` I/O.

Presets carry the published values (sources in ../shared/docs/olmo2-facts.md §1):

    olmo2-1b   OLMo-2-0425-1B    d 2048, 16 layers, 16 heads, MLP 8192, vocab 100352
    olmo2-7b   OLMo-2-1124-7B    d 4096, 32 layers, 32 heads, MLP 11008
    olmo2-13b  OLMo-2-1124-13B   d 5120, 40 layers, 40 heads, MLP 13824
    tiny-*     small shapes for tests, the CPU demo and benchmarks

HF I/O reads and writes `model_type: olmo2` (`Olmo2Config`). RoPE θ is accepted both as
transformers 4.x's top-level `rope_theta` and as transformers 5's `rope_parameters`
dict; we write both so either major version loads our checkpoints.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from olmo2.errors import ConfigError


# Every field's type and range, checked before anything is allocated (a config.json with
# `num_hidden_layers: 1e6` otherwise spends minutes building modules before failing, and
# `rms_norm_eps: -1` silently gives NaN logits). Upper bounds are far above any published
# model; `olmo2.memory` refuses shapes that are in range but do not fit in RAM.
# field: (kind, low, high, optional, HF config.json key)
FIELD_RANGES: dict[str, tuple] = {
    "vocab_size": ("int", 1, 2**31 - 1, False, "vocab_size"),
    "d_model": ("int", 1, 2**20, False, "hidden_size"),
    "n_layers": ("int", 1, 1024, False, "num_hidden_layers"),
    "n_heads": ("int", 1, 2**16, False, "num_attention_heads"),
    "n_kv_heads": ("int", 1, 2**16, False, "num_key_value_heads"),
    "d_ff": ("int", 1, 2**22, False, "intermediate_size"),
    "max_seq_len": ("int", 1, 2**24, False, "max_position_embeddings"),
    "rope_theta": ("float>", 0.0, float("inf"), False, "rope_theta"),
    "norm_eps": ("float>", 0.0, 1.0, False, "rms_norm_eps"),
    "init_std": ("float>=", 0.0, float("inf"), False, "initializer_range"),
    "eos_token_id": ("int", 0, 2**31 - 1, True, "eos_token_id"),
    "pad_token_id": ("int", 0, 2**31 - 1, True, "pad_token_id"),
    "bos_token_id": ("int", 0, 2**31 - 1, True, "bos_token_id"),
    "head_dim_override": ("int", 2, 2**16, True, "head_dim"),
}


def check_value(name: str, v, kind: str, lo, hi, optional: bool = False, *_ignored) -> str | None:
    """None if `v` is a valid `kind` in [lo, hi]; else a phrase naming `name` and the rule."""
    if v is None:
        return None if optional else f"{name} is required"
    if kind == "int":
        if isinstance(v, bool) or not isinstance(v, int):
            return f"{name} must be an integer (got {v!r})"
        if not lo <= v <= hi:
            # Bounds of 2**31 and more are overflow guards, not advice: name the one crossed.
            rule = f"in [{lo}, {hi:,}]" if hi < 2**31 - 1 else (f">= {lo}" if v < lo else f"<= {hi:,}")
            return f"{name} must be {rule} (got {v:,})"
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return f"{name} must be a finite number (got {v!r})"
    if (v <= lo if kind == "float>" else v < lo) or v > hi:
        rel = ">" if kind == "float>" else ">="
        top = "" if math.isinf(hi) else f" and <= {hi}"
        return f"{name} must be {rel} {lo}{top} (got {v!r})"
    return None


def _json_int(v):
    """JSON writes 1e6 as a float; accept integral floats as ints, leave the rest to check_value."""
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


@dataclass(frozen=True)
class ModelConfig:
    """The OLMo 2 architecture's shape. Every field maps to an `Olmo2Config` key."""

    vocab_size: int = 100352
    """Embedding rows (the tokenizer's 100278 ids padded to a multiple of 128)."""
    d_model: int = 2048
    """Residual stream width (HF `hidden_size`)."""
    n_layers: int = 16
    """Transformer blocks (HF `num_hidden_layers`)."""
    n_heads: int = 16
    """Query heads (HF `num_attention_heads`)."""
    n_kv_heads: int = 16
    """Key/value heads; < n_heads means grouped-query attention."""
    d_ff: int = 8192
    """SwiGLU hidden width (HF `intermediate_size`)."""
    max_seq_len: int = 4096
    """Context length the model was trained for (HF `max_position_embeddings`)."""
    rope_theta: float = 500000.0
    """RoPE base."""
    norm_eps: float = 1e-6
    """RMSNorm epsilon, shared by the block, QK and final norms."""
    init_std: float = 0.02
    """Init std of every Linear/Embedding weight (truncated at ±3σ)."""
    eos_token_id: int = 100257
    pad_token_id: int = 100277
    bos_token_id: int | None = None
    """OLMo 2 prepends no BOS in pretraining."""
    head_dim_override: int | None = None
    """Only when an HF config sets `head_dim` != d_model / n_heads."""

    def __post_init__(self):
        problems = [p for name, spec in FIELD_RANGES.items()
                    if (p := check_value(name, getattr(self, name), *spec))]
        if not problems:
            if self.n_heads % self.n_kv_heads:
                problems.append(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
            if self.head_dim_override is None and self.d_model % self.n_heads:
                problems.append(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
            elif self.head_dim % 2 or self.head_dim <= 0:
                problems.append(f"head_dim ({self.head_dim}) must be even and > 0 for RoPE")
        if problems:
            raise ConfigError("invalid model config: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        if self.head_dim_override is not None:
            return self.head_dim_override
        return self.d_model // max(self.n_heads, 1)

    def num_params(self, include_embedding: bool = True) -> int:
        """Parameter count computed from the shapes (matches the module's count)."""
        d, hd = self.d_model, self.head_dim
        attn = d * self.n_heads * hd * 2 + d * self.n_kv_heads * hd * 2  # q, o ; k, v
        norms_qk = self.n_heads * hd + self.n_kv_heads * hd
        mlp = 3 * d * self.d_ff
        per_layer = attn + norms_qk + mlp + 2 * d
        total = self.n_layers * per_layer + d  # + final norm
        if include_embedding:
            total += 2 * self.vocab_size * d  # untied embed_tokens and lm_head
        return total

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)

    # ---- HF config.json ------------------------------------------------------------
    def to_hf_dict(self) -> dict:
        """The `config.json` that `transformers.Olmo2Config` reads (4.x and 5.x)."""
        d = {
            "architectures": ["Olmo2ForCausalLM"],
            "model_type": "olmo2",
            "vocab_size": self.vocab_size,
            "hidden_size": self.d_model,
            "intermediate_size": self.d_ff,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads,
            "max_position_embeddings": self.max_seq_len,
            "rope_theta": self.rope_theta,
            "rope_scaling": None,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "rms_norm_eps": self.norm_eps,
            "initializer_range": self.init_std,
            "hidden_act": "silu",
            "attention_bias": False,
            "attention_dropout": 0.0,
            "tie_word_embeddings": False,
            "use_cache": True,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "bos_token_id": self.bos_token_id,
        }
        if self.head_dim_override is not None:
            d["head_dim"] = self.head_dim_override
        return d

    @classmethod
    def from_hf_dict(cls, d: dict, source: str = "config.json") -> "ModelConfig":
        """Build from an HF config dict; unknown model types, missing keys and any value of
        the wrong type or range are ConfigErrors naming the key, before anything is built."""
        mt = d.get("model_type")
        if mt != "olmo2":
            raise ConfigError(f"{source}: model_type is {mt!r}, expected 'olmo2' (this package loads OLMo 2 checkpoints only)")
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
            if key not in d:
                raise ConfigError(f"{source}: missing required key {key!r}")
        for key in ("rope_parameters", "rope_scaling"):
            if d.get(key) is not None and not isinstance(d[key], dict):
                raise ConfigError(f"{source}: {key} must be an object like {{\"rope_type\": \"default\", "
                                  f"\"rope_theta\": 500000.0}} or null (got {d[key]!r})")
        rp = d.get("rope_parameters") or {}
        scaling = d.get("rope_scaling") or {}
        rtype = scaling.get("rope_type", scaling.get("type")) or rp.get("rope_type", "default")
        if rtype not in ("default", None):
            raise ConfigError(f"{source}: rope type {rtype!r} is not supported (OLMo 2 uses plain RoPE)")
        if d.get("attention_bias"):
            raise ConfigError(f"{source}: attention_bias=true is not part of OLMo 2")
        if d.get("tie_word_embeddings"):
            raise ConfigError(f"{source}: tie_word_embeddings=true is not part of OLMo 2 (embeddings are untied)")
        if d.get("hidden_act", "silu") != "silu":
            raise ConfigError(f"{source}: hidden_act {d.get('hidden_act')!r} is not supported (OLMo 2 uses silu)")

        def _id(name, default):
            v = d.get(name, default)
            if isinstance(v, list):  # HF allows a list of eos ids; the first is the canonical one
                v = v[0] if v else None
            return _json_int(v)

        kv = d.get("num_key_value_heads")
        v = {
            "vocab_size": _json_int(d["vocab_size"]),
            "d_model": _json_int(d["hidden_size"]),
            "n_layers": _json_int(d["num_hidden_layers"]),
            "n_heads": _json_int(d["num_attention_heads"]),
            # absent/null means MHA; 0 is not "absent" but a broken value, refused below
            "n_kv_heads": _json_int(d["num_attention_heads"] if kv is None else kv),
            "d_ff": _json_int(d["intermediate_size"]),
            "max_seq_len": _json_int(d.get("max_position_embeddings", 4096)),
            "rope_theta": rp.get("rope_theta", d.get("rope_theta", 500000.0)),
            "norm_eps": d.get("rms_norm_eps", 1e-6),
            "init_std": d.get("initializer_range", 0.02),
            "eos_token_id": _id("eos_token_id", 100257),
            "pad_token_id": _id("pad_token_id", 100277),
            "bos_token_id": _id("bos_token_id", None),
            "head_dim_override": _json_int(d.get("head_dim")),
        }
        problems = [p for name, spec in FIELD_RANGES.items() if (p := check_value(spec[4], v[name], *spec))]
        # Special ids beyond vocab_size are not refused: tiny models trained here keep the
        # dolma2 defaults (eos 100257) over a small embedding, and never emit them.
        if problems:
            raise ConfigError(f"{source}: " + "; ".join(problems) + "; fix config.json or re-save the checkpoint")
        if v["head_dim_override"] is not None and v["head_dim_override"] == v["d_model"] // v["n_heads"]:
            v["head_dim_override"] = None
        v["rope_theta"], v["norm_eps"], v["init_std"] = float(v["rope_theta"]), float(v["norm_eps"]), float(v["init_std"])
        try:
            return cls(**v)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def from_json_file(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: not found (an HF model directory needs config.json)") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        return cls.from_hf_dict(d, source=str(path))


# ---- presets -----------------------------------------------------------------------
# Literal values, one readable line each; see the module docstring for sources.
PRESETS: dict[str, ModelConfig] = {
    "olmo2-1b": ModelConfig(),
    "olmo2-7b": ModelConfig(d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32, d_ff=11008),
    "olmo2-13b": ModelConfig(d_model=5120, n_layers=40, n_heads=40, n_kv_heads=40, d_ff=13824),
    # Tiny shapes keep the real vocab ids (eos/pad) so the dolma2 tokenizer fits them.
    "tiny": ModelConfig(d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, d_ff=192, max_seq_len=512),
    "tiny-gqa": ModelConfig(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=160, max_seq_len=512),
    # Sized for the CPU demo: trains a few million tokens in minutes on 2 cores with an
    # ~8k-entry demo tokenizer (vocab_size is replaced by the tokenizer's padded size).
    "tiny-demo": ModelConfig(vocab_size=8192, d_model=256, n_layers=4, n_heads=4, n_kv_heads=4, d_ff=768,
                             max_seq_len=512, eos_token_id=8190, pad_token_id=8191),
}


def preset(name: str) -> ModelConfig:
    """A preset by name; a clear error lists the valid names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


def pad_vocab(n: int, multiple: int = 128) -> int:
    """Round a tokenizer size up to the embedding size (OLMo pads to a multiple of 128)."""
    return ((n + multiple - 1) // multiple) * multiple
