"""RLVR verifiers (olmo2/post/verifiers.py): number formats a model really writes, and
IFEval-style constraints, against values worked out by hand."""
from __future__ import annotations

from decimal import Decimal

import pytest

from olmo2.errors import DataError
from olmo2.post.verifiers import (VERIFIED_REWARD, check_constraint, extract_last_number, gsm8k_reward,
                                  ifeval_reward, parse_ground_truth, reward)


@pytest.mark.parametrize("text, want", [
    ("She pays $1,250 in total.", "1250"),
    ("so the answer is 3.50.", "3.50"),
    ("It drops to -5 degrees", "-5"),
    ("The change is −12", "-12"),          # unicode minus
    ("x = .5", "0.5"),
    ("3-4 = -1", "-1"),
    ("from 3-4 apples", "4"),              # a range: not minus four
    ("lists 3,4 and more", "4"),           # not a thousands group
    ("1,234,567 people", "1234567"),
    ("earned $12.00/hour for 8 hours: 96", "96"),
    ("Step 1: 2+2=4. Step 2: 4*3=12\n#### 12", "12"),
    ("no digits here", None),
    ("50%", "50"),
])
def test_extract_last_number(text, want):
    got = extract_last_number(text)
    assert (got is None and want is None) or got == Decimal(want)


@pytest.mark.parametrize("completion, truth, ok", [
    ("The answer is 3.50", "3.5", True),        # by value, not as strings (open-instruct: "3.50" != "3.5")
    ("The answer is 7.0.", "7", True),
    ("She has $1,000 left.", "1000", True),
    ("She has 1,000 left", "#### 1,000", True),
    ("Natalia sold 48/2 = 24 clips in May. 48+24 = 72\n#### 72", "He sold 48 ... #### 72", True),
    ("It is -5.", "5", False),                  # the sign counts (open-instruct's regex drops it)
    ("It is 5.", "-5", False),
    ("72 is wrong, the answer is 71", "72", False),  # the LAST number is the answer
    ("I don't know", "3", False),
    ("", "0", False),
])
def test_gsm8k_reward(completion, truth, ok):
    assert gsm8k_reward(completion, truth) == (VERIFIED_REWARD if ok else 0.0)
    assert VERIFIED_REWARD == 10.0  # open-instruct's verification_reward, as the OLMo 2 RLVR runs used


def test_ground_truth_must_be_a_number():
    with pytest.raises(DataError, match="ground_truth"):
        parse_ground_truth("seventy-two")
    assert parse_ground_truth(72) == Decimal(72)


@pytest.mark.parametrize("text, constraint, ok", [
    ("all lower case here", {"instruction_id": "change_case:english_lowercase"}, True),
    ("Not lower", {"instruction_id": "change_case:english_lowercase"}, False),
    ("SHOUTING 123", {"instruction_id": "change_case:english_capital"}, True),
    ("no commas at all", {"instruction_id": "punctuation:no_comma"}, True),
    ("one, two", {"instruction_id": "punctuation:no_comma"}, False),
    ("one two three", {"instruction_id": "length_constraints:number_words", "relation": "less than",
                       "num_words": 4}, True),
    ("one two three four", {"instruction_id": "length_constraints:number_words", "relation": "less than",
                            "num_words": 4}, False),
    ("don't stop me now", {"instruction_id": "length_constraints:number_words", "relation": "at least",
                           "num_words": 4}, True),
    ("Hi. How are you? Fine!", {"instruction_id": "length_constraints:number_sentences",
                                "relation": "at least", "num_sentences": 3}, True),
    ("Thanks. Any other questions?  ", {"instruction_id": "startend:end_checker",
                                        "end_phrase": "Any other questions?"}, True),
    ('"quoted"', {"instruction_id": "startend:quotation"}, True),
    ("The cat sat", {"instruction_id": "keywords:existence", "keywords": ["cat", "sat"]}, True),
    ("The category", {"instruction_id": "keywords:existence", "keywords": ["cat"]}, True),  # IFEval: substring
    ("The Cat", {"instruction_id": "keywords:existence", "keywords": ["cat", "dog"]}, False),
    ("a category", {"instruction_id": "keywords:forbidden_words", "forbidden_words": ["cat"]}, True),  # \\b here
    ("a dog", {"instruction_id": "keywords:forbidden_words", "forbidden_words": ["cat"]}, True),
    ("* a\n* b\n- c", {"instruction_id": "detectable_format:number_bullet_lists", "num_bullets": 3}, True),
    ("* a\n* b", {"instruction_id": "detectable_format:number_bullet_lists", "num_bullets": 3}, False),
    ('```json\n{"a": 1}\n```', {"instruction_id": "detectable_format:json_format"}, True),
    ("{a: 1}", {"instruction_id": "detectable_format:json_format"}, False),
])
def test_constraints(text, constraint, ok):
    assert check_constraint(text, constraint) is ok


LOW, CAP = {"instruction_id": "change_case:english_lowercase"}, {"instruction_id": "change_case:english_capital"}
END = {"instruction_id": "startend:end_checker", "end_phrase": "Is there anything else?"}
QUOTE = {"instruction_id": "startend:quotation"}


def _words(rel, n):
    return {"instruction_id": "length_constraints:number_words", "relation": rel, "num_words": n}


def _freq(word, rel, n):
    return {"instruction_id": "keywords:frequency", "keyword": word, "relation": rel, "frequency": n}


@pytest.mark.parametrize("text, constraint, ok", [
    # case: str.islower/isupper as IFEval: digits and punctuation are caseless, one cased letter needed
    ("1 + 2 = 3. so the answer is 3.", LOW, True),
    ("1 + 2 = 3. So the answer is 3.", LOW, False),
    ("123 = 123.", LOW, False), ("", LOW, False), ("   ", CAP, False),
    ("1 + 2 = 3. SO THE ANSWER IS 3.\n", CAP, True),
    ("SO THE ANSWEr IS 3", CAP, False),
    ("ÉTÉ À PARIS", CAP, True),                       # non-ASCII capitals count
    # end phrase: surrounding whitespace, a closing quote, case are ignored; the phrase must be last
    ("So the answer is 3. is there anything ELSE?  \n", END, True),
    ('"So the answer is 3. Is there anything else?"', END, True),
    ("So the answer is 3. Is there anything else? Bye.", END, False),
    ("So the answer is 3. Is there anything else", END, False),   # punctuation is part of the phrase
    ("", END, False),
    # quotes: after stripping whitespace, a double quote at each end, and more than one character
    ('  "So the answer is 3."\n', QUOTE, True), ('"', QUOTE, False), ("'single'", QUOTE, False),
    ('"opened only', QUOTE, False), ("", QUOTE, False),
    # words are \w+ runs (IFEval's count_words): "don't" is 2, "3 + 4 = 7" is 3, punctuation 0
    ("don't", _words("at least", 2), True),
    ("3 + 4 = 7.", _words("less than", 4), True), ("3 + 4 = 7. ok", _words("less than", 4), False),
    ("", _words("less than", 1), True), ("...!", _words("at least", 1), False),
    # keyword frequency: case-insensitive substring count
    ("Apple, apple pie and APPLES", _freq("apple", "at least", 3), True),
    ("Apple, apple pie", _freq("apple", "at least", 3), False),
    ("an apple", _freq("apple", "less than", 2), True),
    ("no commas at all.", {"instruction_id": "punctuation:no_comma"}, True),
    ("", {"instruction_id": "punctuation:no_comma"}, True),
])
def test_constraint_edge_cases(text, constraint, ok):
    assert check_constraint(text, constraint) is ok


def test_ifeval_reward_needs_every_constraint():
    both = [{"instruction_id": "change_case:english_lowercase"}, {"instruction_id": "punctuation:no_comma"}]
    assert ifeval_reward("fine here", both) == 10.0
    assert ifeval_reward("fine, here", both) == 0.0
    assert ifeval_reward("fine here", '[{"instruction_id": "punctuation:no_comma"}]') == 10.0


@pytest.mark.parametrize("constraint, match", [
    ({"instruction_id": "nope:nope"}, "not supported"),
    ({"instruction_id": "length_constraints:number_words"}, "number_words"),
    ({"instruction_id": "length_constraints:number_words", "relation": "about", "num_words": 3}, "relation"),
    ({"kind": "x"}, "instruction_id"),
])
def test_bad_constraints_are_data_errors(constraint, match):
    with pytest.raises(DataError, match=match):
        check_constraint("text", constraint)


def test_dispatch():
    assert reward("gsm8k", "= 4", "4") == 10.0
    assert reward("arithmetic", "= 4", "5") == 0.0
    assert reward("ifeval", "ok", {"instruction_id": "punctuation:no_comma"}) == 10.0
    with pytest.raises(DataError, match="no verifier"):
        reward("math", "x", "1")
