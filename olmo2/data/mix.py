"""Data mixes as typed Python recipes, plus the published OLMo 2 compositions as data.

    from olmo2.data.mix import Mix, Source, dolmino_50b
    mix = Mix([Source("web", ["tok/web"]), Source("math", ["tok/math/*.npy"], 2_000_000)], seed=1)
    loader = Loader.from_mix(mix, seq_len=4096, global_batch_size=512, seed=6198)

A `Source` is a named set of token shards (dirs, globs or files written by `data tokenize`).
With `target_tokens=None` a source contributes all its instances (natural proportions, as the
OLMo 2 stage-1 mix). With a target, whole `seq_len` instances are repeated (up-sampling) or
subsampled (down-sampling) deterministically from `Mix.seed` and the source name, so adding
a source never changes which instances another source contributes.

Published compositions (OLMo-2 paper Table 1; OLMo 1B stage-2 yaml comments) are the
constants `OLMO_MIX_1124` and `DOLMINO_MIX_1124_50B` (source -> tokens). `olmo_mix_1124(root)`
and `dolmino_50b(root)` map them onto a local copy laid out as `root/<dir>/**/*.npy` with the
directory names in `OLMO_MIX_1124_DIRS` / `DOLMINO_50B_DIRS` (one tokenize --out per source).

Footgun: targets are counted in whole instances (`target_tokens // seq_len`), and a sampled
source keeps an explicit index array (8 bytes per instance) in memory.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from olmo2.data.shards import list_shards
from olmo2.errors import DataError

B, M = 10**9, 10**6

#: OLMo-mix-1124 (stage 1), tokens per source, OLMo 2 paper Table 1. Natural proportions.
OLMO_MIX_1124: dict[str, int] = {
    "dclm": int(3.71e12),
    "starcoder": int(83.0 * B),
    "pes2o": int(58.6 * B),
    "arxiv": int(20.8 * B),
    "open_web_math": int(12.2 * B),
    "algebraic_stack": int(11.8 * B),
    "wiki": int(3.7 * B),
}
#: Directory under `root` expected for each OLMo-mix-1124 source.
OLMO_MIX_1124_DIRS: dict[str, str] = {
    "dclm": "dclm", "starcoder": "starcoder", "pes2o": "pes2o", "arxiv": "arxiv",
    "open_web_math": "open-web-math", "algebraic_stack": "algebraic-stack", "wiki": "wiki",
}

#: Dolmino-mix-1124 50B variant used for the OLMo 2 1B stage 2 (yaml `#SOURCE` comments).
DOLMINO_MIX_1124_50B: dict[str, int] = {
    "dclm_hq": int(24.31 * B),
    "flan": int(8.54 * B),
    "pes2o": int(3.01 * B),
    "wiki": int(3.66 * B),
    "stackexchange": int(1.26 * B),
    "tinygsm_mind": int(3.06 * B),
    "tinygsm_mind_2students": int(3.41 * B),
    "mathcoder2_synth": int(3.09 * B),
    "ajibawa_2023": int(782.6 * M),
    "personahub_math_v5": int(191.6 * M),
    "metamath_owm_filtered": int(84.2 * M),
    "tulu3_sft_personas_math_grade": int(21.8 * M),
    "tulu_v3_9_personahub_interm_algebra": int(19.7 * M),
    "gsm_mind": int(17.1 * M),
    "basic_math_mj": int(9.0 * M),
    "basic_math_mj_multiadd": int(2.2 * M),
    "gsm8k_train_main": int(1.23 * M),
    "gsm8k_train_socratic": int(1.51 * M),
    "gsm8k_synth": int(1.08 * M),
}
#: Directory under `root` expected for each Dolmino 50B source (math sources under math/).
DOLMINO_50B_DIRS: dict[str, str] = {
    "dclm_hq": "dclm", "flan": "flan", "pes2o": "pes2o", "wiki": "wiki",
    "stackexchange": "stackexchange",
    "tinygsm_mind": "math/tinyGSM-MIND", "tinygsm_mind_2students": "math/tinyGSM-MIND-2students",
    "mathcoder2_synth": "math/mathcoder2-synthmath", "ajibawa_2023": "math/ajibawa-2023",
    "personahub_math_v5": "math/personahub_math_v5",
    "metamath_owm_filtered": "math/metamath-owmfilter",
    "tulu3_sft_personas_math_grade": "math/tulu_math",
    "tulu_v3_9_personahub_interm_algebra": "math/tulu_v3.9_personahub_math_interm_algebra",
    "gsm_mind": "math/gsm_MIND", "basic_math_mj": "math/basic_math_mj",
    "basic_math_mj_multiadd": "math/basic_math_mj_multiadd",
    "gsm8k_train_main": "math/gsm8k/main", "gsm8k_train_socratic": "math/gsm8k/socratic",
    "gsm8k_synth": "math/gsm8k-synth",
}


@dataclass
class Source:
    """A named set of token shards; `target_tokens` None = use all of it once."""

    name: str
    paths: list[str]
    target_tokens: int | None = None

    def shards(self) -> list[str]:
        """Sorted shard files; DataError if the paths match nothing."""
        try:
            found = list_shards(list(self.paths))
        except DataError as e:
            raise DataError(f"mix source {self.name!r}: {e}") from None
        if not found:
            raise DataError(f"mix source {self.name!r}: no .npy token shards under "
                            f"{self.paths}; run `olmo2 data tokenize` first")
        return found


@dataclass
class Mix:
    """Sources plus the seed for deterministic up/down-sampling."""

    sources: list[Source]
    seed: int = 0
    name: str = field(default="mix")

    def __post_init__(self):
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise DataError(f"mix {self.name!r}: duplicate source names {names}")
        if not self.sources:
            raise DataError(f"mix {self.name!r} has no sources")


def source_seed(mix_seed: int, name: str) -> int:
    """Per-source sampling seed: independent of the other sources in the mix."""
    return (int(mix_seed) * 1_000_003 + zlib.crc32(name.encode())) % (1 << 63)


def sample_instances(available: int, target: int, seed: int) -> np.ndarray:
    """Deterministic local instance ids: whole repeats of arange(available), then a subset.

    `target <= available` picks `target` distinct instances; otherwise every instance appears
    `target // available` times and a random `target % available` of them once more.
    Ids are sorted, so the loader's shuffle alone decides order.
    """
    if target < 0:
        raise DataError(f"target instances must be >= 0, got {target}")
    if available == 0:
        if target:
            raise DataError("cannot up-sample a source with no complete instances")
        return np.zeros(0, dtype=np.int64)
    reps, rem = divmod(target, available)
    rng = np.random.Generator(np.random.PCG64(seed))
    extra = np.sort(rng.permutation(available)[:rem]).astype(np.int64)
    full = np.tile(np.arange(available, dtype=np.int64), reps)
    return np.sort(np.concatenate([full, extra]), kind="stable")


def _mix_from(table: dict[str, int], dirs: dict[str, str], root: str, name: str,
              seed: int, targets: bool, scale: float) -> Mix:
    srcs = []
    for src, tokens in table.items():
        glob_ = f"{root.rstrip('/')}/{dirs[src]}/**/*.npy"
        srcs.append(Source(src, [glob_], int(tokens * scale) if targets else None))
    return Mix(srcs, seed=seed, name=name)


def olmo_mix_1124(root: str, seed: int = 0) -> Mix:
    """OLMo-mix-1124 (stage 1) over `root/<OLMO_MIX_1124_DIRS[src]>/**/*.npy`, natural proportions."""
    return _mix_from(OLMO_MIX_1124, OLMO_MIX_1124_DIRS, root, "olmo-mix-1124", seed, False, 1.0)


def dolmino_50b(root: str, seed: int = 0, scale: float = 1.0) -> Mix:
    """Dolmino-mix-1124 50B (stage 2) over `root/<DOLMINO_50B_DIRS[src]>/**/*.npy`.

    Each source is sampled to its published token count times `scale` (use a small scale for
    a scaled-down replication; up-sampling repeats instances when a local copy is smaller).
    """
    return _mix_from(DOLMINO_MIX_1124_50B, DOLMINO_50B_DIRS, root, "dolmino-mix-1124-50b",
                     seed, True, scale)
