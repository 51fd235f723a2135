"""Hugging Face checkpoint directories in and out.

    load_model(path_or_id, dtype)   config.json + model.safetensors (or sharded with
                                    model.safetensors.index.json), fp32/bf16/fp16
    save_model(model, out_dir)      the same format + generation_config.json + tokenizer
                                    files, written to a temp dir and renamed into place

Loading is lazy and memory-mapped: the model is built on the `meta` device (no storage),
then each tensor is read from the mmapped safetensors file, cast if needed, and *assigned*
as the parameter. Peak memory is therefore one model plus one tensor, never two models —
a 1B fp32 checkpoint (5.9 GB) loads in about 6 GB of RSS. An inference load (`quant`
given) then copies the weights a decode streams into huge pages, releasing the mapped
pages block by block as it goes (olmo2/infer/hugepages.py), so its RSS stays the same.

Every way a checkpoint can be wrong (missing dir, no config, unknown model_type, truncated
or corrupt safetensors, missing/unexpected/mis-shaped tensors) raises `CheckpointError`
with one line that names the file and the tensor.

Hub ids (`allenai/OLMo-2-0425-1B`) go through `huggingface_hub.snapshot_download` when the
argument is not a local path; offline that fails with a one-line explanation.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
from pathlib import Path

import torch

from olmo2.config import ModelConfig
from olmo2.errors import CheckpointError
from olmo2.fsio import atomic_dir
from olmo2.memory import check_model_memory
from olmo2.model import Olmo2

SAFE_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model"]


def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise CheckpointError(f"unknown dtype {dtype!r}; use one of float32, bfloat16, float16") from None


def resolve(path_or_id: str | os.PathLike) -> Path:
    """A local directory for `path_or_id`: the path itself, or a hub snapshot."""
    p = Path(path_or_id).expanduser()
    if p.exists():
        if not p.is_dir():
            raise CheckpointError(f"{p}: is a file; pass the checkpoint directory that holds config.json")
        return p
    s = str(path_or_id)
    looks_like_hub_id = s.count("/") == 1 and not s.startswith((".", "/", "~")) and not s.endswith("/")
    first = Path(s.split("/", 1)[0])
    if not looks_like_hub_id or first.is_dir():
        # `runs/typo` where runs/ exists is a mistyped local path, not a hub repo.
        raise CheckpointError(f"{p}: no such directory (pass an HF checkpoint directory or a hub id like allenai/OLMo-2-0425-1B)")
    return _hub_snapshot(s)


def _hub_snapshot(repo_id: str) -> Path:
    """A local snapshot of a hub repo, or one line saying why there is none (and that the
    argument was not a local path either): offline, no such repo, network down, bad id."""
    neither = f"{repo_id}: no such local directory"
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
    except Exception as e:  # network, auth, offline mode, unknown repo: all one line
        name = type(e).__name__
        if name in ("RepositoryNotFoundError", "GatedRepoError"):
            why = "nor a repository on the Hugging Face hub you can access (check the path or the id; gated repos need HF_TOKEN)"
        elif name in ("HFValidationError",):
            why = "nor a valid hub id; check the path"
        elif os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on") or name == "OfflineModeIsEnabled":
            why = ("and, as a hub id, not in the local hub cache while offline (HF_HUB_OFFLINE is set); "
                   "check the path, or download it once online")
        else:
            why = (f"and the hub download of it as a repo id failed ({name}: hub unreachable?); "
                   "check the path, the id and your network, or download it and pass the directory")
        raise CheckpointError(f"{neither} {why}") from None


def _inside(d: Path, name: object) -> Path:
    """d/name if `name` is a plain file name whose file stays inside d; else CheckpointError.

    A symlink may point out of d only into the hub cache's blob store (snapshots/REV/x ->
    ../../blobs/HASH), which is how huggingface_hub lays out every download."""
    where = f"{d / INDEX_NAME}: weight_map entry {name!r}"
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name \
            or os.path.isabs(name):
        raise CheckpointError(f"{where} is not a file name inside the checkpoint directory; refusing it")
    p = d / name
    real, root = Path(os.path.realpath(p)), Path(os.path.realpath(d))
    blobs = root.parent.parent / "blobs" if root.parent.name == "snapshots" else None
    if not (real.is_relative_to(root) or (blobs is not None and real.is_relative_to(blobs))):
        raise CheckpointError(f"{where} is a link to {real}, outside the checkpoint directory; refusing it")
    return p


def _weight_files(d: Path) -> list[Path]:
    if (d / INDEX_NAME).exists():
        try:
            index = json.loads((d / INDEX_NAME).read_text())
            if not isinstance(index, dict) or not isinstance(index.get("weight_map"), dict):
                raise ValueError('expected {"weight_map": {tensor: file, ...}}')
            files = sorted(set(index["weight_map"].values()), key=str)
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError, KeyError, AttributeError, TypeError) as e:
            raise CheckpointError(f"{d / INDEX_NAME}: malformed index ({e}); re-save the checkpoint") from None
        files = [_inside(d, f).name for f in files]
        missing = [f for f in files if not (d / f).exists()]
        if missing:
            raise CheckpointError(f"{d / missing[0]}: shard listed in {INDEX_NAME} is missing")
        return [d / f for f in files]
    if (d / SAFE_NAME).exists():
        return [d / SAFE_NAME]
    if list(d.glob("*.bin")):
        raise CheckpointError(f"{d}: only PyTorch .bin weights found; convert to safetensors "
                              "(transformers: model.save_pretrained(dir, safe_serialization=True))")
    raise CheckpointError(f"{d}: no {SAFE_NAME} or {INDEX_NAME}")


_ST_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}


_TRACKED: list | None = None  # SafetensorsFiles opened inside `tracking_mappings()`


@contextlib.contextmanager
def tracking_mappings():
    """Keep the files opened in this block findable by `release_pages` until it ends (the
    loaded tensors reference the mapping, not the SafetensorsFile that knows its address)."""
    global _TRACKED
    outer, _TRACKED = _TRACKED, []
    try:
        yield
    finally:
        _TRACKED = outer


def release_pages(t: torch.Tensor) -> bool:
    """`SafetensorsFile.release` on whichever tracked mapping holds `t` (False if none does)."""
    return any(f.release(t) for f in (_TRACKED or ()))


def page_dropper(*ts: torch.Tensor):
    """A callable unmapping the file pages under tensors `ts` (each a view of the same tracked
    file, e.g. an embedding table kept mapped, olmo2/quant/linear.py `_RowTable`), or None
    if they are not. It keeps the mapping alive, as the views themselves do."""
    for f in _TRACKED or ():
        if all(f.span(t) is not None for t in ts):
            return functools.partial(_release_all, f, ts)
    return None


def _release_all(f: "SafetensorsFile", ts) -> None:
    for t in ts:
        f.release(t)


def is_mapped(t: torch.Tensor) -> bool:
    """Whether `t` is a view of a file tracked by `tracking_mappings()` (its pages are file
    pages: resident only once read, and droppable by the kernel)."""
    return any(f.span(t) is not None for f in (_TRACKED or ()))


class SafetensorsFile:
    """A zero-copy reader of one .safetensors file.

    The format is an 8-byte little-endian header length, a JSON header mapping names to
    dtype/shape/byte offsets, then the raw data. We map the file copy-on-write and hand
    out tensors that *are* views of the mapping (`torch.frombuffer`), so the weights live
    in the page cache once instead of being copied into anonymous memory; writes (e.g.
    fine-tuning) touch private copies of the pages and never the file. The header is
    validated against the file size, so a truncated download is caught here with a clear
    message rather than as a crash mid-load.
    """

    def __init__(self, path: Path):
        import mmap
        import struct
        self.path = path
        size = path.stat().st_size
        bad = f"{path}: corrupt or truncated safetensors file"
        if size < 8:
            raise CheckpointError(f"{bad} ({size} bytes); re-download or re-save it")
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8 or n > 100 * 1024**2:
                raise CheckpointError(f"{bad} (header length {n} exceeds the file); re-download or re-save it")
            try:
                header = json.loads(f.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise CheckpointError(f"{bad} (header is not JSON); re-download or re-save it") from None
            self.mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size > 8 + n else None
        if self.mm is not None:
            import ctypes
            view = ctypes.c_char.from_buffer(self.mm)  # the mapping's address, for release_pages
            self.addr = ctypes.addressof(view)
            del view  # an exported buffer would keep the mapping from ever closing
            if _TRACKED is not None:
                _TRACKED.append(self)
        if not isinstance(header, dict):
            raise CheckpointError(f"{bad} (header is not a JSON object); re-download or re-save it")
        header.pop("__metadata__", None)
        self.base, self.entries = 8 + n, {}
        for name, e in header.items():
            try:
                dtype = _ST_DTYPES[e["dtype"]]
                shape = [int(x) for x in e["shape"]]
                begin, end = (int(x) for x in e["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(f"{bad} (bad header entry for {name!r}); re-download or re-save it") from None
            numel = 1
            for x in shape:
                numel *= x
            if end - begin != numel * dtype.itemsize or begin < 0 or self.base + end > size:
                raise CheckpointError(f"{bad} (tensor {name!r} lies outside the file or has the wrong size; "
                                      f"file is {size} bytes); re-download or re-save it")
            self.entries[name] = (dtype, torch.Size(shape), begin, end)

    def keys(self):
        return self.entries.keys()

    def release(self, t: torch.Tensor) -> bool:
        """Drop the pages under tensor `t` (a view of this mapping) from the process's memory.

        For loads that convert weights as they go (quantizing on the fly): once a tensor's
        converted copy exists, its mapped pages only inflate the resident set (~6 GB for the
        fp32 1B). MADV_DONTNEED on this private, never-written mapping discards them; a later
        read would fault them in again from the file, so nothing is lost. False if `t` is
        not inside this mapping (then nothing is done: on anonymous memory DONTNEED would
        zero live data)."""
        import mmap
        span = self.span(t)
        if span is None or not hasattr(mmap, "MADV_DONTNEED"):
            return False
        lo, hi = span
        page = mmap.PAGESIZE
        lo, hi = -(-lo // page) * page, hi // page * page  # whole pages inside the tensor only
        if hi > lo:
            self.mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
        return True

    def span(self, t: torch.Tensor) -> tuple[int, int] | None:
        """(first, end) byte offsets of contiguous `t` inside this mapping, or None."""
        if self.mm is None or self.mm.closed or t.numel() == 0 or not t.is_contiguous():
            return None
        lo = t.data_ptr() - self.addr
        hi = lo + t.numel() * t.element_size()
        return (lo, hi) if 0 <= lo and hi <= len(self.mm) else None

    def get(self, name: str) -> torch.Tensor:
        dtype, shape, begin, end = self.entries[name]
        if begin == end:
            return torch.empty(shape, dtype=dtype)
        t = torch.frombuffer(self.mm, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=self.base + begin)
        return t.view(shape)


def checked_tensors(d: Path, shapes: dict[str, torch.Size], unexpected: str, implied_by: str):
    """Yield (file, name, stored dtype, SafetensorsFile) for every tensor in `d`'s safetensors
    files, after the checks every loader shares: a name in `shapes` (else "unexpected tensor
    … (`unexpected`)"), in one file only, of the expected shape (else "… `implied_by` SHAPE");
    once all are read, that none of `shapes` is missing. Exhaust it: the last check runs at the end."""
    seen: dict[str, Path] = {}
    for f in _weight_files(d):
        st = SafetensorsFile(f)
        for name in st.keys():
            if name not in shapes:
                raise CheckpointError(f"{f}: unexpected tensor {name!r} ({unexpected})")
            if name in seen:
                raise CheckpointError(f"{f}: tensor {name!r} also in {seen[name]}")
            t_dtype, t_shape = st.entries[name][:2]
            if t_shape != shapes[name]:
                raise CheckpointError(f"{f}: tensor {name!r} has shape {tuple(t_shape)}, "
                                      f"{implied_by} {tuple(shapes[name])}")
            seen[name] = f
            yield f, name, t_dtype, st
    missing = sorted(set(shapes) - set(seen))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{d}: missing tensor {missing[0]!r}{more}; the checkpoint is incomplete")


def load_state_dict_lazy(d: Path, expected: dict[str, torch.Size], dtype: torch.dtype | None):
    """Yield (name, tensor) from the safetensors files in `d`, checking names and shapes."""
    for f, name, t_dtype, st in checked_tensors(d, expected, "not an OLMo 2 parameter", "config.json implies"):
        if not t_dtype.is_floating_point:
            raise CheckpointError(f"{f}: tensor {name!r} has dtype {t_dtype}; expected floating point")
        t = st.get(name)
        yield name, (t if dtype is None or t.dtype == dtype else t.to(dtype))


def load_model(path_or_id: str | os.PathLike, dtype: torch.dtype | str = torch.float32,
               device: str | torch.device = "cpu", quant: str | None = None) -> Olmo2:
    """Load an OLMo 2 HF checkpoint as `Olmo2` in `dtype` (None keeps the stored dtype).

    `quant` (none | bf16 | int8 | int4) quantizes the weights on the fly; a directory
    written by `olmo2 quantize` loads quantized whatever `quant` says (olmo2/quant/io.py).
    `quant="none"` (what inference verbs pass from `--quant`) also lets fp32 decode run
    olmo2's own GEMV where kernels.choose("fp32", "decode") picks it (AVX2-only CPUs;
    olmo2/quant/f32.py); None, the default of training and conversion, loads plain modules.
    Any `quant` also moves the weights a decode streams into huge pages (olmo2/infer/hugepages.py)."""
    dtype = parse_dtype(dtype)
    d = resolve(path_or_id)
    from olmo2.quant.io import is_quantized, load_for_inference
    if quant not in (None, "none") or is_quantized(d):
        if torch.device(device).type != "cpu":
            raise CheckpointError(f"{d}: quantized weights run on the CPU only; load with device='cpu'")
        model = load_for_inference(d, dtype, quant)
        if quant is not None:
            _into_huge_pages(model, None)
        return model
    if quant != "none" or torch.device(device).type != "cpu":
        return load_float(d, dtype, device)
    from olmo2.quant.f32 import use_native_f32
    with tracking_mappings():  # release_pages finds the checkpoint's mapping
        model = load_float(d, dtype, device)
        use_native_f32(model)  # no-op unless this CPU's fp32 decode runs the native kernel
        _into_huge_pages(model, release_pages)  # and the mapped pages each copy replaces are dropped
    return model


def _into_huge_pages(model: Olmo2, release) -> None:
    """An inference load's last step: the weights a decode streams move into huge pages
    (olmo2/infer/hugepages.py; 1.0-1.4x decode on this host), the arena kept as
    `model.hugepages` (None where it does not apply: `hugepages.why_not` says why)."""
    from olmo2.infer.hugepages import into_huge_pages
    model.hugepages = into_huge_pages(model, release, owned=True)  # just loaded: no one else holds them


def load_float(d: Path, dtype: torch.dtype | None, device: str | torch.device = "cpu") -> Olmo2:
    """Load a float (unquantized) checkpoint directory; `load_model` without the dispatch."""
    cfg = ModelConfig.from_json_file(d / "config.json")
    check_model_memory(cfg, (dtype or torch.float32).itemsize, str(d / "config.json"))
    with torch.device("meta"):
        model = Olmo2(cfg)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    params = dict(load_state_dict_lazy(d, expected, dtype))
    # assign=True makes the loaded (mmapped, possibly cast) tensors the parameters
    # themselves: no second copy of the weights is ever allocated.
    model.load_state_dict(params, strict=True, assign=True)
    del params
    model = model.to(device)  # the RoPE tables were built on the CPU (see Rotary._build)
    model.eval()
    return model


def _generation_config(cfg: ModelConfig) -> dict:
    return {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
            "pad_token_id": cfg.pad_token_id, "do_sample": False}


def plan_shards(sizes: list[tuple[str, int]], max_shard_bytes: int) -> list[list[str]]:
    """Group tensor names, in order, into shards of at most `max_shard_bytes` (HF-style)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, nbytes in sizes:
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def write_weights(out_dir: Path, plan: list[list[str]], tensor_of) -> None:
    """Write the planned shards (`model.safetensors`, or numbered files plus the index).

    `tensor_of(name)` is called one shard at a time, so only one shard's tensors are ever
    materialised: save_model casts lazily, soup averages lazily.
    """
    from safetensors.torch import save_file
    weight_map, total = {}, 0
    for i, names in enumerate(plan):
        fname = SAFE_NAME if len(plan) == 1 else f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors"
        shard = {n: tensor_of(n) for n in names}
        save_file(shard, str(out_dir / fname), metadata={"format": "pt"})
        for n, t in shard.items():
            weight_map[n] = fname
            total += t.numel() * t.element_size()
        del shard
    if len(plan) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")


def save_model(model: Olmo2, out_dir: str | os.PathLike, tokenizer=None, dtype: torch.dtype | str | None = None,
               max_shard_bytes: int = 5 * 1024**3, description: str | None = None,
               training: dict | None = None) -> Path:
    """Write an HF directory (config, safetensors, generation config, tokenizer, model card
    with the risk notice) atomically. `description`/`training` go into the card."""
    from olmo2.card import model_card
    dtype = parse_dtype(dtype)
    out = Path(out_dir)
    sd = model.state_dict()
    stored = dtype or next(iter(sd.values())).dtype

    def tensor_of(name: str) -> torch.Tensor:
        v = sd[name].detach()
        return (v if dtype is None else v.to(dtype)).contiguous().cpu()

    plan = plan_shards([(k, v.numel() * (dtype or v.dtype).itemsize) for k, v in sd.items()], max_shard_bytes)
    with atomic_dir(out) as tmp:
        hf = model.config.to_hf_dict()
        hf["torch_dtype"] = hf["dtype"] = str(stored).replace("torch.", "")
        (tmp / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps(_generation_config(model.config), indent=2) + "\n")
        write_weights(tmp, plan, tensor_of)
        if tokenizer is not None:
            tokenizer.save(tmp)
        (tmp / "README.md").write_text(model_card(model.config, description, training))
    return out
