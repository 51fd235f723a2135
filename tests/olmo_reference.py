"""OLMo's own code, read from the ai2-olmo 0.6.0 wheel, as a reference for our tests.

The wheel (cached by `olmo2.data.sources.ai2_olmo_wheel`) is never installed: the modules we
compare against are compiled straight from the zip. Their package imports pull in omegaconf,
boto3, the distributed runtime and more, so only the imports the compared code *does not
call* on our path are replaced by stand-ins, each listed below with why it is safe:

- `olmo_data` (packaged-file lookup): only used for tokenizer identifiers that are not files.
- `olmo.config`: `TruncationDirection` is re-declared with the wheel's two values; the three
  config classes are only used by `from_train_config`/`from_checkpoint`, which we never call.
- `olmo.torch_util`: rank/world-size getters, only consulted when `rank`/`world_size` are
  not passed (we always pass them); `barrier` only with a `work_dir` (we pass none).
- `olmo.util`: `roundrobin`/`threaded_generator`, only used when `num_threads` is truthy
  (we pass 0, which iterates the indices in order on the calling thread).

`olmo/aliases.py` and `olmo/exceptions.py` are loaded from the wheel as they are.
"""
from __future__ import annotations

import contextlib
import sys
import types
import zipfile
from enum import Enum
from pathlib import Path


def _stub(name: str, **attrs) -> types.ModuleType:
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    return m


def _unused(*_a, **_k):
    raise AssertionError("a stand-in that the reference path should never call was called")


class _TruncationDirection(str, Enum):  # olmo/config.py: `class TruncationDirection(StrEnum)`
    right = "right"
    left = "left"


@contextlib.contextmanager
def _olmo_package(wheel: Path):
    """sys.modules entries for the `olmo` package skeleton while the reference loads."""
    z = zipfile.ZipFile(wheel)
    olmo = _stub("olmo", __path__=[])
    data = _stub("olmo.data", __path__=[])
    mods = {
        "olmo": olmo, "olmo.data": data,
        "olmo_data": _stub("olmo_data", get_data_path=_unused, is_data_file=lambda _i: False),
        "olmo.config": _stub("olmo.config", TruncationDirection=_TruncationDirection,
                             ModelConfig=object, TokenizerConfig=object, TrainConfig=object),
        "olmo.torch_util": _stub("olmo.torch_util", barrier=_unused, get_fs_local_rank=_unused,
                                 get_global_rank=_unused, get_world_size=_unused),
        "olmo.util": _stub("olmo.util", roundrobin=_unused, threaded_generator=_unused),
    }
    saved = {k: sys.modules.get(k) for k in mods | {"olmo.aliases": 0, "olmo.exceptions": 0}}
    sys.modules.update(mods)
    try:
        for name in ("aliases", "exceptions"):
            _exec(z, f"olmo/{name}.py", f"olmo.{name}", "olmo")
        yield z
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def _exec(z: zipfile.ZipFile, member: str, modname: str, package: str) -> types.ModuleType:
    mod = types.ModuleType(modname)
    mod.__package__ = package
    mod.__file__ = f"{Path(z.filename).name}/{member}"
    sys.modules[modname] = mod
    exec(compile(z.read(member).decode("utf-8"), mod.__file__, "exec"), mod.__dict__)
    return mod


def olmo_tokenizer_class(wheel: Path):
    """`olmo.tokenizer.Tokenizer` from the wheel (wraps a `tokenizers.Tokenizer`)."""
    with _olmo_package(wheel) as z:
        return _exec(z, "olmo/tokenizer.py", "olmo.tokenizer", "olmo").Tokenizer


def olmo_iterable_dataset_class(wheel: Path):
    """`olmo.data.iterable_dataset.IterableDataset` from the wheel (the trainer's data order)."""
    with _olmo_package(wheel) as z:
        return _exec(z, "olmo/data/iterable_dataset.py", "olmo.data.iterable_dataset",
                     "olmo.data").IterableDataset
