"""An OLMo 2 HF checkpoint → one GGUF file of llama.cpp's `olmo2` architecture, streamed.

    export_gguf("runs/replicate-tiny/soup", Path("soup.q8_0.gguf"), GGUFType.Q8_0)

What llama.cpp's `olmo2` loader reads (src/models/olmo2.cpp there) and where it comes from:

- hyper-parameters `olmo2.*`: context_length (max_position_embeddings), embedding_length,
  feed_forward_length, block_count, attention.head_count / head_count_kv, rope.freq_base
  (500000 for the 1B), attention.layer_norm_rms_eps (1e-6; one eps for every norm, as in
  OLMo 2), rope.dimension_count = head_dim. llama.cpp applies RoPE as "NEOX" (rotate
  halves) for olmo2, which is our (and HF's) layout, so q/k rows are written unpermuted
  (the LLaMA converter's permutation is for interleaved RoPE and would be wrong here).
- tensors, named by the `gguf` package's own table (`gguf.TENSOR_NAMES`): token_embd,
  output_norm, output (untied LM head), and per block attn_q/k/v/output, attn_q_norm and
  attn_k_norm over the FULL q/k width (n_heads*head_dim, not per head: OLMo 2's QK-norm),
  post_attention_norm, post_ffw_norm (OLMo 2 normalises sublayer outputs; there is no
  attn_norm/ffn_norm), ffn_gate/up/down. PyTorch's [out, in] layout is GGUF's [in, out]
  (GGUF lists dims innermost first), so arrays are written as they are.
- types: 1-D tensors (norms) stay F32 in every file type, as llama.cpp's converter does.
  q8_0/q4_0 use `gguf.quants` (numpy ports of ggml's reference quantizers). In q4_0 files the
  LM head is Q8_0: llama.cpp's own Q4_0 recipe keeps `output.weight` at higher precision
  (Q6_K there; gguf has no Q6_K quantizer), since 4-bit logits cost the most quality.
  A row length that is not a multiple of the block (32) falls back to F16, as there.

Memory: weights are memory-mapped (olmo2/checkpoint.py) and converted one tensor at a
time, quantized in row chunks, so peak RSS is about one converted tensor (the 1B's 100k-row
embedding: 0.8 GB in f32), never the model twice. The file is written under a temp name
beside the target and renamed when complete (a killed export leaves no half GGUF).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from olmo2.config import ModelConfig
from olmo2.errors import CheckpointError
from olmo2.fsio import atomic_path
from olmo2.progress import Progress

ARCH = "olmo2"
ROW_CHUNK_BYTES = 64 << 20  # float32 bytes converted at once while quantizing


class GGUFType(str, enum.Enum):
    """`--type`: the precision of the 2-D weights (norms are always F32)."""

    F32 = "f32"
    F16 = "f16"
    BF16 = "bf16"
    Q8_0 = "q8_0"
    Q4_0 = "q4_0"


@dataclass(frozen=True)
class TensorPlan:
    """One tensor of the output: where it comes from and how it is stored."""

    hf_name: str
    gguf_name: str
    shape: tuple[int, ...]
    qtype: object  # gguf.GGMLQuantizationType


def _ggml(t: GGUFType):
    """(file type, 2-D tensor type) for `--type t`."""
    import gguf
    Q, F = gguf.GGMLQuantizationType, gguf.LlamaFileType
    return {GGUFType.F32: (F.ALL_F32, Q.F32), GGUFType.F16: (F.MOSTLY_F16, Q.F16),
            GGUFType.BF16: (F.MOSTLY_BF16, Q.BF16), GGUFType.Q8_0: (F.MOSTLY_Q8_0, Q.Q8_0),
            GGUFType.Q4_0: (F.MOSTLY_Q4_0, Q.Q4_0)}[t]


def tensor_names(cfg: ModelConfig) -> list[tuple[str, str]]:
    """(HF name, GGUF name) of every tensor, in file order."""
    import gguf
    T, N = gguf.MODEL_TENSOR, gguf.TENSOR_NAMES
    out = [("model.embed_tokens.weight", N[T.TOKEN_EMBD] + ".weight")]
    per_block = [("self_attn.q_proj", T.ATTN_Q), ("self_attn.k_proj", T.ATTN_K), ("self_attn.v_proj", T.ATTN_V),
                 ("self_attn.o_proj", T.ATTN_OUT), ("self_attn.q_norm", T.ATTN_Q_NORM),
                 ("self_attn.k_norm", T.ATTN_K_NORM), ("post_attention_layernorm", T.ATTN_POST_NORM),
                 ("mlp.gate_proj", T.FFN_GATE), ("mlp.up_proj", T.FFN_UP), ("mlp.down_proj", T.FFN_DOWN),
                 ("post_feedforward_layernorm", T.FFN_POST_NORM)]
    for i in range(cfg.n_layers):
        out += [(f"model.layers.{i}.{hf}.weight", N[t].format(bid=i) + ".weight") for hf, t in per_block]
    out += [("model.norm.weight", N[T.OUTPUT_NORM] + ".weight"), ("lm_head.weight", N[T.OUTPUT] + ".weight")]
    assert all(t in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.OLMO2] for _, t in per_block)
    return out


def plan_tensors(cfg: ModelConfig, shapes: dict[str, tuple[int, ...]], t: GGUFType) -> list[TensorPlan]:
    """Each tensor's GGUF name and storage type under `--type t` (module docstring)."""
    import gguf
    Q = gguf.GGMLQuantizationType
    _, weight_type = _ggml(t)
    plans = []
    for hf, name in tensor_names(cfg):
        shape = tuple(shapes[hf])
        q = weight_type if len(shape) > 1 else Q.F32
        if q == Q.Q4_0 and hf == "lm_head.weight":
            q = Q.Q8_0
        if q in (Q.Q8_0, Q.Q4_0) and shape[-1] % gguf.GGML_QUANT_SIZES[q][0]:
            q = Q.F16
        plans.append(TensorPlan(hf, name, shape, q))
    return plans


def add_hparams(writer, cfg: ModelConfig, t: GGUFType, name: str) -> None:
    """The `general.*` and `olmo2.*` keys llama.cpp's olmo2 loader reads."""
    import gguf
    writer.add_name(name)
    writer.add_file_type(_ggml(t)[0])
    if t in (GGUFType.Q8_0, GGUFType.Q4_0):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(cfg.max_seq_len)
    writer.add_embedding_length(cfg.d_model)
    writer.add_feed_forward_length(cfg.d_ff)
    writer.add_block_count(cfg.n_layers)
    writer.add_head_count(cfg.n_heads)
    writer.add_head_count_kv(cfg.n_kv_heads)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_rope_dimension_count(cfg.head_dim)
    if cfg.head_dim != cfg.d_model // cfg.n_heads:
        writer.add_key_length(cfg.head_dim)
        writer.add_value_length(cfg.head_dim)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_vocab_size(cfg.vocab_size)


def _stored_shape(p: TensorPlan) -> tuple[int, ...]:
    """The array shape GGUF stores: the tensor's for F32/F16, its bytes for the others."""
    import gguf
    Q = gguf.GGMLQuantizationType
    if p.qtype in (Q.F32, Q.F16):
        return p.shape
    return tuple(gguf.quant_shape_to_byte_shape(p.shape, p.qtype))


def _np_dtype(p: TensorPlan):
    import gguf
    Q = gguf.GGMLQuantizationType
    return {Q.F32: np.float32, Q.F16: np.float16}.get(p.qtype, np.uint8)


def _nbytes(p: TensorPlan) -> int:
    return int(np.prod(_stored_shape(p))) * np.dtype(_np_dtype(p)).itemsize


def convert_tensor(src: torch.Tensor, p: TensorPlan) -> np.ndarray:
    """`src` (any float dtype, possibly a view of the mapped file) as the array GGUF stores.

    F32 of an F32 source and BF16 of a BF16 source are zero-copy views; quantized types are
    converted in row chunks into one preallocated buffer, so only that buffer is new memory."""
    import gguf
    Q = gguf.GGMLQuantizationType
    src = src.detach()
    if p.qtype == Q.F32:
        return src.to(torch.float32).contiguous().numpy()
    if p.qtype == Q.F16:
        return src.to(torch.float16).contiguous().numpy()
    if p.qtype == Q.BF16:
        # torch rounds to nearest even, as ggml_compute_fp32_to_bf16 does.
        return src.to(torch.bfloat16).contiguous().view(torch.int16).numpy().view(np.uint8)
    rows = src.reshape(-1, src.shape[-1])
    out = np.empty(gguf.quant_shape_to_byte_shape(tuple(rows.shape), p.qtype), dtype=np.uint8)
    step = max(1, ROW_CHUNK_BYTES // (4 * rows.shape[1]))
    for r in range(0, rows.shape[0], step):
        out[r:r + step] = gguf.quants.quantize(rows[r:r + step].to(torch.float32).numpy(), p.qtype)
    return out.reshape(gguf.quant_shape_to_byte_shape(p.shape, p.qtype))


def export_gguf(model_dir: Path, out: Path, t: GGUFType, tokenizer=None, name: str | None = None,
                progress: bool = True) -> list[TensorPlan]:
    """Write `model_dir` (an OLMo 2 HF checkpoint) to the GGUF file `out`; returns the plan."""
    import gguf

    from olmo2.checkpoint import load_state_dict_lazy
    from olmo2.convert.gguf_vocab import add_vocab, gguf_vocab
    from olmo2.model import Olmo2
    from olmo2.tokenizer import Tokenizer

    cfg = ModelConfig.from_json_file(model_dir / "config.json")
    tok = tokenizer or Tokenizer.from_pretrained(model_dir)
    vocab = gguf_vocab(tok, cfg.vocab_size)  # refuses unsupported tokenizers before any write
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in Olmo2(cfg).state_dict().items()}
    # Views into the memory-mapped safetensors: no weight bytes are read yet.
    weights = dict(load_state_dict_lazy(model_dir, {k: torch.Size(v) for k, v in shapes.items()}, None))
    plans = plan_tensors(cfg, shapes, t)
    if {p.hf_name for p in plans} != set(weights):
        raise CheckpointError(f"{model_dir}: tensors do not match the OLMo 2 layout GGUF export knows")

    writer = gguf.GGUFWriter(None, ARCH)
    add_hparams(writer, cfg, t, name or model_dir.name)
    add_vocab(writer, vocab)
    for p in plans:
        shape = _stored_shape(p)
        raw = None if p.qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16) else p.qtype
        writer.add_tensor_info(p.gguf_name, shape, np.dtype(_np_dtype(p)), _nbytes(p), raw_dtype=raw)
    total = sum(_nbytes(p) for p in plans)
    bar = Progress(total / 1e6, desc=f"gguf {t.value}", unit="MB", enabled=progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        writer.write_header_to_file(tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for p in plans:
            arr = convert_tensor(weights.pop(p.hf_name), p)
            writer.write_tensor_data(arr)
            bar.update(arr.nbytes / 1e6, tensor=p.gguf_name)
            del arr
        writer.close()
    bar.close()
    return plans
