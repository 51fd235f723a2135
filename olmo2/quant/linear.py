"""Quantized drop-ins for `nn.Linear` and `nn.Embedding` (the module swap's targets).

    Int8Linear   qweight int8 [N, K], scales bf16 [N]                     (per output channel)
    Int4Linear   qweight uint8 [N, K/2], scales/zeros bf16 [N, K/G]      (group-wise, asymmetric)
    BF16Linear   weight_bf16 [N, K]                                       (a plain bf16 weight)
    Int8Embedding qweight int8 [V, D], scales bf16 [V]                    (rows dequantized on gather)
    BF16Embedding weight bf16 [V, D]

Each takes and returns the caller's dtype (the model's norms, RoPE and attention stay in
the compute dtype; only weight storage and the matmul change). The buffers are the
*canonical* tensors of olmo2/quant/formats.py — what `state_dict()` saves and the
checkpoint stores, independent of CPU. Kernel-specific packed copies (aten's int4 tile
layout, fbgemm's prepacked matrix) are derived from them on first use per kernel and kept
in `_packed`, which is not state: saving a model never writes a CPU-specific layout.
`prepare()` builds them ahead of time (load does it, so the first token is not slow and
`torch.compile` sees no packing).

Each forward picks its kernel per call from the row count (decode vs prefill, see
olmo2/quant/kernels.py). Footgun: the aten kernels want bf16 activations, so those paths
round x to bf16 — the error this adds is bounded in tests/test_quant_linear.py.
"""
from __future__ import annotations

import threading
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from olmo2.quant import formats, native
from olmo2.quant.kernels import choose, cpu_kind, phase_of

_PACK_LOCK = threading.Lock()  # serve decodes on a worker thread; pack once


def _assume_constant_result(fn):
    """`torch.compiler.assume_constant_result(fn)` without its `import torch._dynamo`: that
    import alone added 0.14 GiB to the resident set of every process that loads a model
    (this module is on every load path), 22% of the int4 1B's weights; the decorator only
    sets this attribute, which Dynamo reads when it traces (tests/test_quant_linear.py
    checks that torch still spells it so)."""
    fn._dynamo_marked_constant = True
    return fn


@_assume_constant_result
def _kernel_for(fmt: str, phase: str, native_fits: bool) -> str:
    """`choose`, seen by torch.compile as a constant: its cached CPU probe and environment
    read would otherwise break the compiled decode step into a graph per linear (and
    recompile them as strides change), which made compiled quantized steps slower than eager."""
    return choose(fmt, phase, native_fits)


class _Quantized(nn.Module):
    """Shared plumbing: kernel dispatch and the per-kernel packed-weight cache."""
    fmt = ""

    def __init__(self):
        super().__init__()
        self._packed: dict[str, object] = {}

    def _packed_for(self, kernel: str):
        p = self._packed.get(kernel)
        if p is None:
            with _PACK_LOCK:
                p = self._packed.get(kernel)
                if p is None:
                    p = self._packed[kernel] = self._pack(kernel)
        return p

    def _pack(self, kernel: str):  # pragma: no cover - overridden where a kernel packs
        return None

    def runs(self, kernel: str) -> bool:
        """Whether `kernel` takes this module's shape (all do but aten int4: N % 16 == 0)."""
        return True

    def native_fits(self) -> bool:
        """Whether olmo2's native kernel takes this module's shape (K a multiple of its block)."""
        return False

    def prepare(self) -> None:
        """Build the packed weights of the kernels this CPU will use (decode and prefill)."""
        for phase in ("decode", "prefill"):
            k = choose(self.fmt, phase, self.native_fits())
            if k in self.PACKS and self.runs(k):
                self._packed_for(k)

    def _load_from_state_dict(self, *args, **kwargs):
        self._packed.clear()  # new canonical weights: the packed copies are stale
        super()._load_from_state_dict(*args, **kwargs)

    PACKS: tuple[str, ...] = ()


class _QuantLinear(_Quantized):
    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.compute_dtype = torch.float32  # set by the swap: the dtype the float Linear had

    @property
    def weight(self) -> torch.Tensor:
        """An empty tensor in the compute dtype, on the weights' device. The inference code
        reads `model.lm_head.weight.dtype/.device` to shape its KV caches (olmo2/infer,
        serve, eval); the quantized weight itself is in the buffers. Anything that tries to
        multiply by it fails on the shape instead of computing with a wrong weight."""
        return torch.empty(0, self.in_features, dtype=self.compute_dtype, device=self.scales_device())

    def scales_device(self) -> torch.device:
        return next(self.buffers()).device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A decode step calls this 113 times per token of the 1B, so the Python here is
        # kept lean: the native fit is a constant of the shape (cached on first call), and
        # the output cast and reshape are skipped / a view when they are no-ops.
        x2 = x.reshape(-1, self.in_features)
        fits = self.__dict__.get("_fits")
        if fits is None:
            fits = self.__dict__["_fits"] = self.native_fits()
        kernel = _kernel_for(self.fmt, phase_of(x2.shape[0]), fits)
        if not self.runs(kernel):
            kernel = "reference"
        y = getattr(self, "_mm_" + kernel)(x2)
        if y.dtype != x.dtype:
            y = y.to(x.dtype)
        return y.view(x.shape[:-1] + (self.out_features,))

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        raise NotImplementedError

    def decode_binding(self) -> tuple[str, tuple] | None:
        """(entry, weight arguments) of the native kernel a one-row decode call of this module
        runs (`native.bind`: olmo2/infer/fused.py binds it once per generation instead of
        dispatching 113 times a token), or None when its decode takes another kernel."""
        if _kernel_for(self.fmt, "decode", self.native_fits()) != "native" or not self.runs("native"):
            return None
        return self._native_args()

    def _native_args(self) -> tuple[str, tuple] | None:
        return None

    def _mm_reference(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized(x.dtype))

    def native_fits(self) -> bool:
        return native.fits(self.fmt, self.in_features, getattr(self, "group_size", None))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class Int8Linear(_QuantLinear):
    fmt = "int8"
    PACKS = ("fbgemm",)

    def __init__(self, in_features: int, out_features: int, device=None):
        super().__init__(in_features, out_features)
        self.register_buffer("qweight", torch.empty(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.empty(out_features, dtype=torch.bfloat16, device=device))

    @classmethod
    def from_float(cls, w: torch.Tensor) -> "Int8Linear":
        m = cls(w.shape[1], w.shape[0])
        m.qweight, m.scales = formats.quantize_int8(w)
        return m

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return formats.dequantize_int8(self.qweight, self.scales, dtype)

    def _mm_aten(self, x: torch.Tensor) -> torch.Tensor:
        return torch._weight_int8pack_mm(x.to(torch.bfloat16).contiguous(), self.qweight, self.scales)

    def _mm_native(self, x: torch.Tensor) -> torch.Tensor:
        return native.int8_mm(x, self.qweight, self.scales)

    def _native_args(self):
        return "int8", (self.qweight, self.scales)

    def _pack(self, kernel: str):
        if kernel == "fbgemm":
            zp = torch.zeros(self.out_features, dtype=torch.int64)
            with warnings.catch_warnings():  # "quantized tensors are deprecated": known, see kernels.py
                warnings.simplefilter("ignore", UserWarning)
                qw = torch._make_per_channel_quantized_tensor(self.qweight, self.scales.double(), zp, 0)
                return torch.ops.quantized.linear_prepack(qw, None)
        return None

    def _mm_fbgemm(self, x: torch.Tensor) -> torch.Tensor:
        # reduce_range: without VNNI fbgemm multiplies with vpmaddubsw, whose int16 pair sums
        # saturate for 8-bit activations; 7-bit activations keep them exact.
        return torch.ops.quantized.linear_dynamic(x.float().contiguous(), self._packed_for("fbgemm"),
                                                  not cpu_kind().vnni)


class Int4Linear(_QuantLinear):
    fmt = "int4"
    PACKS = ("aten",)

    def __init__(self, in_features: int, out_features: int, group_size: int, device=None):
        super().__init__(in_features, out_features)
        if not formats.int4_group_fits(in_features, group_size):
            raise ValueError(f"int4 group size {group_size} does not divide in_features {in_features}")
        self.group_size = group_size
        ng = in_features // group_size
        self.register_buffer("qweight", torch.empty(out_features, in_features // 2, dtype=torch.uint8, device=device))
        self.register_buffer("scales", torch.empty(out_features, ng, dtype=torch.bfloat16, device=device))
        self.register_buffer("zeros", torch.empty(out_features, ng, dtype=torch.bfloat16, device=device))

    @classmethod
    def from_float(cls, w: torch.Tensor, group_size: int) -> "Int4Linear":
        m = cls(w.shape[1], w.shape[0], group_size)
        m.qweight, m.scales, m.zeros = formats.quantize_int4(w, group_size)
        return m

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return formats.dequantize_int4(self.qweight, self.scales, self.zeros, self.group_size, dtype)

    def runs(self, kernel: str) -> bool:
        # aten's int4 packing tiles 16 output rows at a time.
        return kernel != "aten" or self.out_features % 16 == 0

    def _pack(self, kernel: str):
        if kernel == "aten":
            # innerKTiles is ignored by the CPU packing (it always tiles for its own kernel).
            packed = torch._convert_weight_to_int4pack_for_cpu(formats.int4_codes_int32(self.qweight), 1)
            return packed, formats.int4_scales_and_zeros(self.scales, self.zeros)
        return None

    def _mm_native(self, x: torch.Tensor) -> torch.Tensor:
        return native.int4_mm(x, self.qweight, self.scales, self.zeros, self.group_size)

    def _native_args(self):
        return "int4", (self.qweight, self.scales, self.zeros, self.group_size)

    def _mm_aten(self, x: torch.Tensor) -> torch.Tensor:
        packed, sz = self._packed_for("aten")
        return torch._weight_int4pack_mm_for_cpu(x.to(torch.bfloat16).contiguous(), packed, self.group_size, sz)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", group_size={self.group_size}"


class BF16Linear(_QuantLinear):
    fmt = "bf16"
    PACKS = ("mkldnn",)

    def __init__(self, in_features: int, out_features: int, device=None):
        super().__init__(in_features, out_features)
        # Not named `weight`: that name is the compute-dtype probe (see _QuantLinear.weight).
        self.register_buffer("weight_bf16", torch.empty(out_features, in_features, dtype=torch.bfloat16,
                                                        device=device))
        self._plain_dropped = False
        self._keep_plain = False

    @classmethod
    def from_float(cls, w: torch.Tensor) -> "BF16Linear":
        m = cls(w.shape[1], w.shape[0])
        m.weight_bf16 = w.detach().to(torch.bfloat16).contiguous()
        return m

    def _plain(self) -> torch.Tensor:
        """The [N, K] bf16 weight, rebuilt from oneDNN's copy once the plain one was dropped."""
        return self._packed["mkldnn"].to_dense() if self._plain_dropped else self.weight_bf16

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self._plain().to(dtype)

    def _mm_aten(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(torch.bfloat16), self._plain())

    def _mm_native(self, x: torch.Tensor) -> torch.Tensor:
        return native.bf16_mm(x, self._plain())

    def _native_args(self):
        # the plain weight only while it is held (not rebuilt from oneDNN's copy per bind)
        return None if self._plain_dropped else ("bf16", (self.weight_bf16,))

    def runs(self, kernel: str) -> bool:
        # Compiled models keep plain weights (Inductor's freezing packs its own copy from a
        # plain F.linear; an opaque oneDNN tensor cannot enter its graph).
        return kernel != "mkldnn" or (self.weight_bf16.device.type == "cpu" and not self._keep_plain)

    def _mm_reference(self, x: torch.Tensor) -> torch.Tensor:
        # what a kernel this module cannot run falls back to: the bf16 matmul, not an upcast
        return self._mm_aten(x) if self._keep_plain else super()._mm_reference(x)

    def _pack(self, kernel: str):
        # oneDNN's blocked layout, built once: F.linear reorders the plain weight on every
        # call, which is what held eager bf16 decode to ~60% of the bandwidth limit. The
        # packed copy holds the same values (to_dense() gives them back bit for bit), so the
        # plain one is dropped — two copies would double the bf16 model's memory — and
        # rebuilt only for the rare users of the plain layout (saving, other kernels).
        packed = torch.ops.mkldnn._reorder_linear_weight(self.weight_bf16, 1)
        if not self._keep_plain:
            self.weight_bf16 = self.weight_bf16.new_zeros(1).expand(self.out_features, self.in_features)
            self._plain_dropped = True
        return packed

    def keep_plain(self) -> None:
        """Hold the plain weight from now on: a compiled graph reads it (and packs its own copy)."""
        if self._plain_dropped:
            self.weight_bf16 = self._plain()
            self._plain_dropped = False
        self._packed.pop("mkldnn", None)
        self._keep_plain = True

    def _mm_mkldnn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16), self._packed_for("mkldnn"), None,
                                                  "none", [], "")

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self._plain_dropped:
            destination[prefix + "weight_bf16"] = self._plain()

    def _load_from_state_dict(self, *args, **kwargs):
        if self._plain_dropped:  # a real buffer to load into again (the placeholder is 1 element)
            self.weight_bf16 = torch.empty(self.out_features, self.in_features, dtype=torch.bfloat16,
                                           device=self.weight_bf16.device)
            self._plain_dropped = False
        super()._load_from_state_dict(*args, **kwargs)


class _RowTable(_Quantized):
    """An embedding table in a quantized format, optionally *over a float table's rows*.

    `over_rows(w)` keeps `w` — the checkpoint's float table, a view of its memory-mapped
    file (olmo2/checkpoint.py) — and converts only the rows each lookup gathers. Every
    format here converts each row on its own (bf16 rounding is per element, int8 has one
    scale per row), so the rows come out bit for bit as from the converted whole table.
    Why: the 1B's 100352 x 2048 table is 0.38 GiB in bf16 and 0.19 GiB in int8 of
    anonymous memory that a decode never reads, as much as 30% of the int4 model; mapped,
    and unmapped after each lookup (below), none of it stays resident (measured:
    benchmarks/RESULTS.md, "peak_rss.py").
    The stored buffers are then placeholders of the full shape (one element, expanded);
    `state_dict()` converts the table block by block, so saving writes the same format.

    `drop_pages(fn)`: `fn()` is called after every eager lookup (every `DROP_EVERY` rows of
    a long one) to unmap the table's file pages (olmo2/checkpoint.py `page_dropper`: MADV_DONTNEED over the table, a no-op on
    pages not mapped). Without it a lookup does not map one row but the page cache's whole
    folio around it: 181 MiB of RssFile for 264 random int8 rows of a freshly written
    checkpoint (0.7 MiB a row), 24 MiB for fp32 rows of an older one (small folios); with
    it, 1.7 MiB, at no measurable cost (18 vs 15 µs a row). Footgun: a compiled step skips
    it (a Python-level madvise would split the graph), so a `--compile` decode leaves the
    rows it looks up resident, at most the table; its prefill, which runs eagerly, does not."""

    BUFFERS: tuple[tuple[str, torch.dtype, bool], ...] = ()  # (name, dtype, per row only)

    def __init__(self, num_embeddings: int, embedding_dim: int, out_dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.out_dtype = num_embeddings, embedding_dim, out_dtype
        for name, dtype, per_row in self.BUFFERS:
            shape = (num_embeddings,) if per_row else (num_embeddings, embedding_dim)
            self.register_buffer(name, torch.empty(shape, dtype=dtype, device=device))
        self.register_buffer("_rows", None, persistent=False)
        self._drop_pages = None  # see the class docstring; not state

    def drop_pages(self, fn) -> None:
        """Call `fn()` after each eager lookup (or never again, `fn=None`)."""
        self._drop_pages = fn

    @classmethod
    def over_rows(cls, w: torch.Tensor) -> "_RowTable":
        """A table converting the rows of float `w` [V, D] on lookup (see the class docstring)."""
        m = cls(w.shape[0], w.shape[1], out_dtype=w.dtype, device="meta")
        for name, dtype, per_row in cls.BUFFERS:
            shape = (w.shape[0],) if per_row else tuple(w.shape)
            setattr(m, name, torch.zeros(1, dtype=dtype, device=w.device).expand(shape))
        m._rows = w.detach()
        return m

    def _convert(self, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Float rows [n, D] → this format's buffers for them, in BUFFERS order."""
        raise NotImplementedError

    def _lookup(self, bufs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Gathered buffers → rows in the compute dtype."""
        raise NotImplementedError

    DROP_EVERY = 16  # rows gathered between two page drops: bounds a prefill's transient

    def _gather(self, flat: torch.Tensor) -> torch.Tensor:
        """Rows `flat` [n] → [n, D] in the compute dtype."""
        if self._rows is None:
            return self._lookup(tuple(getattr(self, n)[flat] for n, _, _ in self.BUFFERS))
        return self._lookup(self._convert(self._rows[flat]))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        drop = None if torch.compiler.is_compiling() else self._drop_pages
        if drop is None or flat.numel() == 0:
            out = self._gather(flat)
        else:  # the rows are copied out, then their pages unmapped, a few rows at a time:
            # 128 prompt rows at once mapped 0.13 GiB of folios before the drop (int4 1B)
            parts = []
            for a in range(0, flat.numel(), self.DROP_EVERY):
                parts.append(self._gather(flat[a:a + self.DROP_EVERY]))
                drop()
            out = parts[0] if len(parts) == 1 else torch.cat(parts)
        return out.reshape(*ids.shape, self.embedding_dim)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self._rows is not None:  # the placeholders out, the converted table in
            rows = max(1, (1 << 22) // max(1, self.embedding_dim))  # 16 MiB fp32 blocks: small temporaries
            full = [torch.empty(getattr(self, n).shape, dtype=dt) for n, dt, _ in self.BUFFERS]
            for r in range(0, self.num_embeddings, rows):
                for dst, part in zip(full, self._convert(self._rows[r:r + rows])):
                    dst[r:r + part.shape[0]] = part
            for (n, _, _), t in zip(self.BUFFERS, full):
                destination[prefix + n] = t

    def _load_from_state_dict(self, *args, **kwargs):
        if self._rows is not None:  # real buffers to load into again
            for name, dtype, _ in self.BUFFERS:
                setattr(self, name, torch.empty(getattr(self, name).shape, dtype=dtype))
            self._rows = None
        self._drop_pages = None  # the loaded buffers are not the mapped file's
        super()._load_from_state_dict(*args, **kwargs)

    def prepare(self) -> None:
        pass


class Int8Embedding(_RowTable):
    """Rows stored int8 with a bf16 scale each; a lookup dequantizes only the rows it gathers.

    Why int8 for the embedding in every mode: a token reads one row, so its storage costs
    nothing per decoded token, only memory (the 1B's 100k x 2048 table is 0.82 GB fp32,
    0.21 GB int8); int8 keeps it at a per-row error of half a step (the report measures it)."""
    fmt = "int8"
    BUFFERS = (("qweight", torch.int8, False), ("scales", torch.bfloat16, True))

    @classmethod
    def from_float(cls, w: torch.Tensor) -> "Int8Embedding":
        m = cls(w.shape[0], w.shape[1], out_dtype=w.dtype)
        m.qweight, m.scales = formats.quantize_int8(w)
        return m

    def _convert(self, rows):
        return formats.quantize_int8(rows)

    def _lookup(self, bufs):
        q, s = bufs
        return (q.float() * s.float()[..., None]).to(self.out_dtype)


class BF16Embedding(_RowTable):
    """A bf16 table whose lookups are returned in the compute dtype (the residual stream
    must not silently become bf16)."""
    fmt = "bf16"
    BUFFERS = (("weight", torch.bfloat16, False),)

    @classmethod
    def from_float(cls, w: torch.Tensor) -> "BF16Embedding":
        m = cls(w.shape[0], w.shape[1], out_dtype=w.dtype)
        m.weight = w.detach().to(torch.bfloat16).contiguous()
        return m

    def _convert(self, rows):
        return (rows.to(torch.bfloat16),)

    def _lookup(self, bufs):
        return bufs[0].to(self.out_dtype)
