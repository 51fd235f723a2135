"""Bits-per-byte tasks (olmo2/eval/bpb_tasks.py) against a plain transformers forward.

The reference for each document's bpb is computed here from `Olmo2ForCausalLM`'s logits on
the same token ids (no olmo2 scoring code involved): −Σ log p(continuation) / bytes · log₂ e,
the formula of ai2-olmo-eval's `metric_type="bpb"`; the task's value is their mean.
"""
from __future__ import annotations

import math

import pytest
import torch

from olmo2.eval.bpb_tasks import BPB_TASKS, bits_per_byte, load_bpb_task, run_bpb_task
from olmo2.eval.run import TASKS
from olmo2.eval.task_types import EvalOptions


def test_formula_and_registry():
    # 3 bytes predicted with total log-prob ln(1/8) = 3 bits → 1 bit per byte
    assert bits_per_byte(math.log(1 / 8), "abc") == pytest.approx(1.0)
    assert bits_per_byte(math.log(1 / 8), " é") == pytest.approx(1.0)  # bytes, not characters
    assert {n for n in TASKS if n.endswith("_bpb")} == set(BPB_TASKS)


@pytest.mark.parametrize("name", sorted(BPB_TASKS))
def test_every_task_reads_from_the_wheel(wheel, name):
    task, variant, docs = load_bpb_task(name)
    assert docs and all(cont for _, _, cont in docs)
    assert [d for d, _, _ in docs] == sorted(d for d, _, _ in docs)


def test_native_bpb_equals_a_transformers_forward(tmp_path, wheel):
    transformers = pytest.importorskip("transformers")
    from eval_fixtures import make_checkpoint
    from olmo2.eval.scoring import encode_pair, load_backend
    ck = make_checkpoint(tmp_path / "m", max_seq_len=4096, n_layers=1)
    backend = load_backend("native", str(ck))
    data = load_bpb_task("lambada_bpb")
    out = run_bpb_task(backend, EvalOptions(limit=6, progress=False), "lambada_bpb", data)
    assert out.settings["too_long_items"] == 0 and len(out.predictions) == 6
    ref_model = transformers.AutoModelForCausalLM.from_pretrained(ck).eval()
    want = []
    for doc_id, ctx, cont in data[2][:6]:
        c, x = encode_pair(backend.encode, ctx, cont)
        ids = torch.tensor([c + x])
        with torch.no_grad():
            logp = torch.log_softmax(ref_model(ids).logits[0].double(), -1)
        lp = sum(float(logp[len(c) - 1 + i, t]) for i, t in enumerate(x))
        want.append(-lp / len(cont.encode("utf-8")) / math.log(2))
    got = [p["bpb"] for p in out.predictions]
    assert got == pytest.approx(want, rel=1e-4)
    assert out.metric("bpb").value == pytest.approx(sum(want) / 6, rel=1e-4)
    # the hf backend gives the same values through its own scoring path
    hf = run_bpb_task(load_backend("hf", str(ck)), EvalOptions(limit=6, progress=False), "lambada_bpb", data)
    assert [p["bpb"] for p in hf.predictions] == pytest.approx(got, rel=1e-4)


def test_documents_that_do_not_fit_are_skipped_and_counted(tmp_path, wheel):
    from eval_fixtures import make_checkpoint
    from olmo2.eval.scoring import load_backend
    ck = make_checkpoint(tmp_path / "m", max_seq_len=256, n_layers=1)
    out = run_bpb_task(load_backend("native", str(ck)), EvalOptions(limit=4, progress=False), "gsm8k_bpb",
                       load_bpb_task("gsm8k_bpb"))  # 8-shot prompts: ~900 tokens, none fit 256
    assert out.settings["too_long_items"] == 4 and out.predictions == []
    assert math.isnan(out.metric("bpb").value)
