"""`olmo2 convert gguf`, read back with the gguf package's own reader (fast, no llama.cpp).

What llama.cpp's `olmo2` loader expects is spelled out here by hand (tensor names and GGUF
shapes from its src/models/olmo2.cpp, key names from the GGUF spec), not taken from our
module, so a renamed tensor or a transposed weight fails. Quantized tensors are dequantized
by `gguf.quants` and compared with the float weights within each format's step, computed
from the block maxima of the weights themselves. The logits test against llama.cpp itself is
tests/test_gguf_llama.py (slow).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gguf_fixtures import demo_tokenizer, make_checkpoint
from olmo2.cli import main
from olmo2.tokenizer import CHAT_TEMPLATE

gguf = pytest.importorskip("gguf")


def _kv(reader, key):
    f = reader.fields[key]
    return f.contents()


def _llama_cpp_names(n_layers: int) -> dict[str, str]:
    """GGUF name → HF name, as llama.cpp's olmo2 loader and HF's Olmo2 name them."""
    m = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
         "output.weight": "lm_head.weight"}
    for i in range(n_layers):
        for g, h in [("attn_q", "self_attn.q_proj"), ("attn_k", "self_attn.k_proj"), ("attn_v", "self_attn.v_proj"),
                     ("attn_output", "self_attn.o_proj"), ("attn_q_norm", "self_attn.q_norm"),
                     ("attn_k_norm", "self_attn.k_norm"), ("post_attention_norm", "post_attention_layernorm"),
                     ("ffn_gate", "mlp.gate_proj"), ("ffn_up", "mlp.up_proj"), ("ffn_down", "mlp.down_proj"),
                     ("post_ffw_norm", "post_feedforward_layernorm")]:
            m[f"blk.{i}.{g}.weight"] = f"model.layers.{i}.{h}.weight"
    return m


@pytest.fixture(scope="module")
def demo_ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gguf")
    tok = demo_tokenizer(tmp)
    # GQA (2 kv heads) so head_count_kv and the k/v/k_norm widths differ from q's.
    return make_checkpoint(tmp / "m", tok, n_kv_heads=2)


def _convert(model_dir, out, *extra):
    assert main(["convert", "gguf", str(model_dir), "--out", str(out), *extra]) == 0
    return gguf.GGUFReader(out)


def test_f32_names_shapes_values_and_hparams(demo_ckpt, tmp_path):
    d, model = demo_ckpt
    cfg = model.config
    r = _convert(d, tmp_path / "m.gguf")
    sd = model.state_dict()
    names = _llama_cpp_names(cfg.n_layers)
    assert {t.name for t in r.tensors} == set(names)
    for t in r.tensors:
        ref = sd[names[t.name]].numpy()
        # GGUF lists dims innermost first: torch [out, in] is ne = [in, out].
        assert list(t.shape) == list(reversed(ref.shape)), t.name
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        np.testing.assert_array_equal(np.asarray(t.data).reshape(ref.shape), ref, err_msg=t.name)
    kv = r.tensors[[t.name for t in r.tensors].index("blk.0.attn_k_norm.weight")]
    assert kv.shape.tolist() == [cfg.n_kv_heads * cfg.head_dim]  # QK-norm over the full k width
    assert _kv(r, "general.architecture") == "olmo2"
    assert _kv(r, "general.file_type") == 0
    expect = {"olmo2.context_length": cfg.max_seq_len, "olmo2.embedding_length": cfg.d_model,
              "olmo2.feed_forward_length": cfg.d_ff, "olmo2.block_count": cfg.n_layers,
              "olmo2.attention.head_count": cfg.n_heads, "olmo2.attention.head_count_kv": cfg.n_kv_heads,
              "olmo2.rope.dimension_count": cfg.head_dim}
    for k, v in expect.items():
        assert _kv(r, k) == v, k
    assert _kv(r, "olmo2.rope.freq_base") == 500000.0
    assert _kv(r, "olmo2.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6, rel=1e-6)


def test_demo_tokenizer_metadata_template_and_modelfile(demo_ckpt, tmp_path):
    d, model = demo_ckpt
    from olmo2.tokenizer import Tokenizer
    tok = Tokenizer.from_pretrained(d)
    out = tmp_path / "m.gguf"
    r = _convert(d, out)
    tj = json.loads(tok.to_json())
    tokens = _kv(r, "tokenizer.ggml.tokens")
    types = _kv(r, "tokenizer.ggml.token_type")
    assert _kv(r, "tokenizer.ggml.model") == "gpt2"
    assert _kv(r, "tokenizer.ggml.pre") == "dbrx"  # the cl100k regex in llama.cpp
    assert len(tokens) == len(types) == model.config.vocab_size  # one per embedding row
    vocab = tj["model"]["vocab"]
    for t, i in vocab.items():
        assert tokens[i] == t and types[i] == 1
    eos, pad = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|pad|>")
    assert tokens[eos] == "<|endoftext|>" and types[eos] == 3 and types[pad] == 3  # CONTROL
    assert all(t == f"[PAD{i}]" and ty == 5 for i, (t, ty) in enumerate(zip(tokens, types)) if i >= tok.vocab_size)
    merges = _kv(r, "tokenizer.ggml.merges")
    assert merges == [" ".join(m) if isinstance(m, list) else m for m in tj["model"]["merges"]]
    assert _kv(r, "tokenizer.ggml.eos_token_id") == eos
    assert _kv(r, "tokenizer.ggml.padding_token_id") == pad
    assert _kv(r, "tokenizer.ggml.bos_token_id") == eos
    assert _kv(r, "tokenizer.ggml.add_bos_token") is False
    assert _kv(r, "tokenizer.chat_template") == CHAT_TEMPLATE
    mf = (tmp_path / "m.Modelfile").read_text()
    assert "FROM ./m.gguf" in mf and 'PARAMETER stop "<|endoftext|>"' in mf
    assert "PARAMETER num_ctx 256" in mf and "<|assistant|>" in mf and "false, biased" in mf


def test_dolma2_vocab(dolma2_tokenizer_path):
    """The real OLMo 2 tokenizer: ids 100257/100277, specials CONTROL, 100000 merges, padding rows
    (the vocabulary as written; the file read-back of a dolma2 GGUF is the slow test below)."""
    from olmo2.convert.gguf_vocab import gguf_vocab
    from olmo2.tokenizer import Tokenizer
    tok = Tokenizer.from_file(dolma2_tokenizer_path)
    v = gguf_vocab(tok, 100352)
    tokens, types = v.tokens, v.token_types
    assert len(tokens) == len(types) == 100352 and v.pre == "dbrx"
    assert (tokens[100257], types[100257]) == ("<|endoftext|>", 3)
    assert (tokens[100277], types[100277]) == ("<|pad|>", 3)
    assert (tokens[100278], types[100278]) == ("[PAD100278]", 5)
    assert (tokens[9906], tokens[1917]) == ("Hello", "Ġworld")  # "Hello world" → [9906, 1917]
    added = {a["id"]: a for a in json.loads(tok.to_json())["added_tokens"]}
    for i, a in added.items():
        assert types[i] == (3 if a["special"] else 4), a["content"]
    assert len(v.merges) == 100000 and all(len(m.split(" ")) == 2 for m in v.merges)
    assert (v.eos_id, v.pad_id, v.bos_id) == (100257, 100277, 100257)
    assert v.chat_template == CHAT_TEMPLATE


@pytest.mark.slow  # GGUFReader parses the 100k-entry token and merge arrays in Python (~20 s)
def test_dolma2_gguf_read_back(dolma2_tokenizer_path, tmp_path):
    from olmo2.tokenizer import Tokenizer
    tok = Tokenizer.from_file(dolma2_tokenizer_path)
    d, model = make_checkpoint(tmp_path / "m", tok, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, d_ff=64)
    r = _convert(d, tmp_path / "d.gguf", "--type", "bf16")
    tokens, types = _kv(r, "tokenizer.ggml.tokens"), _kv(r, "tokenizer.ggml.token_type")
    assert len(tokens) == 100352 and _kv(r, "tokenizer.ggml.pre") == "dbrx"
    assert (tokens[100257], types[100257], tokens[100277], types[100277]) == ("<|endoftext|>", 3, "<|pad|>", 3)
    assert len(_kv(r, "tokenizer.ggml.merges")) == 100000
    assert (_kv(r, "tokenizer.ggml.eos_token_id"), _kv(r, "tokenizer.ggml.padding_token_id")) == (100257, 100277)
    assert _kv(r, "tokenizer.ggml.add_bos_token") is False
    emb = next(t for t in r.tensors if t.name == "token_embd.weight")
    assert emb.tensor_type == gguf.GGMLQuantizationType.BF16
    ref = model.state_dict()["model.embed_tokens.weight"].to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(gguf.quants.dequantize(emb.data, emb.tensor_type).reshape(ref.shape), ref)


def _block_absmax(w: np.ndarray, block: int = 32) -> np.ndarray:
    return np.abs(w.reshape(-1, block)).max(axis=1, keepdims=True)


@pytest.mark.parametrize("qtype", ["q8_0", "q4_0"])
def test_quantized_round_trip_within_the_format_step(demo_ckpt, tmp_path, qtype):
    d, model = demo_ckpt
    r = _convert(d, tmp_path / f"m.{qtype}.gguf", "--type", qtype)
    sd, names = model.state_dict(), _llama_cpp_names(model.config.n_layers)
    Q = gguf.GGMLQuantizationType
    assert _kv(r, "general.file_type") == {"q8_0": 7, "q4_0": 2}[qtype]
    for t in r.tensors:
        w = sd[names[t.name]].numpy()
        if w.ndim == 1:
            assert t.tensor_type == Q.F32, t.name  # norms stay exact
            continue
        want = Q.Q8_0 if qtype == "q8_0" or t.name == "output.weight" else Q.Q4_0
        assert t.tensor_type == want, t.name
        got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(w.shape)
        amax = _block_absmax(w)
        # Q8_0: step d = amax/127, round to nearest → |err| <= d/2, plus d stored as fp16.
        # Q4_0: step d = amax/8; the far side clips at +7d → |err| <= d; plus fp16 d.
        step = amax / 127 if want == Q.Q8_0 else amax / 8
        half = 0.5 if want == Q.Q8_0 else 1.0
        err = np.abs(got - w).reshape(-1, 32)
        bound = step * (half + 128 * 2.0 ** -11) + 1e-7
        assert (err <= bound).all(), (t.name, float((err / bound).max()))
        assert err.mean() < 0.5 * step.mean(), t.name  # and it is a real rounding, not noise


def test_f16_values(demo_ckpt, tmp_path):
    d, model = demo_ckpt
    r = _convert(d, tmp_path / "m.f16.gguf", "--type", "f16")
    t = next(t for t in r.tensors if t.name == "blk.1.ffn_down.weight")
    w = model.state_dict()["model.layers.1.mlp.down_proj.weight"]
    assert t.tensor_type == gguf.GGMLQuantizationType.F16
    np.testing.assert_array_equal(np.asarray(t.data).reshape(w.shape), w.half().numpy())


def test_bad_inputs_are_one_line_errors(demo_ckpt, tmp_path, capsys):
    d, _ = demo_ckpt
    with pytest.raises(SystemExit) as e:
        main(["convert", "gguf", str(d), "--out", str(tmp_path / "x.gguf"), "--type", "q5_k"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "invalid choice" in err and len(err.strip().splitlines()) == 1
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    for out, model, needle in [(tmp_path / "y.gguf", llama, "expected 'olmo2'"),
                               (tmp_path / "y.bin", d, "*.gguf"),
                               (d / "inside.gguf", d, "inside the model directory")]:
        assert main(["convert", "gguf", str(model), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()


def test_existing_files_are_replaced_only_when_safe(demo_ckpt, tmp_path):
    d, _ = demo_ckpt
    notes = tmp_path / "notes.gguf"
    notes.write_text("my notes")
    assert main(["convert", "gguf", str(d), "--out", str(notes), "--force"]) == 2
    assert notes.read_text() == "my notes"
    out = tmp_path / "m.gguf"
    _convert(d, out)
    assert main(["convert", "gguf", str(d), "--out", str(out), "--type", "q8_0"]) == 2  # exists, no --force
    r = _convert(d, out, "--type", "q8_0", "--force")
    assert _kv(r, "general.file_type") == 7
    (tmp_path / "o.Modelfile").write_text("FROM llama3\n")  # someone else's Modelfile
    assert main(["convert", "gguf", str(d), "--out", str(tmp_path / "o.gguf"), "--force"]) == 2
    assert (tmp_path / "o.Modelfile").read_text() == "FROM llama3\n" and not (tmp_path / "o.gguf").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_unsupported_pre_tokenizer_is_refused(demo_ckpt, tmp_path):
    """A tokenizer llama.cpp would split differently must not become a GGUF that 'works'."""
    import shutil
    d, _ = demo_ckpt
    other = tmp_path / "other"
    shutil.copytree(d, other)
    tj = json.loads((other / "tokenizer.json").read_text())
    tj["pre_tokenizer"] = {"type": "Whitespace"}
    (other / "tokenizer.json").write_text(json.dumps(tj))
    assert main(["convert", "gguf", str(other), "--out", str(tmp_path / "w.gguf")]) == 2
    assert not (tmp_path / "w.gguf").exists()


def test_rows_that_are_not_whole_blocks_fall_back_to_f16(tmp_path):
    """ffn_down's rows are d_ff = 100 long, not a multiple of the 32-value block: that tensor
    is stored F16 (as llama.cpp's converter does), the others still Q8_0."""
    tok = demo_tokenizer(tmp_path)
    d, model = make_checkpoint(tmp_path / "m", tok, d_ff=100, n_layers=1)
    r = _convert(d, tmp_path / "m.gguf", "--type", "q8_0")
    Q = gguf.GGMLQuantizationType
    types = {t.name: t.tensor_type for t in r.tensors}
    assert types["blk.0.ffn_down.weight"] == Q.F16 and types["blk.0.ffn_up.weight"] == Q.Q8_0
    t = next(t for t in r.tensors if t.name == "blk.0.ffn_down.weight")
    w = model.state_dict()["model.layers.0.mlp.down_proj.weight"]
    np.testing.assert_array_equal(np.asarray(t.data).reshape(w.shape), w.half().numpy())


def test_bf16_checkpoint_exports_its_own_bits(tmp_path):
    """A bf16-stored checkpoint: --type bf16 writes the stored bits unchanged, f32 their exact upcast."""
    from olmo2.checkpoint import load_model
    tok = demo_tokenizer(tmp_path)
    d, _ = make_checkpoint(tmp_path / "m", tok, n_layers=1, dtype=torch.bfloat16)
    stored = load_model(d, dtype=None).state_dict()["model.layers.0.self_attn.q_proj.weight"]
    assert stored.dtype == torch.bfloat16
    for qtype in ("bf16", "f32"):
        r = _convert(d, tmp_path / f"m.{qtype}.gguf", "--type", qtype)
        t = next(t for t in r.tensors if t.name == "blk.0.attn_q.weight")
        got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(stored.shape)
        np.testing.assert_array_equal(got, stored.float().numpy())
