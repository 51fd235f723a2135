"""`olmo2 replicate --recipe tiny [--quick] [--out DIR]`: the OLMo 2 recipe offline, as an
experiment with a control arm, held-out problems, baselines and confidence intervals.

Pipeline (`run_pipeline`), each step skipped when its output already exists:

1. data     a source-proportional sample of the demo training text → `data/demo/` shards;
            arithmetic word problems from the train split of the problem space →
            `data/arith/` (the held-out dev/test problems are disjoint by construction,
            and `check_disjoint` asserts it on the actual lists)
2. stage 1  pretrain on demo text + a little arithmetic → `stage1/` (+ `stage1/hf`)
3. control  stage 1 continued for stage 2's step count (same mix, order, cosine) → `control/`
4. stage 2  per seed: warm start from stage 1, LR linearly to 0, demo text + more arithmetic
            → `stage2-seedS/`
5. soup     uniform average of the stage-2 ingredients → `soup/` (the final HF model)
6. eval     on the `spec.split` ("test" for the report, "dev" when tuning) of
            - the validation passages (`olmo2.eval.valset`: every source in proportion),
              per-passage NLL so differences between arms get paired bootstrap intervals;
            - ≥ 500 distinct held-out arithmetic problems: exact match with Wilson
              intervals, format rate, and the trivial baselines on the same problems;
            - OLMES GSM8K (first `spec.olmes.gsm8k_limit` problems) and TruthfulQA MC1/MC2,
              run by `olmo2 eval`'s own code into `olmes/<model>/` (`olmo2.eval.stage_olmes`)
7. report   `report.md` (tables, checks with figures and intervals, PASS/FAIL computed by
            `olmo2.eval.report.experiment_checks`), `loss_curves.png`, `results.json`; sample
            generations from every model, and the memorisation section: the share of each
            sample covered by verbatim training spans of >= 8 tokens, per model (a trace index
            over the run's token shards, `trace-index/`, built once: seconds for the demo
            sample; `olmo2.trace.memorised_fractions`).

`run_pipeline` takes the corpus, recipes and eval sizes as arguments, so a test runs the
very same code on a tiny synthetic corpus in seconds. Footgun: a stage is "done" when its
`summary.json` exists; change a recipe → use a fresh `--out` (or delete that stage dir).
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from olmo2.data.arithmetic import ArithTask
from olmo2.errors import Olmo2Error
from olmo2.eval.stage_olmes import OlmesRows
from olmo2.fsio import atomic_file
from olmo2.recipes import Recipe


@dataclass(frozen=True)
class Corpus:
    """Raw text for the run: train/val JSONL ({"text", "source"?, "id"?} per line) and a tokenizer.json."""
    train_jsonl: Path
    val_jsonl: Path
    tokenizer: Path
    manifest: Path | None = None
    """Per-source licences (the demo corpus's manifest.json), copied beside the sampled text
    so `olmo2 trace` can name each document's licence; None when the corpus has none."""


@dataclass(frozen=True)
class EvalSpec:
    """Data and eval sizes (all deterministic)."""
    arith: ArithTask = ArithTask()
    arith_train_docs: int = 8000
    """Training documents written (train-split problems drawn with replacement)."""
    arith_heldout: int = 600
    """Distinct held-out problems scored per model."""
    min_heldout: int = 500
    """Refuse to run with fewer distinct held-out problems (the interval would be too wide)."""
    split: str = "test"
    """Held-out split that is scored: 'test' for the report, 'dev' for tuning the recipe."""
    val_bytes: int = 160_000
    """UTF-8 bytes of validation passages (all sources in proportion)."""
    val_max_chars: int = 1000
    demo_tokens: int | None = None
    """Tokenize only a source-proportional sample of about this many demo tokens (None: all)."""
    n_boot: int = 2000
    sample_prompts: tuple[str, ...] = ("To be, or not to be", "My fellow citizens,")
    sample_new_tokens: int = 40
    olmes: OlmesRows = OlmesRows()
    """OLMES GSM8K / TruthfulQA rows per model, by `olmo2 eval`'s code (`olmo2.eval.stage_olmes`)."""


@dataclass
class PipelineResult:
    out_dir: Path
    final_model: Path
    report_path: Path
    report: str
    evals: dict = field(default_factory=dict)
    checks: list = field(default_factory=list)
    samples: list = field(default_factory=list)


def log(msg: str) -> None:
    print(f"[replicate] {msg}", file=sys.stderr, flush=True)


# ---- data ------------------------------------------------------------------------------
def source_bytes(train_jsonl: Path) -> dict[str, int]:
    """UTF-8 bytes per source of a corpus JSONL (records without "source" count as "all")."""
    out: dict[str, int] = defaultdict(int)
    with open(train_jsonl, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                out[d.get("source", "all")] += len(d.get("text", "").encode("utf-8"))
    return dict(out)


def proportional_sample(train_jsonl: Path, out: Path, target_bytes: int, shares: dict[str, int]) -> None:
    """Whole documents, in file order, per source up to its byte share of `target_bytes`.

    Why: stage 1 reads a fraction of the corpus, and tokenizing all of it is ~15% of the
    demo's time budget; a plain prefix would get Shakespeare (41 plays) badly out of
    proportion, so each source is sampled to its own share."""
    total = sum(shares.values())
    want = {s: target_bytes * b / total for s, b in shares.items()}
    got: dict[str, int] = defaultdict(int)
    with open(train_jsonl, encoding="utf-8") as f, atomic_file(out, "w") as w:
        for line in f:
            if not line.strip():
                continue
            d = json.loads(line)
            s = d.get("source", "all")
            if got[s] < want[s]:
                w.write(line if line.endswith("\n") else line + "\n")
                got[s] += len(d.get("text", "").encode("utf-8"))


def prepare_data(corpus: Corpus, data_root: Path, spec: EvalSpec, shares: dict[str, int],
                 heldout: list[dict], progress: bool = True) -> list[dict]:
    """Token shards for demo text and arithmetic; returns the arithmetic training problems."""
    from olmo2.data.arithmetic import check_disjoint, train_problems, write_jsonl
    from olmo2.data.tokenize import tokenize
    train = train_problems(spec.arith, spec.arith_train_docs, seed=0)
    try:
        check_disjoint(train, heldout)
    except ValueError as e:  # cannot happen by construction; a regression if it does
        raise Olmo2Error(f"arithmetic split: {e}") from None
    raw = data_root / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    if not (raw / "arith.jsonl").exists():
        write_jsonl(train, raw / "arith.jsonl")
    demo_src = corpus.train_jsonl
    if spec.demo_tokens:
        demo_src = raw / "demo.jsonl"
        if not demo_src.exists():
            # ~3.9 bytes per token for the demo BPE on this corpus; +10% so targets fit
            proportional_sample(corpus.train_jsonl, demo_src, int(spec.demo_tokens * 3.9 * 1.1), shares)
        if corpus.manifest is not None and corpus.manifest.exists() and not (raw / "manifest.json").exists():
            with atomic_file(raw / "manifest.json", "wb") as w:  # per-source licences for `olmo2 trace`
                w.write(corpus.manifest.read_bytes())
    for name, src in (("demo", demo_src), ("arith", raw / "arith.jsonl")):
        log(f"tokenizing {src} → {data_root / name}")
        tokenize([str(src)], str(corpus.tokenizer), str(data_root / name), workers=1, progress=progress)
    return train


# ---- training --------------------------------------------------------------------------
def _fit_model(recipe: Recipe, tok) -> Recipe:
    """Embedding rows and special ids follow the run's tokenizer."""
    from olmo2.config import pad_vocab
    return recipe.replace(model=recipe.model.replace(vocab_size=pad_vocab(tok.vocab_size),
                                                     eos_token_id=tok.eos_id, pad_token_id=tok.pad_id))


def run_stage(recipe: Recipe, run_dir: Path, tok, start_tokens: int = 0) -> dict:
    """Train one stage (or reuse it), export its final checkpoint to run_dir/hf; its summary."""
    from olmo2.data.loader import Loader
    from olmo2.eval.report import final_loss
    from olmo2.train.loop import train
    from olmo2.train.state import export_hf
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        log(f"{recipe.name}: reusing {run_dir} (delete it to retrain)")
        return json.loads(summary_path.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(run_dir / "recipe.json") as f:
        f.write(recipe.to_json())
    t = recipe.train
    loader = Loader.from_mix(recipe.data, seq_len=t.seq_len, global_batch_size=t.global_batch_size, seed=t.seed)
    how = (f", warm start {t.init_from}" if t.init_from else "") + (f", resuming {t.resume}" if t.resume else "")
    log(f"{recipe.name} → {run_dir}: to step {t.max_steps} × {t.global_batch_size}×{t.seq_len} tokens, "
        f"LR {t.lr:.3g} ({t.schedule}){how}")
    t0, c0 = time.perf_counter(), time.process_time()
    res = train(recipe.model, t, loader, run_dir)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if res.last_checkpoint is None:
        raise Olmo2Error(f"{recipe.name}: training wrote no checkpoint in {run_dir}")
    hf = export_hf(res.last_checkpoint, run_dir / "hf", tokenizer=tok)
    summary = {"name": recipe.name, "steps": res.step, "tokens": res.tokens - start_tokens,
               "total_tokens": res.tokens, "wall_s": wall, "cpu_s": cpu,
               "final_loss": final_loss(res.metrics_path), "checkpoint": str(res.last_checkpoint),
               "hf": str(hf), "metrics": str(res.metrics_path)}
    with atomic_file(summary_path) as f:
        json.dump(summary, f, indent=2)
    return summary


# ---- evaluation ------------------------------------------------------------------------
def evaluate(model_dir: str | Path, tok, passages, problems: list[dict], seq_len: int) -> dict:
    """Per-passage NLL/bytes on the validation passages and arithmetic hits of a model."""
    from olmo2.checkpoint import load_model
    from olmo2.data.arithmetic import extract_answer
    from olmo2.eval.arithmetic import arithmetic_generations, score
    from olmo2.eval.valset import bits_per_byte, score_passages
    model = load_model(model_dir)
    t0 = time.perf_counter()
    nll, nbytes = score_passages(model, tok, passages, max_len=seq_len)
    outs = arithmetic_generations(model, tok, problems)
    r = score(outs, problems)
    bpb = bits_per_byte(nll, nbytes)
    log(f"eval {model_dir}: bpb {bpb:.4f}, arithmetic {r.accuracy:.1%} (format {r.format_rate:.0%}) "
        f"({time.perf_counter() - t0:.0f} s); e.g. {problems[0]['question']!r} → {outs[0]!r}")
    return {"nll": nll, "bytes": nbytes, "bpb": bpb, "arith": r.to_dict(),
            "hits": [int(extract_answer(o) == p["answer"]) for o, p in zip(outs, problems)]}


def sample_generations(model_dir: Path, tok, prompts: list[str], max_new: int, seed: int = 0) -> list[dict]:
    """Greedy and one sampled continuation per prompt from the final model."""
    from olmo2.checkpoint import load_model
    from olmo2.infer.generate import generate
    model = load_model(model_dir)
    out = []
    for p in prompts:
        ids = [tok.eos_id] + tok.encode(p)
        row = {"prompt": p}
        for mode, kw in (("greedy", dict(temperature=0)), ("sampled", dict(temperature=0.8, top_p=0.95, seed=seed))):
            g = generate(model, [ids], max_new_tokens=max_new, eos_token_id=tok.eos_id, **kw)[0, len(ids):]
            row[mode] = tok.decode([t for t in g.tolist() if t not in (tok.eos_id, tok.pad_id)])
        out.append(row)
    return out


MEMO_MIN_LEN = 8
"""Tokens a verbatim training span needs to count as memorised (OLMoTrace's spans are longer)."""


def memorisation(index_dir: Path, data_dirs: list[Path], samples: dict[str, list[dict]],
                 progress: bool = True) -> dict:
    """Per model, the memorised fraction of each sample generation (greedy, sampled per prompt).

    Builds (or reuses: finished shards are skipped) a trace index over `data_dirs`, the
    token shards the models were trained on, and scores every sample against it."""
    from olmo2.trace import memorised_fractions, open_index
    from olmo2.trace.index import build_index
    build_index([str(d) for d in data_dirs], index_dir, progress=progress)
    index = open_index(index_dir)
    out = {"min_len": MEMO_MIN_LEN, "index": str(index_dir), "corpus_tokens": index.total_tokens, "models": {}}
    for name, rows in samples.items():
        texts = [r[m] for r in rows for m in ("greedy", "sampled")]
        fr = memorised_fractions(index, texts, MEMO_MIN_LEN)
        out["models"][name] = {"fractions": fr, "mean": sum(fr) / len(fr) if fr else 0.0}
    return out


def memorisation_section(memo: dict, prompts: list[str]) -> str:
    """The report.md section for `memorisation`'s result: one row per model, one column per sample."""
    cols = [f"{i + 1} {m}" for i in range(len(prompts)) for m in ("greedy", "sampled")]
    lines = ["", f"## Memorisation (verbatim training spans of >= {memo['min_len']} tokens)", "",
             f"Share of each sample generation's tokens inside a span of >= {memo['min_len']} tokens that occurs "
             f"verbatim in the training shards (trace index of {memo['corpus_tokens']:,} tokens, "
             f"`{Path(memo['index']).name}/`): 0 = nothing copied, 1 = copied whole. Trace a sample with "
             f"`olmo2 trace query --index {memo['index']} --text ...`. Prompts: "
             + "; ".join(f"{i + 1} = {p!r}" for i, p in enumerate(prompts)) + ".", "",
             "| model | " + " | ".join(cols) + " | mean |", "|---" * (len(cols) + 2) + "|"]
    for name, m in memo["models"].items():
        lines.append(f"| {name} | " + " | ".join(f"{f:.2f}" for f in m["fractions"]) + f" | {m['mean']:.2f} |")
    return "\n".join(lines) + "\n"


# ---- the pipeline ---------------------------------------------------------------------
def run_pipeline(out_dir: str | Path, corpus: Corpus, stage1: Recipe, control: Recipe, stage2: list[Recipe],
                 spec: EvalSpec = EvalSpec(), data_root: str | Path | None = None,
                 title: str = "OLMo 2 tiny replication", progress: bool = True,
                 provenance: str = "") -> PipelineResult:
    """Data → stage 1 → control + stage 2 × seeds → soup → eval → report (module docstring).

    The recipes' data mixes must point at `data_root` (default out_dir/data); the pipeline
    sets the control's `resume` and the stage-2 recipes' `init_from` to stage 1's final
    checkpoint."""
    from olmo2.data.arithmetic import heldout_problems
    from olmo2.eval.arithmetic import baselines
    from olmo2.eval.report import experiment_report
    from olmo2.eval.valset import build_valset
    from olmo2.tokenizer import Tokenizer
    from olmo2.train.soup import soup
    t_start, c_start = time.perf_counter(), time.process_time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data_root = Path(data_root) if data_root is not None else out / "data"
    tok = Tokenizer.from_file(corpus.tokenizer)
    if len(stage2) < 2:
        raise Olmo2Error("replicate: a soup needs at least 2 stage-2 seeds")

    log("step 1/7: data")
    shares = source_bytes(corpus.train_jsonl)
    problems = heldout_problems(spec.arith, spec.split, spec.arith_heldout)
    if len({tuple(p["key"]) for p in problems}) < spec.min_heldout:
        raise Olmo2Error(f"replicate: only {len(problems)} distinct held-out arithmetic problems in the "
                         f"{spec.split} split; need {spec.min_heldout} (raise ArithTask.max_operand)")
    train_probs = prepare_data(corpus, data_root, spec, shares, problems, progress)
    passages = build_valset(corpus.val_jsonl, shares, spec.split, spec.val_bytes, spec.val_max_chars)

    log("step 2/7: stage 1 (pretraining on demo text + a little arithmetic)")
    stage1 = _fit_model(stage1, tok)
    s1 = run_stage(stage1, out / "stage1", tok)

    log("step 3/7: control arm (stage 1 continued for stage 2's step count)")
    control = _fit_model(control, tok)
    from olmo2.train.state import latest_checkpoint
    # resume an interrupted control run from its own latest checkpoint, else from stage 1's
    resume = "auto" if latest_checkpoint(out / "control") else s1["checkpoint"]
    control = control.replace(train=control.train.replace(resume=resume))
    sc = run_stage(control, out / "control", tok, start_tokens=s1["tokens"])

    log(f"step 4/7: stage 2 × {len(stage2)} seeds (anneal on demo text + more arithmetic)")
    s2 = []
    for r in stage2:
        r = _fit_model(r, tok)
        r = r.replace(train=r.train.replace(init_from=s1["checkpoint"]))
        s2.append(run_stage(r, out / f"stage2-seed{r.train.seed}", tok))

    log("step 5/7: soup of the stage-2 ingredients")
    soup_dir = out / "soup"
    t0 = time.perf_counter()
    if not (soup_dir / "soup.json").exists():
        soup([s["hf"] for s in s2], soup_dir, progress=False)
    soup_wall = time.perf_counter() - t0

    log(f"step 6/7: evaluation on the {spec.split} split ({len(passages)} passages, "
        f"{len(problems)} arithmetic problems)")
    seq = stage1.train.seq_len
    names = ["stage 1", "control"] + [f"anneal seed {r.train.seed}" for r in stage2] + [f"soup of {len(s2)}"]
    dirs = [s1["hf"], sc["hf"]] + [s["hf"] for s in s2] + [str(soup_dir)]
    evals = {n: evaluate(d, tok, passages, problems, seq) for n, d in zip(names, dirs)}
    runs = {"stage 1": s1, "control": sc, **{n: s for n, s in zip(names[2:-1], s2)},
            names[-1]: {"wall_s": soup_wall, "hf": str(soup_dir)}}

    from olmo2.eval.stage_olmes import olmes_rows
    log("step 6/7: OLMES tasks (GSM8K, TruthfulQA) on every model")
    olmes_text, olmes = olmes_rows(spec.olmes, dict(zip(names, dirs)), out / "olmes", progress)

    log("step 7/7: report")
    base = baselines(train_probs, problems)
    t2 = stage2[0].train
    n_keys = len({tuple(p["key"]) for p in train_probs})
    notes = [
        f"model: d_model {stage1.model.d_model}, {stage1.model.n_layers} layers, {stage1.model.n_heads} heads, "
        f"MLP {stage1.model.d_ff}, vocab {stage1.model.vocab_size}; {stage1.train.global_batch_size}×"
        f"{stage1.train.seq_len} tokens per step",
        f"stage 1: {stage1.notes}; peak LR {stage1.train.lr:g}, cosine toward {stage1.train.alpha_f}×, cut at "
        f"{stage1.train.max_steps * stage1.train.global_batch_size * stage1.train.seq_len / stage1.train.t_max_tokens:.0%}"
        f" of t_max (as the 1B's 4T of 5e12)",
        f"control: {control.notes}; the LR continues on stage 1's cosine",
        f"stage 2: {stage2[0].notes.rsplit(', seed', 1)[0]}; LR {t2.lr:.4g} (stage 1's final LR) linearly to 0; "
        f"warm start with AdamW moments; seeds {', '.join(str(r.train.seed) for r in stage2)}",
        f"arithmetic: {len(problems)} distinct held-out ({spec.split} split) two-step problems (a + b ± c, "
        f"operands 1..{spec.arith.max_operand}, worked in two equations); training documents "
        f"{len(train_probs):,} drawn from {n_keys:,} train-split problems; no held-out problem is a training "
        f"problem (by the hash split, and asserted on the lists); greedy, exact match of the last number",
        "the anneal's demo text is drawn from the same tokenized sample that stage 1 reads, so part of it "
        "repeats stage-1 text (as Dolmino's web part overlaps OLMo-mix); the control reads only fresh "
        "stage-1 text, which if anything favours the control",
        "intervals are 95%: Wilson for accuracies; percentile bootstrap over validation passages "
        f"({spec.n_boot} resamples) for bpb, paired (same passages) for differences between models; "
        "they cover evaluation noise only, not training-seed noise (compare the seeds for that)",
        f"this report scores the {spec.split} split" + (" (a tuning run)" if spec.split == "dev" else "")
        + (f"; {provenance}" if provenance else ""),
        "final train loss = mean CE of the stage's last 10 steps (stage 2 trains on a different, "
        "arithmetic-richer mix, so its train loss is not comparable with the control's)",
        f"total wall time {time.perf_counter() - t_start:.0f} s, this process's CPU time "
        f"{time.process_time() - c_start:.0f} s",
    ]
    report, checks = experiment_report(f"{title} ({spec.split} split)", evals, runs, base, passages, spec.n_boot, notes,
                                       plot_path=out / "loss_curves.png", stage1_tokens=s1["tokens"])
    prompts = list(spec.sample_prompts) + ["Question: " + problems[0]["question"] + "\nAnswer:"]
    per_model = {n: sample_generations(Path(d), tok, prompts, spec.sample_new_tokens) for n, d in zip(names, dirs)}
    samples = per_model[names[-1]]  # the soup's: what print_result shows
    memo = memorisation(out / "trace-index", [data_root / "demo", data_root / "arith"], per_model, progress)
    report += olmes_text + memorisation_section(memo, prompts)
    report_path = out / "report.md"
    with atomic_file(report_path) as f:
        f.write(report)
    results = {"evals": {n: {k: v for k, v in e.items() if k not in ("nll", "bytes", "hits")}
                         for n, e in evals.items()},
               "checks": [c.__dict__ for c in checks], "samples": samples, "final_model": str(soup_dir),
               "samples_by_model": per_model, "memorisation": memo, "olmes": olmes,
               "runs": runs, "val_composition": dict(Counter(p.source for p in passages))}
    with atomic_file(out / "results.json") as f:
        json.dump(results, f, indent=2)
    return PipelineResult(out, soup_dir, report_path, report, evals, checks, samples)


# ---- the named replications -----------------------------------------------------------
def tiny_pipeline_args(out_dir: str | Path, quick: bool = False, split: str = "test"):
    """(corpus, stage1, control, stage2 list, spec) of `--recipe tiny` on the demo corpus."""
    from olmo2.data.demo import build_demo_corpus
    from olmo2.recipes.tiny import BATCH, SEEDS, SEQ_LEN, STEPS, tiny_control, tiny_stage1, tiny_stage2
    demo = build_demo_corpus()
    if demo.tokenizer_path is None:
        raise Olmo2Error("demo corpus has no tokenizer.json; run `olmo2 data demo --vocab-size 8192`")
    root = str(Path(out_dir) / "data")
    corpus = Corpus(demo.train_path, demo.val_path, demo.tokenizer_path, demo.manifest_path)
    s1 = tiny_stage1(root, quick=quick)
    ctl = tiny_control(None, root, quick=quick)
    s2 = [tiny_stage2(seed, root, quick=quick) for seed in SEEDS]
    # stage 1 + control read (N1 + N2) steps of demo text, each anneal N2 more: a sample
    # of twice that keeps the anneal's repeats of stage-1 text moderate
    n1, n2 = STEPS[quick]
    # the dev split (tuning only) is smaller; the report's test split must hold >= 500
    spec = EvalSpec(split=split, demo_tokens=2 * (n1 + n2) * BATCH * SEQ_LEN,
                    min_heldout=500 if split == "test" else 200)
    return corpus, s1, ctl, s2, spec


REPLICATIONS = {"tiny": tiny_pipeline_args}


def default_out(recipe: str, quick: bool) -> str:
    """Where `olmo2 replicate` writes when no --out is given."""
    return f"runs/replicate-{recipe}{'-quick' if quick else ''}"


def replicate(recipe: str = "tiny", out_dir: str | Path | None = None, quick: bool = False,
              split: str = "test") -> PipelineResult:
    """Run a named replication (only `tiny` runs on a CPU) and return its result."""
    if recipe not in REPLICATIONS:
        raise Olmo2Error(f"unknown replication {recipe!r}; choose one of: {', '.join(REPLICATIONS)} "
                         f"(the published recipes need a cluster: use `olmo2 train --recipe olmo2_1b_stage1`)")
    out_dir = Path(out_dir or default_out(recipe, quick))
    corpus, s1, ctl, s2, spec = REPLICATIONS[recipe](out_dir, quick, split)
    from olmo2.recipes.tiny import PROVENANCE
    return run_pipeline(out_dir, corpus, s1, ctl, s2, spec, data_root=out_dir / "data",
                        title=f"OLMo 2 {recipe} replication{' (quick)' if quick else ''}",
                        provenance=PROVENANCE)


def print_result(res: PipelineResult) -> None:
    print(res.report)
    print("## Sample generations from the final model (soup)\n")
    for s in res.samples:
        print(f"prompt: {s['prompt']!r}")
        print(f"  greedy : {s['greedy']!r}")
        print(f"  sampled: {s['sampled']!r}  (T=0.8, top-p 0.95, seed 0)\n")
    print(f"report: {res.report_path}")
    print(f"final model (HF format, with tokenizer): {res.final_model}")
    print(f"  try: olmo2 generate --model {res.final_model} --prompt 'To be, or not to be' --temperature 0")
    print(f"       olmo2 chat --model {res.final_model}")
    if shutil.which("olmo2") is None:
        hint = ".venv/bin/olmo2" if Path(".venv/bin/olmo2").exists() else "`pip install -e .`"
        print(f"  (olmo2 is not on PATH: use {hint}, or activate the venv: . .venv/bin/activate)")
