"""Load DCP checkpoints without running code planted in them.

    dcp.load(state, storage_reader=SafeReader(ckpt), planner=SafeLoadPlanner())

A torch.distributed.checkpoint (DCP) directory holds two pickles that stock DCP (torch
2.13) unpickles with no restriction, so a planted `__reduce__` payload runs on load
(`olmo2 train` resume, `olmo2 export`, `olmo2 soup` of training checkpoints):

- `.metadata` (the index of tensors and byte items) is read by
  `FileSystemReader.read_metadata` with a bare `pickle.load`; torch offers no
  `weights_only` path for it. `SafeReader` reads it with `_MetadataUnpickler`, whose
  `find_class` resolves only the handful of plain data classes DCP metadata is made of
  (the classes in `_ALLOWED`, torch dtypes/layouts/Size, pathlib paths). Anything else — os.system,
  builtins.eval, a class with a side-effecting constructor — is refused with a
  `CheckpointError` naming the file, before any of it runs. It also refuses storage
  entries whose file lies outside the checkpoint directory (`../x`, absolute paths)
  and transform descriptors (we never write any).
- non-tensor items (the AdamW param_groups: lr, betas, ...) are torch.save'd bytes inside
  `__<rank>_0.distcp`, which `DefaultLoadPlanner.load_bytes` reads with
  torch.load with weights_only off. `SafeLoadPlanner` reads them with
  `weights_only=True` (tensors already are).

Our own per-rank state (RNG, loader position) is JSON, not a pickle (`olmo2.train.state`).
Residual risk: the restricted unpickler is as safe as the allowlist; the allowed classes
are dataclasses and enums whose construction only stores values. A DCP checkpoint written
by other tools that uses other classes fails to load here with a one-line error.
"""
from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from olmo2.errors import CheckpointError

_ALLOWED = {
    ("torch.distributed.checkpoint.metadata", n) for n in (
        "Metadata", "MetadataIndex", "ChunkStorageMetadata", "BytesStorageMetadata",
        "TensorStorageMetadata", "TensorProperties", "StorageMeta", "_MEM_FORMAT_ENCODING")
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),  # a dict lookup of torch.layout by name
    ("torch", "Size"),
    ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),
    ("pathlib", "WindowsPath"), ("pathlib", "PureWindowsPath"),
    ("collections", "OrderedDict"),
}


class _MetadataUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only the globals DCP metadata needs."""

    def __init__(self, f, path: Path):
        super().__init__(f)
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise CheckpointError(f"{self.path}: refers to {module}.{name}, which DCP metadata never "
                              f"holds; refusing to load it (a planted pickle could run code)")


def read_metadata_file(path: str | os.PathLike) -> Metadata:
    """Unpickle a DCP `.metadata` file with the allowlist; CheckpointError if anything is off."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            md = _MetadataUnpickler(io.BufferedReader(f), path).load()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not found; the checkpoint is incomplete") from None
    except CheckpointError:
        raise
    except Exception as e:  # truncated or garbage pickle: many types
        raise CheckpointError(f"{path}: corrupt DCP metadata ({type(e).__name__}: {e})") from None
    if not isinstance(md, Metadata):
        raise CheckpointError(f"{path}: not DCP metadata (holds a {type(md).__name__})")
    for idx, info in (md.storage_data or {}).items():
        rel = getattr(info, "relative_path", None)
        if (not isinstance(rel, str) or not rel or rel in (".", "..") or "/" in rel or "\\" in rel
                or os.path.isabs(rel)):
            raise CheckpointError(f"{path}: storage entry for {getattr(idx, 'fqn', idx)!r} names file "
                                  f"{rel!r}, outside the checkpoint directory; refusing it")
        if getattr(info, "transform_descriptors", None):
            raise CheckpointError(f"{path}: storage entry for {getattr(idx, 'fqn', idx)!r} uses transforms "
                                  f"{info.transform_descriptors!r}, which olmo2 never writes; refusing it")
    return md


class SafeReader(FileSystemReader):
    """FileSystemReader whose metadata goes through the allowlisted unpickler."""

    def read_metadata(self, *args, **kwargs) -> Metadata:
        md = read_metadata_file(self._get_metadata_path(kwargs.get("rank")))
        if getattr(md, "storage_meta", None) is None:
            md.storage_meta = StorageMeta()
        md.storage_meta.load_id = self.load_id
        return md


class SafeLoadPlanner(DefaultLoadPlanner):
    """DefaultLoadPlanner that unpickles byte items with weights_only=True.

    Mirrors DefaultLoadPlanner.load_bytes (torch 2.13) except for the torch.load flag."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        fqn = read_item.dest_index.fqn
        try:
            obj = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as e:
            raise CheckpointError(f"checkpoint item {fqn!r} is not plain data; refusing to load it "
                                  f"({str(e).splitlines()[0]})") from None
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[fqn], obj)
        else:
            self.state_dict[fqn] = obj


def _first_failure(e: BaseException) -> BaseException:
    """The first per-rank exception inside a CheckpointException (DCP gathers them)."""
    failures = getattr(e, "failures", None) or {}
    for _, pair in sorted(failures.items()):
        if isinstance(pair, tuple) and pair and isinstance(pair[0], BaseException):
            return pair[0]
    return e


def one_line(e: BaseException) -> str:
    """`Type: first line` of the underlying error, for messages that name the checkpoint."""
    e = _first_failure(e)
    first = (str(e).strip().splitlines() or [""])[0]
    return first if isinstance(e, CheckpointError) else f"{type(e).__name__}: {first}"


def load(state: dict, ckpt: str | os.PathLike, no_dist: bool = False) -> None:
    """dcp.load through SafeReader/SafeLoadPlanner; any failure becomes one CheckpointError.

    DCP wraps failures in CheckpointException, a BaseException that `except Exception`
    misses; it is caught here and reported as `<ckpt>: cannot load (...)`."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    ckpt = Path(ckpt)
    if not (ckpt / ".metadata").exists():
        raise CheckpointError(f"{ckpt}: no .metadata; not a complete training checkpoint")
    # Checked here first: inside dcp.load a failing read_metadata is logged with a traceback
    # and retried from per-rank metadata files before the error surfaces.
    read_metadata_file(ckpt / ".metadata")
    try:
        dcp.load(state, storage_reader=SafeReader(ckpt), planner=SafeLoadPlanner(), no_dist=no_dist)
    except (Exception, CheckpointException) as e:  # noqa: BLE001 - DCP raises many types
        inner = _first_failure(e)
        if isinstance(inner, CheckpointError) and str(inner).startswith(str(ckpt)):
            raise CheckpointError(str(inner)) from e
        raise CheckpointError(f"{ckpt}: cannot load model/optimizer state ({one_line(e)})") from e
