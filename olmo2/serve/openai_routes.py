"""The two generation endpoints: request → engine requests → OpenAI response or SSE stream.

    POST /v1/chat/completions   messages → the model's chat template → tokens
    POST /v1/completions        prompt (text, texts or token ids) → tokens; echo + logprobs

Both validate what pydantic cannot (model name, context room, unsupported options), build
one `GenRequest` per choice (`n`; choice i samples with `seed + i` so choices differ yet
stay reproducible), submit them to the engine and then either collect the events into one
JSON body or forward them as server-sent events (`data: {chunk}` … `data: [DONE]`).

Log-probs come from the model's raw distribution (log-softmax of the logits before
temperature, top-p or a JSON mask), as vLLM reports them by default.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from olmo2.infer.sampling import SamplingParams
from olmo2.serve.app import ApiError, State
from olmo2.serve.engine import Event, GenRequest, Handle, QueueFull
from olmo2.serve.jsonmode import SchemaError

DONE = "data: [DONE]\n\n"


def render_messages(messages) -> list[dict]:
    """API messages → [{role, content}] for the tulu template (`developer` → `system`)."""
    out = []
    for i, m in enumerate(messages):
        content = m.content
        if not isinstance(content, str):
            parts = []
            for j, p in enumerate(content):
                if p.get("type") != "text" or not isinstance(p.get("text"), str):
                    raise ApiError(400, f"messages.{i}.content.{j}: only text parts are supported",
                                   param=f"messages.{i}.content")
                parts.append(p["text"])
            content = "".join(parts)
        out.append({"role": "system" if m.role == "developer" else m.role, "content": content})
    return out


def _common_checks(state: State, body) -> None:
    if body.model != state.name:
        raise ApiError(404, f"model {body.model!r} does not exist; this server serves {state.name!r} "
                       "(see GET /v1/models)", "not_found_error", "model", "model_not_found")
    for name in ("frequency_penalty", "presence_penalty"):
        if getattr(body, name) not in (None, 0):
            raise ApiError(400, f"{name} is not supported by this server; omit it or send 0", param=name)
    if body.logit_bias:
        raise ApiError(400, "logit_bias is not supported by this server; omit it", param="logit_bias")


def _max_tokens(state: State, prompt_len: int, requested: int | None) -> int:
    limit = state.engine.max_request_tokens()
    room = limit - prompt_len
    if room < 1:
        raise ApiError(400, f"the prompt is {prompt_len} tokens; this server allows {limit} tokens per request "
                       "(prompt + completion); shorten it", param="messages", code="context_length_exceeded")
    if requested is None:
        return min(state.cfg.default_max_tokens, room)
    if requested > room:
        raise ApiError(400, f"max_tokens is {requested} but only {room} tokens are left after the "
                       f"{prompt_len}-token prompt (limit {limit}); lower max_tokens",
                       param="max_tokens", code="context_length_exceeded")
    return requested


async def _requests(state: State, body, prompt_ids: list[int], max_tokens: int, logprobs: int | None,
                    prompt_logprobs: bool = False) -> list[GenRequest]:
    temperature = 1.0 if body.temperature is None else float(body.temperature)
    params = SamplingParams(temperature=temperature, top_p=body.top_p).validated()
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if any(not s for s in stop):
        raise ApiError(400, "stop: stop strings must be non-empty", param="stop")
    rf = body.response_format.model_dump() if body.response_format is not None else None
    reqs = []
    for i in range(body.n):
        try:  # compiling a schema is CPU work: keep it off the event loop
            constraint = await run_in_threadpool(state.grammars.constraint, rf) if rf else None
        except SchemaError as e:
            raise ApiError(400, str(e), param="response_format") from None
        seed = None if body.seed is None else body.seed + i
        reqs.append(GenRequest(prompt_ids=prompt_ids, max_tokens=max_tokens, params=params, seed=seed, stop=stop,
                               stop_ids=frozenset([state.tok.eos_id]), logprobs=logprobs,
                               prompt_logprobs=prompt_logprobs, constraint=constraint))
    return reqs


def _submit(state: State, reqs: list[GenRequest]) -> list[Handle]:
    loop = asyncio.get_running_loop()
    handles: list[Handle] = []
    try:
        for r in reqs:
            handles.append(state.engine.submit(r, loop))
    except QueueFull:
        for h in handles:
            h.cancel()
        raise ApiError(429, "the server is at capacity (request queue full); retry after a moment",
                       "rate_limit_error", code="queue_full") from None
    except ValueError as e:
        for h in handles:
            h.cancel()
        raise ApiError(400, str(e), param="max_tokens") from None
    return handles


async def _events(handles: list[Handle]):
    """Merge the handles' events as (choice index, Event) until every choice has finished."""
    merged: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, h: Handle):
        while True:
            ev = await h.queue.get()
            await merged.put((i, ev))
            if ev.finish_reason is not None:
                return
    tasks = [asyncio.create_task(pump(i, h)) for i, h in enumerate(handles)]
    try:
        left = len(handles)
        while left:
            i, ev = await merged.get()
            if ev.finish_reason is not None:
                left -= 1
            yield i, ev
    finally:
        for t in tasks:
            t.cancel()
        for h in handles:  # no-op for finished requests; frees the slot of the others
            h.cancel()


async def _collect(handles: list[Handle], request: Request) -> list[list[Event]]:
    """All events per choice; cancels the requests if the client goes away meanwhile."""
    out: list[list[Event]] = [[] for _ in handles]

    async def run():
        async for i, ev in _events(handles):
            out[i].append(ev)
    task = asyncio.create_task(run())
    while not task.done():
        await asyncio.wait({task}, timeout=0.5)
        if not task.done() and await request.is_disconnected():
            task.cancel()
            for h in handles:
                h.cancel()
            raise asyncio.CancelledError
    task.result()
    for evs in out:
        if evs and evs[-1].finish_reason == "error":
            raise ApiError(500, evs[-1].error or "generation failed", "server_error")
    return out


def _tok_str(state: State, tid: int) -> str:
    return state.tok.decode([tid])


def _chat_logprobs(state: State, evs: list[Event]) -> dict:
    content = []
    for ev in evs:
        for lp in ev.logprobs:
            s = _tok_str(state, lp.token_id)
            content.append({"token": s, "logprob": lp.logprob, "bytes": list(s.encode("utf-8")),
                            "top_logprobs": [{"token": (t := _tok_str(state, i)), "logprob": v,
                                              "bytes": list(t.encode("utf-8"))} for i, v in lp.top]})
    return {"content": content}


def _usage(prompt_tokens: int, completion: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _stream_error(ev: Event) -> str:
    return _sse({"error": {"message": ev.error or "generation failed", "type": "server_error",
                           "param": None, "code": None}})


# ---- /v1/chat/completions -------------------------------------------------------------
async def chat_completions(state: State, body, request: Request):
    state.ready()
    _common_checks(state, body)
    if body.tools:
        raise ApiError(400, "tools are not supported by this server; omit them", param="tools")
    if body.top_logprobs is not None and not body.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    messages = render_messages(body.messages)
    prompt_ids = state.tok.encode(state.tok.apply_chat_template(messages, add_generation_prompt=True))
    max_tokens = _max_tokens(state, len(prompt_ids), body.max_completion_tokens or body.max_tokens)
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    handles = _submit(state, await _requests(state, body, prompt_ids, max_tokens, logprobs))
    rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    head = {"id": rid, "created": created, "model": state.name, "system_fingerprint": None}
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_chat_stream(state, handles, head, len(prompt_ids), include_usage),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    per_choice = await _collect(handles, request)
    choices = []
    for i, evs in enumerate(per_choice):
        choices.append({"index": i, "message": {"role": "assistant", "content": "".join(e.text for e in evs)},
                        "logprobs": _chat_logprobs(state, evs) if logprobs is not None else None,
                        "finish_reason": evs[-1].finish_reason})
    completion = sum(evs[-1].completion_tokens for evs in per_choice)
    return JSONResponse({**head, "object": "chat.completion", "choices": choices,
                         "usage": _usage(len(prompt_ids), completion)})


async def _chat_stream(state: State, handles: list[Handle], head: dict, prompt_tokens: int, include_usage: bool):
    chunk = {**head, "object": "chat.completion.chunk"}
    for i in range(len(handles)):
        yield _sse({**chunk, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                          "logprobs": None, "finish_reason": None}]})
    completion = 0
    async for i, ev in _events(handles):
        if ev.finish_reason == "error":
            yield _stream_error(ev)
            return
        want_lp = handles[i].req.logprobs is not None
        if ev.text or (want_lp and ev.logprobs):
            yield _sse({**chunk, "choices": [{"index": i, "delta": {"content": ev.text},
                                              "logprobs": _chat_logprobs(state, [ev]) if want_lp else None,
                                              "finish_reason": None}]})
        if ev.finish_reason is not None:
            completion += ev.completion_tokens
            yield _sse({**chunk, "choices": [{"index": i, "delta": {}, "logprobs": None,
                                              "finish_reason": ev.finish_reason}]})
    if include_usage:
        yield _sse({**chunk, "choices": [], "usage": _usage(prompt_tokens, completion)})
    yield DONE


# ---- /v1/completions ------------------------------------------------------------------
def _prompts(state: State, prompt) -> list[list[int]]:
    if isinstance(prompt, str):
        return [state.tok.encode(prompt)]
    if prompt and all(isinstance(p, str) for p in prompt):
        return [state.tok.encode(p) for p in prompt]
    V = state.model.config.vocab_size
    if any(t < 0 or t >= V for t in prompt):
        raise ApiError(400, f"prompt: token ids must be in 0..{V - 1}", param="prompt")
    return [list(prompt)]


def _completion_logprobs(state: State, evs: list[Event], prompt_ids: list[int] | None, offset: int) -> dict:
    tokens, lps, tops, offsets = [], [], [], []
    pos = offset
    first = evs[0].prompt_logprobs if evs and evs[0].prompt_logprobs is not None else None
    if prompt_ids is not None:
        for j, tid in enumerate(prompt_ids):
            s = _tok_str(state, tid)
            tokens.append(s)
            lps.append(first[j] if first is not None else None)
            tops.append(None)
            offsets.append(pos)
            pos += len(s)
    for ev in evs:
        for lp in ev.logprobs:
            s = _tok_str(state, lp.token_id)
            tokens.append(s)
            lps.append(lp.logprob)
            tops.append({_tok_str(state, i): v for i, v in lp.top})
            offsets.append(pos)
            pos += len(s)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


async def completions(state: State, body, request: Request):
    state.ready()
    _common_checks(state, body)
    if body.suffix:
        raise ApiError(400, "suffix is not supported by this server; omit it", param="suffix")
    if body.best_of not in (None, 1):
        raise ApiError(400, "best_of is not supported by this server; omit it or send 1", param="best_of")
    if body.echo and body.stream and body.logprobs is not None:
        raise ApiError(400, "echo with logprobs is only supported without stream", param="echo")
    prompts = _prompts(state, body.prompt)
    if any(not p for p in prompts):
        raise ApiError(400, "prompt is empty; OLMo 2 has no BOS token, give at least one token", param="prompt")
    if len(prompts) * body.n > 16:
        raise ApiError(400, "at most 16 choices per request (prompts × n)", param="n")
    handles, reqs_per = [], []
    for ids in prompts:
        mt = _max_tokens(state, len(ids), body.max_tokens if body.max_tokens is not None else 16)
        reqs = await _requests(state, body, ids, mt, body.logprobs,
                               prompt_logprobs=body.echo and body.logprobs is not None)
        reqs_per.append((ids, len(reqs)))
        try:
            handles += _submit(state, reqs)
        except ApiError:
            for h in handles:
                h.cancel()
            raise
    owner = [ids for ids, k in reqs_per for _ in range(k)]   # choice index → its prompt ids
    rid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    head = {"id": rid, "created": created, "model": state.name, "system_fingerprint": None}
    prompt_tokens = sum(len(ids) for ids in prompts)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_completion_stream(state, body, handles, owner, head, prompt_tokens, include_usage),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    per_choice = await _collect(handles, request)
    choices = []
    for i, evs in enumerate(per_choice):
        prefix = state.tok.decode(owner[i]) if body.echo else ""
        lp = None
        if body.logprobs is not None:
            lp = _completion_logprobs(state, evs, owner[i] if body.echo else None, 0)
        choices.append({"index": i, "text": prefix + "".join(e.text for e in evs), "logprobs": lp,
                        "finish_reason": evs[-1].finish_reason})
    completion = sum(evs[-1].completion_tokens for evs in per_choice)
    return JSONResponse({**head, "object": "text_completion", "choices": choices,
                         "usage": _usage(prompt_tokens, completion)})


async def _completion_stream(state: State, body, handles, owner, head, prompt_tokens: int, include_usage: bool):
    chunk = {**head, "object": "text_completion"}
    if body.echo:
        for i in range(len(handles)):
            yield _sse({**chunk, "choices": [{"index": i, "text": state.tok.decode(owner[i]), "logprobs": None,
                                              "finish_reason": None}]})
    completion = 0
    async for i, ev in _events(handles):
        if ev.finish_reason == "error":
            yield _stream_error(ev)
            return
        lp = _completion_logprobs(state, [ev], None, 0) if body.logprobs is not None else None
        if ev.text or ev.finish_reason is not None or (lp and lp["tokens"]):
            yield _sse({**chunk, "choices": [{"index": i, "text": ev.text, "logprobs": lp,
                                              "finish_reason": ev.finish_reason}]})
        if ev.finish_reason is not None:
            completion += ev.completion_tokens
    if include_usage:
        yield _sse({**chunk, "choices": [], "usage": _usage(prompt_tokens, completion)})
    yield DONE
