"""Quantized models end to end: module swap, save → load exactness, corrupt metadata, the CLI."""
from __future__ import annotations

import json
import os
import re

import pytest
import torch

from olmo2.config import ModelConfig
from olmo2.errors import CheckpointError
from olmo2.model import Olmo2
from olmo2.quant.io import META_NAME, save_quantized
from olmo2.quant.linear import BF16Linear, Int4Linear, Int8Embedding, Int8Linear
from olmo2.quant.swap import quantize_model


@pytest.fixture(scope="module")
def bpe_tok():
    from tokenizers import Tokenizer as HFTok
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from olmo2.tokenizer import Tokenizer
    tk = HFTok(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(["the cat sat on the mat, and the dog sat on the log."] * 20, trainer)
    return Tokenizer(tk)


def _model(bpe_tok, d_model=64, d_ff=96, seed=0):
    # d_model 64 with d_ff 96: group 64 divides every in_features, group 128 none
    cfg = ModelConfig(vocab_size=320, d_model=d_model, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=d_ff,
                      max_seq_len=64, eos_token_id=bpe_tok.eos_id, pad_token_id=bpe_tok.pad_id)
    torch.manual_seed(seed)
    m = Olmo2(cfg)
    m.reset_parameters()
    return m.eval()


@pytest.fixture(scope="module")
def float_ckpt(tmp_path_factory, bpe_tok):
    from olmo2.checkpoint import save_model
    out = tmp_path_factory.mktemp("q") / "float"
    save_model(_model(bpe_tok), out, tokenizer=bpe_tok)
    return out


def test_swap_plan_and_non_divisible_rule(bpe_tok):
    m = quantize_model(_model(bpe_tok), "int4", group_size=128)
    # group 128 divides no in_features here (64, 96): every linear falls back to int8, said in the plan
    assert all(isinstance(mod, Int8Linear) for n, mod in m.named_modules() if n.endswith("_proj"))
    assert {t.fmt for n, t in m.quant_plan.items() if n != "model.embed_tokens"} == {"int8"}
    m = quantize_model(_model(bpe_tok), "int4", group_size=32)
    assert isinstance(m.model.layers[0].mlp.down_proj, Int4Linear) and isinstance(m.lm_head, Int4Linear)
    assert isinstance(m.model.embed_tokens, Int8Embedding)
    m = quantize_model(_model(bpe_tok), "int4", group_size=32, lm_head="int8")
    assert isinstance(m.lm_head, Int8Linear)
    m = quantize_model(_model(bpe_tok), "bf16")
    assert isinstance(m.lm_head, BF16Linear) and not any(p.dtype == torch.bfloat16 for p in m.parameters())


@pytest.mark.parametrize("mode", ["int8", "int4", "bf16"])
def test_swapped_model_equals_float_model_with_dequantized_weights(bpe_tok, monkeypatch, mode):
    """On the reference kernel the quantized model computes exactly what the float model
    computes with each weight replaced by its dequantized value: every module is swapped
    and wired right, and the only change is the weights (their error is bounded in
    test_quant_linear.py)."""
    monkeypatch.setenv("OLMO2_QUANT_KERNEL", "reference")
    q = quantize_model(_model(bpe_tok), mode, group_size=32)
    ref = _model(bpe_tok)
    with torch.no_grad():
        for name, mod in ref.named_modules():
            if isinstance(mod, (torch.nn.Linear, torch.nn.Embedding)):
                qm = q.get_submodule(name)
                if isinstance(mod, torch.nn.Embedding):
                    mod.weight.copy_(qm(torch.arange(mod.num_embeddings)))
                else:
                    mod.weight.copy_(qm.dequantized())
    ids = torch.randint(0, 300, (2, 40), generator=torch.Generator().manual_seed(0))
    assert torch.equal(q(ids), ref(ids))


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_save_load_exact(tmp_path, bpe_tok, mode):
    from olmo2.checkpoint import load_model
    m = quantize_model(_model(bpe_tok), mode, group_size=32)
    save_quantized(m, tmp_path / "q", tokenizer=bpe_tok)
    back = load_model(tmp_path / "q")
    sd, sd2 = m.state_dict(), back.state_dict()
    assert sd.keys() == sd2.keys()
    for k in sd:
        assert sd[k].dtype == sd2[k].dtype and torch.equal(sd[k], sd2[k]), k
    ids = torch.randint(0, 300, (1, 30), generator=torch.Generator().manual_seed(1))
    assert torch.equal(m(ids), back(ids))
    # the embedding table stays a view of the file (only looked-up rows become resident);
    # the linears are copies (aten's int8 kernel needs aligned memory)
    maps = [line.split() for line in open("/proc/self/maps") if line.rstrip().endswith("model.safetensors")]
    spans = [tuple(int(x, 16) for x in f[0].split("-")) for f in maps]

    def in_file(t):
        return any(lo <= t.data_ptr() < hi for lo, hi in spans)
    emb = back.model.embed_tokens
    assert in_file(emb.qweight if mode != "bf16" else emb.weight) and emb._drop_pages is not None
    assert not in_file(next(iter(back.model.layers[0].mlp.buffers())))
    assert torch.equal(Olmo2.from_pretrained(str(tmp_path / "q"))(ids), m(ids))  # the public API too
    with pytest.raises(CheckpointError, match="already quantized"):
        load_model(tmp_path / "q", quant="bf16" if mode != "bf16" else "int8")


def test_on_the_fly_equals_quantize_then_save(tmp_path, float_ckpt):
    from olmo2.checkpoint import load_model
    on_fly = load_model(float_ckpt, quant="int8")
    m = quantize_model(load_model(float_ckpt), "int8")
    assert all(torch.equal(a, b) for a, b in zip(on_fly.state_dict().values(), m.state_dict().values()))


def _corrupt(tmp_path, bpe_tok, edit):
    m = quantize_model(_model(bpe_tok), "int4", group_size=32)
    d = save_quantized(m, tmp_path / "q", tokenizer=bpe_tok)
    meta = json.loads((d / META_NAME).read_text())
    edit(meta)
    (d / META_NAME).write_text(json.dumps(meta))
    return d


@pytest.mark.parametrize("edit,field", [
    (lambda m: m.update(version=2), "version"),
    (lambda m: m.update(format="gguf"), "format"),
    (lambda m: m.update(mode="int3"), "mode"),
    (lambda m: m.update(group_size="32"), "group_size"),
    (lambda m: m["tensors"]["lm_head"].update(group_size=64), "tensors.lm_head.group_size"),
    (lambda m: m["tensors"]["lm_head"].update(format="int2"), "tensors.lm_head.format"),
    (lambda m: m["tensors"].pop("lm_head"), "tensors"),
    (lambda m: m["tensors"].update({"model.nope": {"format": "int8", "group_size": None}}), "tensors.model.nope"),
    # a plan that disagrees with the stored tensors: caught by dtype/shape, naming the tensor
    (lambda m: m["tensors"]["lm_head"].update(format="int8", group_size=None), "lm_head"),
])
def test_corrupt_metadata_is_one_clear_error(tmp_path, bpe_tok, edit, field):
    from olmo2.checkpoint import load_model
    d = _corrupt(tmp_path, bpe_tok, edit)
    with pytest.raises(CheckpointError) as e:
        load_model(d)
    msg = str(e.value)
    assert "\n" not in msg and field in msg and (META_NAME in msg or "safetensors" in msg)


def test_unparsable_metadata(tmp_path, bpe_tok):
    from olmo2.checkpoint import load_model
    m = quantize_model(_model(bpe_tok), "int8")
    d = save_quantized(m, tmp_path / "q")
    (d / META_NAME).write_text("{not json")
    with pytest.raises(CheckpointError, match=META_NAME):
        load_model(d)


def test_cli_quantize_then_generate(tmp_path, float_ckpt, capsys):
    from olmo2.cli import main
    out = tmp_path / "q4"
    assert main(["quantize", str(float_ckpt), "--bits", "4", "--group-size", "32", "--out", str(out)]) == 0
    assert json.loads((out / META_NAME).read_text())["mode"] == "int4"
    capsys.readouterr()
    gen = ["generate", "--prompt", "the cat", "--max-new-tokens", "8", "--temperature", "0"]
    assert main(gen + ["--model", str(out)]) == 0
    from_dir = capsys.readouterr().out
    # --quant on the fly with the default group size (128: divides nothing here → int8 rule)
    assert main(gen + ["--model", str(float_ckpt), "--quant", "int8"]) == 0
    on_fly = capsys.readouterr()
    assert on_fly.out.strip() and "tok/s" in on_fly.err
    assert from_dir.strip()
    # the quantized dir refuses a different --quant with one line, exit 2
    assert main(gen + ["--model", str(out), "--quant", "int8"]) == 2
    assert "already quantized as int4" in capsys.readouterr().err
    # quantizing into a non-empty foreign dir is refused by the --out guard
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert main(["quantize", str(float_ckpt), "--bits", "8", "--out", str(tmp_path / "mine")]) == 2


def test_cli_generate_quant_matches_python(float_ckpt, capsys):
    """--quant int8 greedy text equals the Python API's greedy continuation."""
    from olmo2.checkpoint import load_model
    from olmo2.cli import main
    from olmo2.tokenizer import Tokenizer
    tok = Tokenizer.from_pretrained(float_ckpt)
    m = load_model(float_ckpt, quant="int8")
    ids = torch.tensor([tok.encode("the cat")])
    want = tok.decode(m.generate(ids, max_new_tokens=6, temperature=0)[0, ids.shape[1]:].tolist())
    assert main(["generate", "--model", str(float_ckpt), "--prompt", "the cat", "--max-new-tokens", "6",
                 "--temperature", "0", "--quant", "int8"]) == 0
    assert capsys.readouterr().out.rstrip("\n") == want


def test_quality_report_against_hand_computed_figures(float_ckpt, monkeypatch):
    """The report's bf16 perplexity equals exp(mean NLL) computed here from a plain forward;
    bf16 against itself is the control (KL 0, agreement 100%); int8's KL is the formula's."""
    import math

    import torch.nn.functional as F

    from olmo2.checkpoint import load_model
    from olmo2.eval.valset import Passage
    from olmo2.quant.report import quality_report, report_markdown
    from olmo2.tokenizer import Tokenizer
    monkeypatch.setenv("OLMO2_QUANT_KERNEL", "reference")
    tok = Tokenizer.from_pretrained(float_ckpt)
    passages = [Passage("s", "d", i, t) for i, t in enumerate(["the cat sat on the mat", "the dog sat on the log"])]
    rows = quality_report(float_ckpt, ["bf16", "int8"], passages, tok, progress=False)
    base, same, q8 = rows
    ids = [[tok.eos_id] + tok.encode(p.text) for p in passages]
    m_bf, m_8 = load_model(float_ckpt, quant="bf16"), load_model(float_ckpt, quant="int8")
    nll, kl, n = 0.0, 0.0, 0
    for seq in ids:
        x, y = torch.tensor([seq[:-1]]), torch.tensor(seq[1:])
        lb, l8 = F.log_softmax(m_bf(x)[0].float(), -1), F.log_softmax(m_8(x)[0].float(), -1)
        nll -= float(lb[torch.arange(len(y)), y].sum())
        kl += float((lb.exp() * (lb - l8)).sum())
        n += len(y)
    assert base.tokens == n and math.isclose(base.ppl, math.exp(nll / n), rel_tol=1e-6)
    assert same.mean_kl == 0.0 and same.top1_agreement == 1.0 and same.ppl_ratio == 1.0
    assert math.isclose(q8.mean_kl, kl / n, rel_tol=1e-4, abs_tol=1e-9)
    assert "| int8 |" in report_markdown(rows)


@pytest.mark.parametrize("mode", ["bf16", "int8", "int4"])
def test_quantizing_by_row_blocks_is_exact(bpe_tok, monkeypatch, mode):
    """Row-block quantization (bounded temporaries for the 100k-row tables) gives the same
    buffers as quantizing each weight whole: every format quantizes rows independently."""
    from olmo2.quant import swap
    whole = quantize_model(_model(bpe_tok), mode, group_size=32).state_dict()
    monkeypatch.setattr(swap, "ROW_BLOCK_ELEMENTS", 7 * 64)  # 7 rows of 64: ragged last block
    blocked = quantize_model(_model(bpe_tok), mode, group_size=32)
    assert blocked.lm_head.out_features == 320 and blocked.model.embed_tokens.num_embeddings == 320
    got = blocked.state_dict()
    assert got.keys() == whole.keys()
    for k in whole:
        assert torch.equal(got[k], whole[k]), k


def test_on_the_fly_load_releases_each_float_weight(float_ckpt, monkeypatch):
    """Quantizing a mapped checkpoint at load drops each float weight's file pages once its
    quantized copy exists (every planned linear found in a tracked mapping), keeps the
    embedding's float table mapped (rows converted on lookup), and the model equals one
    quantized from an in-memory copy."""
    from olmo2 import checkpoint
    from olmo2.checkpoint import load_model
    released = []
    real = checkpoint.release_pages
    monkeypatch.setattr(checkpoint, "release_pages", lambda t: released.append(real(t)) or released[-1])
    m = load_model(float_ckpt, quant="int8")
    assert released and all(released) and len(released) == len(m.quant_plan) - 1  # all but the embedding
    assert m.model.embed_tokens._rows is not None and m.model.embed_tokens._rows.dtype == torch.float32
    assert m.model.embed_tokens._drop_pages is not None  # its pages are unmapped after each lookup
    assert checkpoint._TRACKED is None  # tracking ends with the load
    ref = quantize_model(load_model(float_ckpt), "int8")
    ids = torch.tensor([[1, 5, 9, 200]])
    with torch.no_grad():
        assert torch.equal(m(ids), ref(ids))


def test_quality_report_scores_the_decode_kernel_where_it_differs(float_ckpt, monkeypatch):
    """Generation runs each linear's decode kernel (olmo2's native int8 quantizes activations),
    scoring runs the prefill one: the report adds a decode row, over the same tokens, exactly
    when the two differ, and that row's KL is the formula's with the decode kernel forced."""
    import torch.nn.functional as F

    from olmo2.checkpoint import load_model
    from olmo2.eval.valset import Passage
    from olmo2.quant import native
    from olmo2.quant.kernels import choose, forced
    from olmo2.quant.report import quality_report, report_markdown
    from olmo2.tokenizer import Tokenizer
    monkeypatch.delenv("OLMO2_QUANT_KERNEL", raising=False)
    tok = Tokenizer.from_pretrained(float_ckpt)
    # passages long enough that a forward has >= PREFILL_ROWS rows (else both rows decode)
    texts = ["the cat sat on the mat and the dog sat on the log by the door of the old house",
             "a dog ran to the park and a cat ran after it down the long road home again"]
    passages = [Passage("s", "d", i, t) for i, t in enumerate(texts)]
    rows = quality_report(float_ckpt, ["int8"], passages, tok, progress=False)
    dec, pre = choose("int8", "decode"), choose("int8", "prefill")
    # native int8 runs its GEMM (AVX-512 only) from 8 rows (other activation blocks): a decode row too
    differs = dec != pre or (dec == "native" and native.isa() == "avx512")
    assert [(r.precision, r.phase) for r in rows[1:]] == [("int8", "prefill")] + ([("int8", "decode")] if differs else [])
    if not differs:
        return
    row = rows[2]
    assert rows[0].kernel == "reference"
    assert row.kernel == dec and f"| int8 | {dec} (decode) |" in report_markdown(rows)
    m_bf, m_8 = load_model(float_ckpt, quant="bf16"), load_model(float_ckpt, quant="int8")
    kl, n = 0.0, 0
    for p in passages:
        seq = [tok.eos_id] + tok.encode(p.text)
        x = torch.tensor([seq[:-1]])
        with forced("reference"):  # the base: bf16 weights, fp32 compute, whatever the CPU picks
            lb = F.log_softmax(m_bf(x)[0].float(), -1)
        with forced(dec), native.per_row():   # the per-row kernel, as one-token steps run it
            l8 = F.log_softmax(m_8(x)[0].float(), -1)
        kl += float((lb.exp() * (lb - l8)).sum())
        n += len(seq) - 1
    # 1e-3 relative: the native int8 kernel's KL is ~4e-6 here (15-bit activations), so the
    # fp32 rounding of batched vs one-passage forwards is a visible share of it
    assert abs(row.mean_kl - kl / n) <= 1e-3 * max(1e-6, kl / n) + 1e-9
    assert abs(rows[1].mean_kl - kl / n) > 1e-3 * kl / n  # the prefill row is another kernel's


def _mapping_rss_kib(path) -> int:
    """Resident KiB of this process's mappings of `path` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in open("/proc/self/smaps"):
        if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):  # a mapping's header line
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux /proc")
def test_mapped_table_pages_are_unmapped_after_each_lookup(tmp_path):
    """A table kept in the mapped checkpoint leaves none of its pages resident after a
    lookup when its dropper is set, and does leave them without it (the control)."""
    from safetensors.torch import save_file

    from olmo2.checkpoint import SafetensorsFile, page_dropper, tracking_mappings
    from olmo2.quant.linear import Int8Embedding
    path = tmp_path / "t.safetensors"
    w = torch.randn(4096, 256, generator=torch.Generator().manual_seed(0))  # 4 MiB fp32
    save_file({"w": w}, str(path))
    ids = torch.randint(0, 4096, (1, 64), generator=torch.Generator().manual_seed(1))
    with tracking_mappings():
        st = SafetensorsFile(path)
        table = st.get("w")
        emb = Int8Embedding.over_rows(table)
        emb(ids)
        assert _mapping_rss_kib(path) > 0                 # control: the rows' pages stay
        emb.drop_pages(page_dropper(table))
    out = emb(ids)
    assert _mapping_rss_kib(path) <= 4                    # at most the header's page
    assert torch.equal(out, Int8Embedding.from_float(w)(ids))  # 64 rows: 4 chunks of 16
    assert torch.equal(emb(ids[:, :1]), Int8Embedding.from_float(w)(ids[:, :1]))
    assert emb(torch.zeros(2, 0, dtype=torch.long)).shape == (2, 0, 256)
