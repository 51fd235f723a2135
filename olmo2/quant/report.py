"""Quality of each precision against bf16: perplexity, mean KL divergence, top-1 agreement.

    from olmo2.quant.report import quality_report, demo_passages, report_markdown
    rows = quality_report("runs/replicate-tiny/soup", ["int8", "int4"], demo_passages(), tok)
    print(report_markdown(rows))

Convention (llama.cpp's `--kl-divergence`): the base is the same checkpoint with bf16
weights (`--quant bf16`); for every scored token, KL(P_base ‖ P_quant) of the next-token
distributions, averaged over tokens; top-1 agreement is the share of tokens where both
argmaxes agree; perplexity is exp(mean NLL) of the actual next tokens. Each row also gives
the ratio ppl/ppl_bf16 and, since a ratio of two perplexities on the same tokens is still
noisy per token, a 95% interval of the mean per-token NLL difference (normal approximation
over tokens; tokens within a passage are correlated, so read it as a lower bound on the
noise).

Text: the validation passages `olmo2 replicate` scores (olmo2/eval/valset.py: the demo
corpus's val split, every source in proportion, split "test", the same budget), each
scored after one EOS in windows of the model's context, as the replication does. Every
model sees exactly the same token windows.

The base computes in fp32 (bf16 weights widened exactly, fp32 activations: the
"reference" kernel), so it is the bf16-weight model itself, not one CPU's bf16 kernel.
Why: oneDNN's bf16 linear (what `auto` picks on a CPU with bf16 dot products) also rounds
every activation to bf16, and on the demo soup that rounding alone moves top-1: the
unquantized fp32 model agreed with such a base on only 98.73% of tokens (below the int8
goal), so a kernel that keeps activations exact was scored against another kernel's
activation noise (benchmarks/RESULTS.md, "int8 activation precision"). The other
rows run the kernels this CPU picks (olmo2/quant/kernels.py), which each row names; a
kernel that rounds activations (aten int8/int4 take bf16 x) is charged for it.
"""
from __future__ import annotations

import contextlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from olmo2.errors import DataError


@dataclass
class QualityRow:
    """One precision's figures against the bf16 base."""
    precision: str
    kernel: str
    tokens: int
    ppl: float
    ppl_ratio: float            # ppl / ppl of bf16 weights
    dnll_ci95: tuple[float, float]  # mean per-token NLL difference vs bf16, 95% interval (nats)
    mean_kl: float              # nats
    top1_agreement: float       # share in [0, 1]
    phase: str = "prefill"      # the kernel's phase: whole sequences run the prefill kernel;
                                # "decode" rows force the decode kernel over the same tokens


def demo_passages(val_jsonl: str | Path | None = None, train_jsonl: str | Path | None = None):
    """The replication's test passages of the demo corpus (olmo2/replicate.py's EvalSpec)."""
    from olmo2.data.sources import cache_root
    from olmo2.eval.valset import build_valset
    from olmo2.replicate import EvalSpec, source_bytes
    demo = cache_root() / "demo"
    val = Path(val_jsonl) if val_jsonl else demo / "val.jsonl"
    train = Path(train_jsonl) if train_jsonl else (val.parent / "train.jsonl")
    for p in (val, train):
        if not p.is_file():
            raise DataError(f"{p}: no demo corpus file; run `olmo2 data demo` or pass --val-file (and its train.jsonl beside it)")
    spec = EvalSpec()
    return build_valset(val, source_bytes(train), spec.split, spec.val_bytes, spec.val_max_chars)


def _windows(tokenizer, passages, max_len: int) -> list[list[int]]:
    """Non-overlapping windows of [EOS] + tokens, at most max_len long (every token scored once)."""
    out = []
    for p in passages:
        seq = [tokenizer.eos_id] + tokenizer.encode(p.text)
        for b in range(0, len(seq) - 1, max_len):
            w = seq[b:b + max_len + 1]
            if len(w) >= 2:
                out.append(w)
    return out


@torch.inference_mode()
def quality_report(model_dir: str | Path, precisions, passages, tokenizer, max_len: int | None = None,
                   batch_size: int = 16, progress: bool = True) -> list[QualityRow]:
    """Rows for bf16 and each of `precisions` (int8, int4, or QuantConfig-style modes)."""
    from olmo2.checkpoint import load_model
    from olmo2.progress import Progress
    from olmo2.quant import native
    from olmo2.quant.kernels import choose, forced
    base = load_model(model_dir, dtype=torch.float32, quant="bf16")
    models = {p: load_model(model_dir, dtype=torch.float32, quant=p) for p in precisions}
    # Scoring whole sequences runs each linear's prefill kernel; generation runs its decode
    # kernel one token at a time, and the two can differ in numerics (olmo2's own int8/int4
    # decode kernels quantize the activations per 32 columns). Where they differ the same
    # tokens are scored again with the decode kernel forced, so the table covers both. The
    # native int8 kernel differs from itself where the prefill GEMM runs (AVX-512: from
    # native.INT8_GEMM_ROWS rows, other activation blocks), so its decode row forces the
    # per-row kernel; on AVX2 both phases run the per-row kernel and one row says it all.
    def differs(p):
        dec = choose(p, "decode")
        return dec != choose(p, "prefill") or (p == "int8" and dec == "native" and native.int8_gemm_available())
    runs = [(p, "prefill", None) for p in precisions]
    runs += [(p, "decode", choose(p, "decode")) for p in precisions if p in ("int8", "int4", "bf16") and differs(p)]
    max_len = min(max_len or base.config.max_seq_len, base.config.max_seq_len) - 1
    wins = sorted(_windows(tokenizer, passages, max_len), key=len)
    if not wins:
        raise DataError("quality report: no tokens to score (empty validation text)")
    BASE = "_base"  # not "bf16": bf16 may also be asked for as a precision (the control row)
    nll = {r: [] for r in [BASE, *runs]}
    kl = {r: 0.0 for r in runs}
    agree = {r: 0 for r in runs}
    n_tok = 0
    bar = Progress(len(wins), "quality report", unit="windows") if progress else None
    for i in range(0, len(wins), batch_size):
        chunk = wins[i:i + batch_size]
        width = max(len(w) for w in chunk) - 1
        ids = torch.full((len(chunk), width), tokenizer.eos_id, dtype=torch.long)
        tgt = torch.full((len(chunk), width), -1, dtype=torch.long)
        for r, w in enumerate(chunk):
            ids[r, :len(w) - 1] = torch.tensor(w[:-1])
            tgt[r, :len(w) - 1] = torch.tensor(w[1:])
        mask = tgt >= 0
        t = tgt[mask]
        with forced("reference"):  # fp32 compute on the bf16 weights (module docstring)
            lp_base = F.log_softmax(base(ids).float(), dim=-1)[mask]      # [tokens, vocab]
        nll[BASE].append(-lp_base.gather(1, t[:, None])[:, 0])
        top_base = lp_base.argmax(-1)
        for run in runs:
            with forced(run[2]) if run[2] else contextlib.nullcontext(), \
                    native.per_row() if run[1] == "decode" else contextlib.nullcontext():
                lp = F.log_softmax(models[run[0]](ids).float(), dim=-1)[mask]
            nll[run].append(-lp.gather(1, t[:, None])[:, 0])
            kl[run] += float((lp_base.exp() * (lp_base - lp)).sum())
            agree[run] += int((lp.argmax(-1) == top_base).sum())
        n_tok += int(mask.sum())
        if bar:
            bar.update(len(chunk))
    if bar:
        bar.close()
    per_tok = {n: torch.cat(v).double() for n, v in nll.items()}
    ppl_base = math.exp(float(per_tok[BASE].mean()))
    rows = [QualityRow("bf16", "reference", n_tok, ppl_base, 1.0, (0.0, 0.0), 0.0, 1.0)]
    for run in runs:
        p, phase, kernel = run
        d = per_tok[run] - per_tok[BASE]
        half = 1.96 * float(d.std()) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
        ppl = math.exp(float(per_tok[run].mean()))
        rows.append(QualityRow(p, kernel or choose(p, "prefill"), n_tok, ppl, ppl / ppl_base,
                               (float(d.mean()) - half, float(d.mean()) + half), kl[run] / n_tok,
                               agree[run] / n_tok, phase))
    return rows


def report_markdown(rows: list[QualityRow], title: str = "Quantization quality vs bf16 weights") -> str:
    """The rows as a Markdown table with the goals (int8: top-1 ≥ 99%, ppl within 1%; int4: 5%)."""
    goals = {"int8": (0.99, 0.01), "int4": (0.99, 0.05)}
    lines = [f"## {title}", "",
             "| weights | kernel (phase) | tokens | ppl | ppl / bf16 | Δ NLL/token (95% CI, nats) | mean KL (nats) | top-1 agree |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.precision} | {r.kernel} ({r.phase}) | {r.tokens} | {r.ppl:.4f} | {r.ppl_ratio:.4f} | "
                     f"[{r.dnll_ci95[0]:+.5f}, {r.dnll_ci95[1]:+.5f}] | {r.mean_kl:.5f} | {100 * r.top1_agreement:.2f}% |")
    lines.append("")
    for r in rows:
        if r.precision in goals:
            top1, ppl_tol = goals[r.precision]
            ok = abs(r.ppl_ratio - 1) <= ppl_tol
            lines.append(f"- {r.precision}, {r.kernel} ({r.phase}): ppl within {100 * ppl_tol:.0f}% of bf16: {'yes' if ok else 'NO'} "
                         f"({100 * (r.ppl_ratio - 1):+.2f}%)"
                         + (f"; top-1 ≥ {100 * top1:.0f}%: {'yes' if r.top1_agreement >= top1 else 'NO'}"
                            if r.precision == "int8" else ""))
    return "\n".join(lines) + "\n"


def report_json(rows: list[QualityRow]) -> str:
    return json.dumps([asdict(r) for r in rows], indent=1) + "\n"
