"""lm-eval task directories for the very items `olmo2 eval` scores, so lm-eval is the peer.

    tdir = Path(tmp) / "tasks"
    mc1, mc2 = truthfulqa_tasks(tdir, items, "local_tqa")   # lm-eval's own TruthfulQA YAMLs, local data
    arc = rc_task(tdir, arc_rc_items, "local_arc_rc")        # OLMES RC contexts as a multiple_choice task
    gsm = generate_task(tdir, contexts, "bench_gsm", stops, max_new=32)
    mc = mmlu_tasks(tdir, subjects, "mc", "ref_mmlu")          # lm-eval's own MMLU YAMLs, local data
    simple_evaluate(model=HFLM(...), tasks=[mc1, mc2, arc], task_manager=TaskManager(include_path=str(tdir)))

Used by the slow agreement test (tests/test_eval_lmeval.py) and the speed benchmark
(benchmarks/eval_speed.py): one place that rewrites lm-eval's task files, so both compare
against the same peer setup. TruthfulQA keeps lm-eval's installed YAMLs and utils.py (its
prompt and MC2 code, not ours) and only repoints the dataset at a local JSONL; the RC and
generation tasks are minimal YAMLs over contexts we give, so prompts are identical on both
sides by construction and what differs is only the scoring/generation code. MMLU includes
lm-eval's installed per-subject YAMLs (description, dev split, first_n shots, delimiters,
choices) and overrides only the data location and the query template (OLMES's), so lm-eval
builds the few-shot prompt around our query and tests/test_eval_mmlu_lmeval.py compares.

Needs lm-eval installed (`pip install "lm-eval[hf]==0.4.13"`); imported lazily, never by
`olmo2 eval` itself. Footgun: the YAML rewrite asserts the lines it replaces, so a new
lm-eval release that moves them fails loudly instead of silently downloading the HF dataset.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

_HF_DATASET = "dataset_path: truthfulqa/truthful_qa\ndataset_name: multiple_choice\n"


def _local(path: Path, split: str) -> str:
    return f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    {split}: {path}\n"


def truthfulqa_tasks(tdir: Path, items, name: str) -> tuple[str, str]:
    """lm-eval's truthfulqa_mc1/mc2 on `items` (TQAItem) as tasks `<name>_mc1`, `<name>_mc2`."""
    import lm_eval
    src = Path(lm_eval.__file__).parent / "tasks" / "truthfulqa"
    tdir.mkdir(parents=True, exist_ok=True)
    data = tdir / f"{name}.jsonl"
    data.write_text("".join(json.dumps({
        "question": it.question,
        "mc1_targets": {"choices": [c for c, _ in it.mc1], "labels": [int(t) for _, t in it.mc1]},
        "mc2_targets": {"choices": [c for c, _ in it.mc2], "labels": [int(t) for _, t in it.mc2]}}) + "\n"
        for it in items))
    (tdir / "utils.py").write_text((src / "utils.py").read_text())
    mc1 = (src / "truthfulqa_mc1.yaml").read_text()
    if _HF_DATASET not in mc1:
        raise RuntimeError(f"{src / 'truthfulqa_mc1.yaml'}: its dataset lines moved; update olmo2/eval/lmeval_tasks.py")
    mc1 = mc1.replace(_HF_DATASET, _local(data, "validation"))
    (tdir / f"{name}_mc1.yaml").write_text(mc1.replace("task: truthfulqa_mc1", f"task: {name}_mc1")
                                           .replace("tag:\n  - truthfulqa\n", ""))
    (tdir / f"{name}_mc2.yaml").write_text((src / "truthfulqa_mc2.yaml").read_text()
                                           .replace("task: truthfulqa_mc2", f"task: {name}_mc2")
                                           .replace("include: truthfulqa_mc1.yaml", f"include: {name}_mc1.yaml"))
    return f"{name}_mc1", f"{name}_mc2"


def rc_task(tdir: Path, items, name: str) -> str:
    """A multiple_choice task over OLMES RC items (MCItem): their context, choices without the
    leading space (lm-eval adds the " " target delimiter itself), gold index; metric acc."""
    tdir.mkdir(parents=True, exist_ok=True)
    data = tdir / f"{name}.jsonl"
    data.write_text("".join(json.dumps({"context": it.requests[0][0], "gold": it.gold,
                                        "choices": [c[1:] for _, c in it.requests]}) + "\n" for it in items))
    (tdir / f"{name}.yaml").write_text(
        f"task: {name}\n" + _local(data, "validation") +
        "output_type: multiple_choice\nvalidation_split: validation\ndoc_to_text: '{{context}}'\n"
        "doc_to_target: '{{gold}}'\ndoc_to_choice: '{{choices}}'\nmetric_list:\n  - metric: acc\n")
    return name


def generate_task(tdir: Path, contexts: Sequence[str], name: str, stops: Sequence[str], max_new: int) -> str:
    """A greedy generate_until task over the given prompts with the given stop strings."""
    tdir.mkdir(parents=True, exist_ok=True)
    data = tdir / f"{name}.jsonl"
    data.write_text("".join(json.dumps({"context": c}) + "\n" for c in contexts))
    until = "[" + ", ".join(json.dumps(s) for s in stops) + "]"  # JSON strings are valid YAML flow scalars
    (tdir / f"{name}.yaml").write_text(
        f"task: {name}\n" + _local(data, "test") +
        "output_type: generate_until\ntest_split: test\ndoc_to_text: '{{context}}'\ndoc_to_target: ''\n"
        f"generation_kwargs:\n  until: {until}\n  do_sample: false\n  max_gen_toks: {max_new}\n"
        "metric_list:\n  - metric: exact_match\n")
    return name


# OLMES's queries (oe_eval mmlu.py: make_mcq_prompt / make_cloze_prompt, question not stripped),
# as Jinja over the MMLU doc fields; lm-eval's own are `{{question.strip()}}\nA. ...` and
# `Question: {{question.strip()}}\nAnswer:` (tests/test_eval_mmlu_lmeval.py checks that too).
OLMES_MMLU_QUERY = {
    "mc": "Question: {{question}}\n A. {{choices[0]}}\n B. {{choices[1]}}\n C. {{choices[2]}}\n"
          " D. {{choices[3]}}\nAnswer:",
    "rc": "Question: {{question}}\nAnswer:",
}


def mmlu_tasks(tdir: Path, subjects, fmt: str, name: str) -> list[str]:
    """lm-eval tasks `<name>_<fmt>_<subject>` over MMLUSubject docs (all dev, the given test):
    lm-eval's `mmlu_<subject>.yaml` (MC) or `mmlu_<subject>_continuation.yaml` (RC) included as
    is, with local data, OLMES's query template, 5 shots and, for RC, the MC description that
    OLMES keeps (lm-eval's continuation variant says "questions (with answers)")."""
    import lm_eval
    import yaml  # PyYAML, an lm-eval dependency
    root = Path(lm_eval.__file__).parent / "tasks" / "mmlu"
    tdir.mkdir(parents=True, exist_ok=True)
    names = []
    for s in subjects:
        files = {}
        for split, docs in (("dev", s.dev), ("test", s.test)):
            files[split] = tdir / f"{name}_{s.name}_{split}.jsonl"
            files[split].write_text("".join(json.dumps({"question": d.question, "subject": s.name,
                                                        "choices": list(d.choices), "answer": d.answer}) + "\n"
                                            for d in docs))
        mc_yaml = root / "default" / f"mmlu_{s.name}.yaml"
        inc = mc_yaml if fmt == "mc" else root / "continuation" / f"mmlu_{s.name}.yaml"
        if not mc_yaml.is_file() or not inc.is_file():
            raise RuntimeError(f"{inc}: lm-eval's MMLU task files moved; update olmo2/eval/lmeval_tasks.py")
        task = f"{name}_{fmt}_{s.name}"
        y = (f"include: {inc}\ntask: {task}\ntag: {name}_{fmt}\ndataset_path: json\ndataset_name: null\n"
             + f"dataset_kwargs:\n  data_files:\n    dev: {files['dev']}\n    test: {files['test']}\n"
             + f"doc_to_text: {json.dumps(OLMES_MMLU_QUERY[fmt])}\nnum_fewshot: 5\n")
        if fmt == "rc":  # the description of lm-eval's MC file, which OLMES uses for both formats
            y += f"description: {json.dumps(yaml.safe_load(mc_yaml.read_text())['description'])}\n"
        (tdir / f"{task}.yaml").write_text(y)
        names.append(task)
    return names
