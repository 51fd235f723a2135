"""Verifiable rewards for RLVR: plain functions from (completion, ground truth) to a reward.

    from olmo2.post.verifiers import gsm8k_reward, ifeval_reward, reward
    gsm8k_reward("... so she pays $1,250.", "1250")            # 10.0
    gsm8k_reward("The answer is 3.50", "#### 3.5")              # 10.0 (numbers compare as numbers)
    ifeval_reward("all lower case", {"instruction_id": "change_case:english_lowercase"})  # 10.0
    reward("gsm8k", completion, "72")                           # dispatch on an RLVR row's `dataset`

Rewards are `VERIFIED_REWARD` (10.0, open-instruct's `verification_reward`, which the OLMo 2
RLVR runs used; facts §5) for a verified answer and 0.0 otherwise: no partial credit, no
format bonus.

GSM8K / arithmetic: the LAST number in the completion is the answer, as open-instruct's
`verify_gsm8k_sample` and OLMES's GSM8K extraction take it. Where we deliberately differ
from open-instruct (which compares the last regex match as a *string*):
- thousands separators `1,250` are removed only between digit groups of three (so a list
  `3,4` stays two numbers, as a human reads it);
- a leading minus is kept: open-instruct's `[-+]?\\d*\\.\\d+|\\d+` drops the sign of an
  integer (`-5` → `5`), which would reward a wrong sign;
- numbers compare by value with `Decimal`: `3.50` == `3.5`, `7.0` == `7`, `.5` == `0.5`,
  `$`, `%` and a sentence's trailing period do not matter;
- a ground truth in GSM8K's `... #### 72` form uses the text after the last `####`.

IFEval-style constraints: a constraint is a dict with `instruction_id` (IFEval's names)
and its arguments; `ifeval_reward` rewards only when EVERY constraint of a list holds
(IFEval's strict "prompt-level" accuracy). Checked kinds: see `CONSTRAINTS`. Each checker
follows the `check_following` of google-research/instruction_following_eval
(instructions.py, instructions_util.py; read 2026-11-29, our own code):
- `english_lowercase` / `english_capital`: `str.islower()` / `str.isupper()`, so a reply
  needs at least one cased letter ("123" and "" fail both); IFEval also asks langdetect for
  English, which we do not (no model dependency for a case check);
- `number_words`: words are `\\w+` runs, as IFEval's `count_words` (nltk's RegexpTokenizer
  `\\w+`): "don't" is two words, "3 + 4 = 7" three;
- `end_checker`: the reply stripped of whitespace and then of double quotes, lower-cased,
  ends with the phrase (stripped, lower-cased);
- `keywords:existence` / `keywords:frequency`: case-insensitive *substring* matches, as
  IFEval's `re.search(keyword, ...)` (so "cat" is found in "category"; the keyword is
  escaped, IFEval's is a raw pattern: same on plain words); `forbidden_words` alone uses
  word boundaries `\\b...\\b`, as IFEval does;
- `quotation`: stripped reply of length > 1 that starts and ends with `"`;
- `number_sentences`: split after `.`/`!`/`?` + whitespace (IFEval uses nltk's punkt model;
  counts agree on plain prose, differ on abbreviations).
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation

from olmo2.errors import DataError

VERIFIED_REWARD = 10.0

# A number: optional sign, digits with optional ,-grouped thousands, optional decimals,
# or a bare decimal like .5. The sign must not follow a word character ("3-4" is a range
# or a subtraction: the second number is 4, not -4).
_NUMBER = re.compile(r"(?<![\w.])[-−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<![\w.])[-−]?\.\d+|\d+(?:\.\d+)?")


def extract_last_number(text: str) -> Decimal | None:
    """The last number in `text` as a Decimal (None when it holds no number)."""
    matches = _NUMBER.findall(text)
    for raw in reversed(matches):
        s = raw.replace(",", "").replace("−", "-")
        try:
            return Decimal(s)
        except InvalidOperation:  # defensive: the regex only matches parseable forms
            continue
    return None


def parse_ground_truth(truth: str | int | float) -> Decimal:
    """A GSM8K/arithmetic ground truth (`72`, `1,250`, `... #### 72`) as a Decimal."""
    s = str(truth)
    if "####" in s:
        s = s.rsplit("####", 1)[1]
    n = extract_last_number(s)
    if n is None:
        raise DataError(f"ground_truth {truth!r}: expected a number (or GSM8K's '... #### N')")
    return n


def gsm8k_correct(completion: str, truth: str | int | float) -> bool:
    """Whether the completion's last number equals the ground truth by value."""
    got = extract_last_number(completion)
    return got is not None and got == parse_ground_truth(truth)


def gsm8k_reward(completion: str, truth: str | int | float) -> float:
    """10.0 when the last number of `completion` equals `truth`, else 0.0."""
    return VERIFIED_REWARD if gsm8k_correct(completion, truth) else 0.0


# ---- IFEval-style constraints ---------------------------------------------------------
_WORD = re.compile(r"\w+")


def _relation(count: int, relation: str, n: int) -> bool:
    # IFEval's two relations; anything else is a data error, not a silent False
    if relation == "less than":
        return count < n
    if relation == "at least":
        return count >= n
    raise DataError(f"relation {relation!r}: use 'less than' or 'at least'")


def _lowercase(text: str, **_) -> bool:
    return text.islower()


def _uppercase(text: str, **_) -> bool:
    return text.isupper()


def _no_comma(text: str, **_) -> bool:
    return "," not in text


def count_words(text: str) -> int:
    """Words as IFEval counts them: runs of `\\w` characters."""
    return len(_WORD.findall(text))


def _number_words(text: str, relation: str, num_words: int, **_) -> bool:
    return _relation(count_words(text), relation, int(num_words))


def _number_sentences(text: str, relation: str, num_sentences: int, **_) -> bool:
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]
    return _relation(len(sentences), relation, int(num_sentences))


def _end_checker(text: str, end_phrase: str, **_) -> bool:
    return text.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def _keywords_existence(text: str, keywords: list[str], **_) -> bool:
    return all(re.search(re.escape(k), text, flags=re.IGNORECASE) for k in keywords)


def _keyword_frequency(text: str, keyword: str, frequency: int, relation: str, **_) -> bool:
    return _relation(len(re.findall(re.escape(keyword.strip()), text, flags=re.IGNORECASE)), relation, int(frequency))


def _forbidden_words(text: str, forbidden_words: list[str], **_) -> bool:
    low = text.lower()
    return not any(re.search(r"\b" + re.escape(w.lower()) + r"\b", low) for w in forbidden_words)


def _bullet_lists(text: str, num_bullets: int, **_) -> bool:
    # IFEval: markdown bullets `* ` or `- ` at a line start; exactly num_bullets of them
    bullets = re.findall(r"^\s*[*-]\s", text, flags=re.MULTILINE)
    return len(bullets) == int(num_bullets)


def _json_format(text: str, **_) -> bool:
    s = text.strip()
    if s.startswith("```"):  # IFEval accepts a fenced block
        s = re.sub(r"^```(?:json|Json|JSON)?\s*|\s*```$", "", s)
    try:
        json.loads(s)
    except ValueError:
        return False
    return True


def _quotation(text: str, **_) -> bool:
    s = text.strip()
    return len(s) > 1 and s[0] == '"' and s[-1] == '"'


CONSTRAINTS: dict[str, Callable[..., bool]] = {
    "change_case:english_lowercase": _lowercase,
    "change_case:english_capital": _uppercase,
    "punctuation:no_comma": _no_comma,
    "length_constraints:number_words": _number_words,
    "length_constraints:number_sentences": _number_sentences,
    "startend:end_checker": _end_checker,
    "startend:quotation": _quotation,
    "keywords:existence": _keywords_existence,
    "keywords:frequency": _keyword_frequency,
    "keywords:forbidden_words": _forbidden_words,
    "detectable_format:number_bullet_lists": _bullet_lists,
    "detectable_format:json_format": _json_format,
}


def check_constraint(text: str, constraint: dict) -> bool:
    """Whether `text` satisfies one IFEval-style constraint {instruction_id, **kwargs}."""
    if not isinstance(constraint, dict) or "instruction_id" not in constraint:
        raise DataError(f"constraint {constraint!r}: expected an object with 'instruction_id'")
    iid = constraint["instruction_id"]
    fn = CONSTRAINTS.get(iid)
    if fn is None:
        raise DataError(f"constraint instruction_id {iid!r}: not supported; use one of {', '.join(CONSTRAINTS)}")
    kwargs = {k: v for k, v in constraint.items() if k != "instruction_id"}
    try:
        return bool(fn(text, **kwargs))
    except TypeError as e:  # a missing argument (num_words, end_phrase, ...)
        raise DataError(f"constraint {iid}: {e}") from None


def ifeval_reward(completion: str, constraints: dict | list[dict] | str) -> float:
    """10.0 when every constraint holds (a JSON string is parsed first), else 0.0."""
    if isinstance(constraints, str):
        try:
            constraints = json.loads(constraints)
        except ValueError:
            raise DataError(f"ground_truth {constraints[:60]!r}: expected IFEval constraints as JSON") from None
    items = constraints if isinstance(constraints, list) else [constraints]
    return VERIFIED_REWARD if all(check_constraint(completion, c) for c in items) else 0.0


VERIFIERS: dict[str, Callable[[str, object], float]] = {
    "gsm8k": gsm8k_reward,
    "arithmetic": gsm8k_reward,
    "ifeval": ifeval_reward,
}


def reward(dataset: str, completion: str, ground_truth) -> float:
    """The reward of `completion` under the verifier named by an RLVR row's `dataset`."""
    fn = VERIFIERS.get(str(dataset).lower())
    if fn is None:
        raise DataError(f"dataset {dataset!r}: no verifier; use one of {', '.join(VERIFIERS)}")
    return fn(completion, ground_truth)
