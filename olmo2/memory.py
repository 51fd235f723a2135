"""How many bytes a model needs, and whether this machine has them, checked before building it.

    from olmo2.memory import check_model_memory
    check_model_memory(cfg, bytes_per_param=4, what="config.json")   # raises Olmo2Error

A config that is valid field by field can still ask for more memory than exists
(`max_position_embeddings: 1e11` is a 400 GB RoPE table; `olmo2-13b` in fp32 is 55 GB).
Building such a model either dies in the kernel's OOM killer (no message at all) or swaps
for minutes, so the CLI verbs call this first and refuse with one line saying how many GB
the model needs and how many are available.

"Available" is MemAvailable + SwapFree from /proc/meminfo (what can be allocated without
evicting anything that cannot be reclaimed), or physical free pages via os.sysconf where
/proc is absent; if neither is readable the check is skipped rather than guessed.
`OLMO2_MEMORY_BYTES` overrides the figure (tests, cgroup-limited containers).
"""
from __future__ import annotations

import os

from olmo2.errors import Olmo2Error


class OutOfMemoryError(Olmo2Error):
    """The model (or its RoPE tables) would not fit in this machine's memory."""


def available_bytes() -> int | None:
    """Bytes this process can allocate now, or None when the OS does not say."""
    env = os.environ.get("OLMO2_MEMORY_BYTES")
    if env:
        return int(float(env))
    try:
        info = {}
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                info[key] = int(rest.split()[0]) * 1024
        if "MemAvailable" in info:
            return info["MemAvailable"] + info.get("SwapFree", 0)
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def model_bytes(cfg, bytes_per_param: float) -> int:
    """Parameters × bytes_per_param plus the fp32 cos/sin RoPE tables (always materialised)."""
    rope = 2 * cfg.max_seq_len * cfg.head_dim * 4
    return int(cfg.num_params() * bytes_per_param) + rope


def check_model_memory(cfg, bytes_per_param: float = 4, what: str = "model") -> None:
    """Raise OutOfMemoryError if building `cfg` needs more memory than is available."""
    need = model_bytes(cfg, bytes_per_param)
    have = available_bytes()
    if have is None or need <= have:
        return
    raise OutOfMemoryError(
        f"{what}: this model needs about {need / 1e9:,.1f} GB of memory ({cfg.num_params():,} parameters, "
        f"{cfg.max_seq_len:,}-position RoPE tables) but only {have / 1e9:,.1f} GB is available; "
        "use a smaller config (or a lower-precision --dtype) or a machine with more memory")
