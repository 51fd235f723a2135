"""IFEval-style constraint prompts for the tiny chain: an instruction appended to a question,
the reply that follows it, the realistic reply that does not, and the verifier's spec.

    from olmo2.post.constraint_data import constrain, KINDS
    c = constrain("What is 2 + 3 + 4?", "2 + 3 = 5. 5 + 4 = 9. So the answer is 9.", "end_phrase",
                  random.Random(0), split="train", short="So the answer is 9.")
    c.prompt      # 'What is 2 + 3 + 4? End your reply with the exact phrase "Enjoy the garden."'
    c.reply       # '2 + 3 = 5. 5 + 4 = 9. So the answer is 9. Enjoy the garden.'
    c.spec        # [{"instruction_id": "startend:end_checker", "end_phrase": "Enjoy the garden."}]
    c.violation(rng)   # a reply that breaks it: the plain reply, or a near miss (module docstring)

Why constraints: the tiny model can barely learn more arithmetic after SFT (only ~10% of its
T=1 samples are right), so DPO and RLVR had no signal they could move. Formatting
constraints are what Tülu 3 added to RLVR besides GSM8K/MATH (IFEval-style prompts with
verifiers); they are learnable by a small model and checked exactly by
`olmo2.post.verifiers.check_constraint` (IFEval's definitions).

Kinds (`KINDS`; the IFEval instruction id each one is checked with):
- `lowercase`  (change_case:english_lowercase): the reply lower-cased;
- `capital`    (change_case:english_capital): the reply upper-cased;
- `quotation`  (startend:quotation): the reply in double quotes;
- `end_phrase` (startend:end_checker): the reply, then a closing phrase named in the prompt;
- `max_words`  (length_constraints:number_words, "less than" N): only the short final
  sentence ("So the answer is 9.", 5 words), for N above it and at most the worked reply's
  count, so the worked reply breaks it. Only where a `short` reply is given (arithmetic).

Held-out parameters: the test must measure following a kind, not remembering a phrase. An
end phrase is a template + a NOUN, and the nouns are split into train/dev/test lists
(`NOUNS`); `max_words`'s N is split the same way (`MAX_WORDS`). A split's prompts use only
its own nouns and Ns; `params_of` lists them so `demo_data.check_no_leak` can verify it on
the written files. The instruction wordings are our own (not IFEval's text), two per kind,
shared by all splits.

Violations (DPO's rejected replies), all checked to break the spec:
- `ignored`: the plain reply, as a model that did not read the instruction gives it;
- `near_miss` (quotation, end_phrase only): an opening quote without the closing one; the
  right reply ending in a different end phrase (a copying slip: another noun of the split).
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass

from olmo2.post.verifiers import check_constraint

KINDS = ("lowercase", "capital", "quotation", "end_phrase", "max_words")
SPLITS = ("train", "dev", "test")

NOUNS = {
    "train": ("garden", "river", "book", "song", "game", "trip", "dinner", "lesson", "party", "walk", "movie",
              "story", "holiday", "weekend", "picture", "letter", "house", "school", "city", "music", "bread",
              "winter", "market", "family", "forest", "village", "ocean", "island", "mountain", "castle",
              "picnic", "puzzle", "class", "cake", "poem", "project", "race", "beach"),
    "dev": ("coffee", "journey", "library", "concert", "museum", "painting"),
    "test": ("festival", "summer", "tea", "match", "meal", "visit", "friend", "evening"),
}
"""End-phrase nouns per split (disjoint: asserted below)."""
TEMPLATES = ("Enjoy the {}.", "Thanks for the {}.", "Good luck with the {}.", "Have fun at the {}.",
             "See you at the {}.")
MAX_WORDS = {"train": (6, 8, 10), "dev": (7,), "test": (9,)}
"""`max_words` limits N per split ("less than N" words; the short reply has 5, the worked 11+)."""

_WORDING = {
    "lowercase": ("Write your whole reply in lowercase letters only.", "Use no capital letters in your reply."),
    "capital": ("Write your whole reply in capital letters.", "Reply using only capital letters."),
    "quotation": ("Put your whole reply inside double quotation marks.", "Wrap your reply in double quotes."),
    "end_phrase": ('End your reply with the exact phrase "{}"', 'Finish your reply with these exact words: "{}"'),
    "max_words": ("Reply in fewer than {} words.", "Use less than {} words."),
}
_IDS = {"lowercase": "change_case:english_lowercase", "capital": "change_case:english_capital",
        "quotation": "startend:quotation", "end_phrase": "startend:end_checker",
        "max_words": "length_constraints:number_words"}
KIND_OF = {v: k for k, v in _IDS.items()}
"""IFEval instruction id → our kind name."""

assert not set(NOUNS["train"]) & set(NOUNS["dev"]) and not set(NOUNS["train"]) & set(NOUNS["test"]) \
    and not set(NOUNS["dev"]) & set(NOUNS["test"]), "end-phrase nouns must be disjoint across splits"


@dataclass(frozen=True)
class Constrained:
    """One constrained prompt: what the user asks, the reply that follows it, the verifier spec."""
    kind: str
    prompt: str
    reply: str
    plain: str
    spec: list
    split: str

    def ground_truth(self) -> str:
        """The RLVR `ground_truth`: the spec as JSON (the `ifeval` verifier parses it)."""
        return json.dumps(self.spec, sort_keys=True)

    def violation(self, rng: random.Random) -> tuple[str, str]:
        """(kind of violation, a reply that breaks the spec): see the module docstring."""
        near = self.kind in ("quotation", "end_phrase") and rng.random() < 0.5
        if near and self.kind == "quotation":
            bad = '"' + self.plain
        elif near:
            phrase = self.spec[0]["end_phrase"]
            others = [p for p in _phrases(self.split) if p.split()[-1] != phrase.split()[-1]]
            bad = f"{self.plain} {rng.choice(others)}"
        else:
            bad = self.plain
        if check_constraint(bad, self.spec[0]):
            raise AssertionError(f"violation {bad!r} satisfies {self.spec}")   # a generator bug
        return ("near_miss" if near else "ignored"), bad


def _phrases(split: str) -> list[str]:
    return [t.format(n) for t in TEMPLATES for n in NOUNS[split]]


def kinds_for(short: str | None) -> tuple[str, ...]:
    """The kinds a reply can take (max_words needs a short reply)."""
    return KINDS if short else tuple(k for k in KINDS if k != "max_words")


def constrain(question: str, reply: str, kind: str, rng: random.Random, split: str = "train",
              short: str | None = None) -> Constrained:
    """`question` + an instruction of `kind` with a parameter of `split`, and its reply."""
    if kind not in KINDS or split not in SPLITS:
        raise ValueError(f"kind {kind!r} / split {split!r}: use one of {KINDS} / {SPLITS}")
    wording = rng.choice(_WORDING[kind])
    spec = {"instruction_id": _IDS[kind]}
    if kind == "lowercase":
        out = reply.lower()
    elif kind == "capital":
        out = reply.upper()
    elif kind == "quotation":
        out = f'"{reply}"'
    elif kind == "end_phrase":
        phrase = rng.choice(_phrases(split))
        spec["end_phrase"] = phrase
        wording = wording.format(phrase)
        out = f"{reply} {phrase}"
    else:
        if short is None:
            raise ValueError("max_words needs the short reply")
        from olmo2.post.verifiers import count_words
        lo, hi = count_words(short), count_words(reply)
        ns = [n for n in MAX_WORDS[split] if lo < n <= hi]
        if not ns:
            raise ValueError(f"max_words: no limit of split {split} lies in ({lo}, {hi}] for {reply!r}")
        n = rng.choice(ns)
        spec.update(relation="less than", num_words=n)
        wording = wording.format(n)
        out = short
    sep = "\n" if "\n" in question else " "     # a multiple-choice question ends with its options
    c = Constrained(kind, f"{question}{sep}{wording}", out, reply, [spec], split)
    if not check_constraint(out, spec):
        raise AssertionError(f"constrained reply {out!r} breaks {spec}")   # a generator bug
    return c


def params_of(spec: list) -> set[tuple[str, object]]:
    """The held-out parameters a spec uses: ("noun", end phrase's last word), ("max_words", N)."""
    out = set()
    for c in spec:
        if c.get("instruction_id") == _IDS["end_phrase"]:
            out.add(("noun", c["end_phrase"].rstrip(".").split()[-1].lower()))
        elif c.get("instruction_id") == _IDS["max_words"]:
            out.add(("max_words", int(c["num_words"])))
    return out
