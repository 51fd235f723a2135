"""olmo2 serve through the official `openai` client on loopback: chat, completions,
streaming, stop, seeds, n, logprobs/echo, usage, JSON mode, tokenize; greedy output equals
`olmo2 generate` on the same checkpoint."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("xgrammar")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
jsonschema = pytest.importorskip("jsonschema")

from serve_fixtures import serve_ckpt, serve_server  # noqa: F401 (fixtures)

MSGS = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def client(serve_server):
    return openai.OpenAI(base_url=serve_server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def olmo2_generate(capsys, serve_ckpt, prompt: str, n: int, chat: bool = False) -> str:
    from olmo2.cli import main
    capsys.readouterr()
    argv = ["generate", "--model", str(serve_ckpt), "--prompt", prompt, "--temperature", "0", "--max-new-tokens", str(n)]
    assert main(argv + (["--chat"] if chat else [])) == 0
    out = capsys.readouterr().out
    assert out.endswith("\n")
    return out[:-1]


def test_models_health_metrics(serve_server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert httpx.get(serve_server.url + "/health").json() == {"status": "ok", "model": "tiny"}
    text = httpx.get(serve_server.url + "/metrics").text
    for name in ("olmo2_requests_total", "olmo2_generation_tokens_per_second", "olmo2_queue_depth",
                 "olmo2_batch_size", "olmo2_kv_blocks_free"):
        assert f"# TYPE {name} " in text
    schema = httpx.get(serve_server.url + "/openapi.json").json()
    assert "/v1/chat/completions" in schema["paths"]


def test_chat_greedy_equals_olmo2_generate(client, serve_ckpt, capsys):
    user = [{"role": "user", "content": "Hi there"}]
    r = client.chat.completions.create(model="tiny", messages=user, temperature=0, max_tokens=16)
    assert r.choices[0].message.content == olmo2_generate(capsys, serve_ckpt, "Hi there", 16, chat=True)
    assert r.choices[0].message.role == "assistant"
    assert r.usage.completion_tokens == 16 and r.choices[0].finish_reason == "length"


def test_completion_greedy_equals_olmo2_generate(client, serve_ckpt, capsys):
    r = client.completions.create(model="tiny", prompt="The king said", temperature=0, max_tokens=12)
    assert r.choices[0].text == olmo2_generate(capsys, serve_ckpt, "The king said", 12)
    assert r.usage.prompt_tokens == 3 and r.usage.total_tokens == 15


def test_streamed_equals_non_streamed_and_ends_with_done(serve_server, client):
    kw = dict(model="tiny", messages=MSGS, temperature=0, max_tokens=20)
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    ctext = client.completions.create(model="tiny", prompt="Once upon", temperature=0, max_tokens=15).choices[0].text
    streamed = client.completions.create(model="tiny", prompt="Once upon", temperature=0, max_tokens=15, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == ctext
    with httpx.stream("POST", serve_server.url + "/v1/chat/completions", json={**kw, "stream": True}) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in resp.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_stop_sequences(client):
    kw = dict(model="tiny", prompt="Once upon a time", temperature=0, max_tokens=24)
    full = client.completions.create(**kw).choices[0].text
    stop = full[len(full) // 2: len(full) // 2 + 2]
    r = client.completions.create(**kw, stop=[stop, "never-seen-stop"])
    assert r.choices[0].text == full[:full.index(stop)] and r.choices[0].finish_reason == "stop"
    chunks = client.completions.create(**kw, stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in chunks) == full[:full.index(stop)]


def test_seed_reproducible_and_n(client):
    kw = dict(model="tiny", messages=MSGS, temperature=1.0, top_p=0.95, max_tokens=12)
    a = client.chat.completions.create(**kw, seed=5).choices[0].message.content
    b = client.chat.completions.create(**kw, seed=5).choices[0].message.content
    c = client.chat.completions.create(**kw, seed=6).choices[0].message.content
    assert a == b and a != c
    r = client.chat.completions.create(**kw, seed=5, n=3)
    texts = [ch.message.content for ch in r.choices]
    assert [ch.index for ch in r.choices] == [0, 1, 2] and texts[0] == a and len(set(texts)) == 3
    assert r.usage.completion_tokens == 36


def test_chat_logprobs(client):
    r = client.chat.completions.create(model="tiny", messages=MSGS, temperature=0, max_tokens=6,
                                       logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == 6 and "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert len(t.top_logprobs) == 3 and t.logprob == pytest.approx(t.top_logprobs[0].logprob)  # greedy = top 1
        assert t.logprob <= 0


def test_completion_echo_prompt_logprobs_match_the_model(client, serve_ckpt):
    from olmo2.checkpoint import load_model
    from olmo2.tokenizer import Tokenizer
    prompt = "The quick brown fox"
    r = client.completions.create(model="tiny", prompt=prompt, temperature=0, max_tokens=3, echo=True, logprobs=2)
    lp = r.choices[0].logprobs
    tok = Tokenizer.from_pretrained(serve_ckpt)
    ids = tok.encode(prompt)
    assert r.choices[0].text.startswith(prompt) and len(lp.tokens) == len(ids) + 3
    model = load_model(serve_ckpt)
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([ids]))[0].float(), -1)
    expect = [None] + [float(ref[i, ids[i + 1]]) for i in range(len(ids) - 1)]
    assert lp.token_logprobs[0] is None
    assert lp.token_logprobs[1:len(ids)] == pytest.approx(expect[1:], abs=1e-4)
    assert all(len(t) == 2 for t in lp.top_logprobs[len(ids):])


def test_json_object_mode(client):
    # A random model rambles inside a string key; the closing steps must still end the JSON
    # inside max_tokens (olmo2/serve/jsonmode.py), greedy or sampled.
    for temperature, seed in [(0.0, None), (1.0, 0), (1.0, 1), (1.0, 3)]:
        r = client.chat.completions.create(model="tiny", messages=MSGS, temperature=temperature, seed=seed,
                                           max_tokens=60, response_format={"type": "json_object"})
        assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
        assert isinstance(json.loads(r.choices[0].message.content), dict)


SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "age", "tags", "ok"],
          "properties": {"name": {"type": "string", "maxLength": 12},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
                         "ok": {"type": "boolean"}}}


def test_json_schema_mode_validates(client):
    rf = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}
    for seed in range(3):
        r = client.chat.completions.create(model="tiny", messages=MSGS, temperature=1.0, seed=seed, max_tokens=150,
                                           response_format=rf)
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMA)
    chunks = client.chat.completions.create(model="tiny", messages=MSGS, temperature=1.0, seed=0, max_tokens=150,
                                            response_format=rf, stream=True)
    jsonschema.validate(json.loads("".join(c.choices[0].delta.content or "" for c in chunks if c.choices)), SCHEMA)


def test_tokenize_detokenize(serve_server):
    r = httpx.post(serve_server.url + "/tokenize", json={"prompt": "Hello, world"}).json()
    assert r["count"] == len(r["tokens"]) > 0
    assert httpx.post(serve_server.url + "/detokenize", json={"tokens": r["tokens"]}).json()["prompt"] == "Hello, world"
    chat = httpx.post(serve_server.url + "/tokenize", json={"messages": MSGS}).json()
    assert chat["count"] > r["count"]
