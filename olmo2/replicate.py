"""`olmo2 replicate --recipe tiny [--quick] [--out DIR]`: the whole OLMo 2 recipe, offline.

Pipeline (`run_pipeline`), each step skipped when its output already exists:

1. data     demo corpus (`build_demo_corpus`, cached) → token shards `data/demo/`; easy
            arithmetic problems (train split) → `data/raw/arith.jsonl` → `data/arith/`
2. stage 1  pretrain on the demo text (`tiny_stage1`) → `stage1/` (+ `stage1/hf`)
3. stage 2  per seed: warm start from the stage-1 checkpoint (weights + AdamW moments),
            LR linear from stage 1's final LR to 0 on demo text + arithmetic → `stage2-seedS/`
4. soup     uniform average of the stage-2 ingredients → `soup/` (the final HF model)
5. eval     val bits-per-byte (capped demo val split) and held-out arithmetic exact match,
            for the end of stage 1, every ingredient and the soup
6. report   `report.md` (table + three checks), `loss_curves.png`, `results.json`; then
            sample generations from the soup, and the path of the final model.

The three checks (what the OLMo 2 paper claims of mid-training + souping, measured):
(a) stage 2 lowers val bpb vs the end of stage 1; (b) stage 2 raises arithmetic accuracy;
(c) the soup's val bpb is ≤ the mean of its ingredients'.

`run_pipeline` takes the corpus, recipes and eval sizes as arguments, so a test runs the
very same code on a tiny synthetic corpus in seconds. Footgun: a stage is "done" when its
`summary.json` exists; change a recipe → use a fresh `--out` (or delete that stage dir).
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from olmo2.errors import Olmo2Error
from olmo2.fsio import atomic_file
from olmo2.recipes import Recipe


@dataclass(frozen=True)
class Corpus:
    """Raw text for the run: train/val JSONL ({"text": ...} per line) and a tokenizer.json."""
    train_jsonl: Path
    val_jsonl: Path
    tokenizer: Path


@dataclass(frozen=True)
class EvalSpec:
    """Sizes of the data and evals (capped for speed; all deterministic)."""
    arith_train_problems: int = 20000
    arith_test_problems: int = 200
    max_operand: int = 20
    bpb_docs: int = 40
    bpb_chars: int = 3000
    sample_prompts: tuple[str, ...] = ("To be, or not to be", "My fellow citizens,")
    sample_new_tokens: int = 40


@dataclass
class PipelineResult:
    out_dir: Path
    final_model: Path
    report_path: Path
    report: str
    rows: list = field(default_factory=list)
    checks: list = field(default_factory=list)
    samples: list = field(default_factory=list)


def log(msg: str) -> None:
    print(f"[replicate] {msg}", file=sys.stderr, flush=True)


# ---- steps ----------------------------------------------------------------------------
def prepare_data(corpus: Corpus, data_root: Path, spec: EvalSpec, progress: bool = True) -> None:
    """Token shards for the demo text and the arithmetic problems (tokenize skips done files)."""
    from olmo2.data.arithmetic import write_jsonl
    from olmo2.data.tokenize import tokenize
    from olmo2.eval.arithmetic import easy_problems
    raw = data_root / "raw" / "arith.jsonl"
    if not raw.exists():
        write_jsonl(easy_problems(spec.arith_train_problems, seed=0, split="train",
                                  max_operand=spec.max_operand), raw)
    for name, src in (("demo", corpus.train_jsonl), ("arith", raw)):
        log(f"tokenizing {src} → {data_root / name}")
        tokenize([str(src)], str(corpus.tokenizer), str(data_root / name), workers=1, progress=progress)


def _fit_model(recipe: Recipe, tok) -> Recipe:
    """Embedding rows and special ids follow the run's tokenizer."""
    from olmo2.config import pad_vocab
    return recipe.replace(model=recipe.model.replace(vocab_size=pad_vocab(tok.vocab_size),
                                                     eos_token_id=tok.eos_id, pad_token_id=tok.pad_id))


def run_stage(recipe: Recipe, run_dir: Path, tok) -> dict:
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
    log(f"{recipe.name} → {run_dir}: {t.max_steps} steps × {t.global_batch_size}×{t.seq_len} tokens, "
        f"LR {t.lr:.3g} ({t.schedule}){', warm start ' + t.init_from if t.init_from else ''}")
    t0 = time.perf_counter()
    res = train(recipe.model, t, loader, run_dir)
    wall = time.perf_counter() - t0
    if res.last_checkpoint is None:
        raise Olmo2Error(f"{recipe.name}: training wrote no checkpoint in {run_dir}")
    hf = export_hf(res.last_checkpoint, run_dir / "hf", tokenizer=tok)
    summary = {"name": recipe.name, "steps": res.step, "tokens": res.tokens, "wall_s": wall,
               "final_loss": final_loss(res.metrics_path), "checkpoint": str(res.last_checkpoint),
               "hf": str(hf), "metrics": str(res.metrics_path)}
    with atomic_file(summary_path) as f:
        json.dump(summary, f, indent=2)
    return summary


def evaluate(model_dir: str | Path, tok, corpus: Corpus, spec: EvalSpec, seq_len: int) -> dict:
    """val bpb and arithmetic accuracy of an HF model directory."""
    from olmo2.checkpoint import load_model
    from olmo2.eval.arithmetic import arithmetic_accuracy, easy_problems, val_bits_per_byte
    model = load_model(model_dir)
    t0 = time.perf_counter()
    bpb = val_bits_per_byte(model, tok, corpus.val_jsonl, spec.bpb_docs, spec.bpb_chars, max_len=seq_len)
    probs = easy_problems(spec.arith_test_problems, seed=0, split="test", max_operand=spec.max_operand)
    acc, outs = arithmetic_accuracy(model, tok, probs, return_outputs=True)
    log(f"eval {model_dir}: val bpb {bpb:.4f}, arithmetic {acc:.1%} ({time.perf_counter() - t0:.0f} s); "
        f"e.g. {probs[0]['question']!r} → {outs[0]!r}")
    return {"val_bpb": bpb, "arith_acc": acc, "example": [probs[0]["question"], outs[0]]}


def _join(evals: list[dict], key: str, fmt: str) -> str:
    return ", ".join(format(e[key], fmt) for e in evals)


def checks_of(s1: dict, ingredients: list[dict], soup: dict):
    from olmo2.eval.report import Check
    mean_bpb = sum(e["val_bpb"] for e in ingredients) / len(ingredients)
    mean_acc = sum(e["arith_acc"] for e in ingredients) / len(ingredients)
    worst_bpb = max(e["val_bpb"] for e in ingredients)
    return [
        Check("(a) stage 2 lowers validation bpb vs end of stage 1",
              worst_bpb < s1["val_bpb"] and soup["val_bpb"] < s1["val_bpb"],
              f"stage 1 {s1['val_bpb']:.4f} → ingredients {_join(ingredients, 'val_bpb', '.4f')} "
              f"(mean {mean_bpb:.4f}), soup {soup['val_bpb']:.4f}"),
        Check("(b) stage 2 raises arithmetic accuracy over end of stage 1",
              min(e["arith_acc"] for e in ingredients) > s1["arith_acc"] and soup["arith_acc"] > s1["arith_acc"],
              f"stage 1 {s1['arith_acc']:.1%} → ingredients "
              f"{_join(ingredients, 'arith_acc', '.1%')} (mean {mean_acc:.1%}), "
              f"soup {soup['arith_acc']:.1%}"),
        Check("(c) soup is at least as good as the mean of its ingredients (val bpb ≤ mean)",
              soup["val_bpb"] <= mean_bpb + 1e-9,
              f"soup {soup['val_bpb']:.4f} vs mean {mean_bpb:.4f} (best ingredient "
              f"{min(e['val_bpb'] for e in ingredients):.4f})"),
    ]


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


# ---- the pipeline ---------------------------------------------------------------------
def run_pipeline(out_dir: str | Path, corpus: Corpus, stage1: Recipe, stage2: list[Recipe],
                 spec: EvalSpec = EvalSpec(), data_root: str | Path | None = None,
                 title: str = "OLMo 2 tiny replication", progress: bool = True) -> PipelineResult:
    """Data → stage 1 → stage 2 × seeds → soup → eval → report (see the module docstring).

    The recipes' data mixes must point at `data_root` (default out_dir/data); stage-2
    recipes get init_from = stage 1's final checkpoint here."""
    from olmo2.eval.report import StageRow, plot_loss_curves, render_markdown
    from olmo2.tokenizer import Tokenizer
    from olmo2.train.soup import soup
    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data_root = Path(data_root) if data_root is not None else out / "data"
    tok = Tokenizer.from_file(corpus.tokenizer)

    log("step 1/6: data")
    prepare_data(corpus, data_root, spec, progress)

    log("step 2/6: stage 1 (pretraining on demo text)")
    stage1 = _fit_model(stage1, tok)
    s1 = run_stage(stage1, out / "stage1", tok)

    log(f"step 3/6: stage 2 × {len(stage2)} seeds (anneal on demo text + arithmetic)")
    s2 = []
    for r in stage2:
        r = _fit_model(r, tok)
        r = r.replace(train=r.train.replace(init_from=s1["checkpoint"]))
        s2.append(run_stage(r, out / f"stage2-seed{r.train.seed}", tok))

    log("step 4/6: soup of the stage-2 ingredients")
    soup_dir = out / "soup"
    t0 = time.perf_counter()
    if not (soup_dir / "soup.json").exists():
        soup([s["hf"] for s in s2], soup_dir, progress=False)
    soup_wall = time.perf_counter() - t0

    log("step 5/6: evaluation (val bpb, arithmetic exact match)")
    seq = stage1.train.seq_len
    e1 = evaluate(s1["hf"], tok, corpus, spec, seq)
    e2 = [evaluate(s["hf"], tok, corpus, spec, seq) for s in s2]
    es = evaluate(soup_dir, tok, corpus, spec, seq)

    log("step 6/6: report")
    rows = [StageRow("stage 1 (pretrain)", s1["tokens"], s1["final_loss"], e1["val_bpb"], e1["arith_acc"],
                     s1["wall_s"], s1["hf"])]
    for r, s, e in zip(stage2, s2, e2):
        rows.append(StageRow(f"stage 2 seed {r.train.seed}", s["tokens"], s["final_loss"], e["val_bpb"],
                             e["arith_acc"], s["wall_s"], s["hf"]))
    rows.append(StageRow(f"soup of {len(s2)}", None, None, es["val_bpb"], es["arith_acc"], soup_wall, str(soup_dir)))
    checks = checks_of(e1, e2, es)
    curves = {"stage 1": s1["metrics"], **{f"stage 2 seed {r.train.seed}": s["metrics"] for r, s in zip(stage2, s2)}}
    offsets = {k: (0 if k == "stage 1" else s1["tokens"]) for k in curves}
    png = plot_loss_curves(curves, offsets, out / "loss_curves.png")
    t2 = stage2[0].train
    notes = [
        f"model: d_model {stage1.model.d_model}, {stage1.model.n_layers} layers, {stage1.model.n_heads} heads, "
        f"MLP {stage1.model.d_ff}, vocab {stage1.model.vocab_size}; {stage1.train.global_batch_size}×"
        f"{stage1.train.seq_len} tokens per step",
        f"stage 1: {stage1.notes}; peak LR {stage1.train.lr:g}, cosine toward {stage1.train.alpha_f}×, cut at "
        f"{stage1.train.max_steps * stage1.train.global_batch_size * stage1.train.seq_len / stage1.train.t_max_tokens:.0%} "
        f"of t_max (as the 1B's 4T of 5e12)",
        f"stage 2: {stage2[0].notes.rsplit(', seed', 1)[0]}; LR {t2.lr:.4g} (stage 1's final LR) linearly to 0; "
        f"warm start with AdamW moments",
        f"val bpb: first {spec.bpb_docs} docs of {corpus.val_jsonl.name}, ≤ {spec.bpb_chars} chars each; "
        f"arithmetic: {spec.arith_test_problems} held-out add/sub problems (operands ≤ {spec.max_operand}), "
        f"greedy, exact match of the last number",
        "final train loss = mean CE of the stage's last 10 steps",
        f"total wall time {time.perf_counter() - t_start:.0f} s",
    ]
    report = render_markdown(rows, checks, title=title, notes=notes, images=[png.name] if png else [])
    report_path = out / "report.md"
    with atomic_file(report_path) as f:
        f.write(report)
    samples = sample_generations(soup_dir, tok, list(spec.sample_prompts) + [
        "Question: " + e1["example"][0] + "\nAnswer:"], spec.sample_new_tokens)
    results = {"rows": [r.__dict__ for r in rows], "checks": [c.__dict__ for c in checks], "samples": samples,
               "final_model": str(soup_dir)}
    with atomic_file(out / "results.json") as f:
        json.dump(results, f, indent=2)
    return PipelineResult(out, soup_dir, report_path, report, rows, checks, samples)


# ---- the named replications -----------------------------------------------------------
def tiny_pipeline_args(out_dir: str | Path, quick: bool = False):
    """(corpus, stage1, stage2 list, spec) of `--recipe tiny` on the demo corpus."""
    from olmo2.data.demo import build_demo_corpus
    from olmo2.recipes.tiny import SEEDS, tiny_stage1, tiny_stage2
    demo = build_demo_corpus()
    if demo.tokenizer_path is None:
        raise Olmo2Error("demo corpus has no tokenizer.json; run `olmo2 data demo --vocab-size 8192`")
    root = str(Path(out_dir) / "data")
    corpus = Corpus(demo.train_path, demo.val_path, demo.tokenizer_path)
    s1 = tiny_stage1(root, quick=quick)
    s2 = [tiny_stage2(seed, root, quick=quick) for seed in SEEDS]
    return corpus, s1, s2, EvalSpec()


REPLICATIONS = {"tiny": tiny_pipeline_args}


def default_out(recipe: str, quick: bool) -> str:
    """Where `olmo2 replicate` writes when no --out is given."""
    return f"runs/replicate-{recipe}{'-quick' if quick else ''}"


def replicate(recipe: str = "tiny", out_dir: str | Path | None = None, quick: bool = False) -> PipelineResult:
    """Run a named replication (only `tiny` runs on a CPU) and print its report."""
    if recipe not in REPLICATIONS:
        raise Olmo2Error(f"unknown replication {recipe!r}; choose one of: {', '.join(REPLICATIONS)} "
                         f"(the published recipes need a cluster: use `olmo2 train --recipe olmo2_1b_stage1`)")
    out_dir = Path(out_dir or default_out(recipe, quick))
    corpus, s1, s2, spec = REPLICATIONS[recipe](out_dir, quick)
    res = run_pipeline(out_dir, corpus, s1, s2, spec, data_root=out_dir / "data",
                       title=f"OLMo 2 {recipe} replication{' (quick)' if quick else ''}")
    return res


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
