"""olmo2 serve under bad input: every case gets the right 4xx in OpenAI's error shape, with
no paths or tracebacks, and the server keeps serving; API key, body limit, 503, 429."""
from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("xgrammar")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from olmo2.serve.app import ServeConfig, State, create_app
from olmo2.serve.engine import EngineConfig
from serve_fixtures import LiveServer, serve_ckpt, serve_server  # noqa: F401 (fixtures)

OK_CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0}


def check_error(r: httpx.Response, status: int) -> dict:
    """The OpenAI error shape, and a message without tracebacks or server file paths."""
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    msg = err["message"]
    assert not any(s in msg for s in ("Traceback", "/tmp", "site-packages", ".py", "/work", "/root")), msg
    return err


CHAT_CASES = {
    "wrong type max_tokens": {**OK_CHAT, "max_tokens": "12"},
    "wrong type temperature": {**OK_CHAT, "temperature": "hot"},
    "temperature out of range": {**OK_CHAT, "temperature": -1},
    "top_p zero": {**OK_CHAT, "top_p": 0},
    "messages not a list": {**OK_CHAT, "messages": "hi"},
    "empty messages": {**OK_CHAT, "messages": []},
    "unknown role": {**OK_CHAT, "messages": [{"role": "wizard", "content": "hi"}]},
    "content not text": {**OK_CHAT, "messages": [{"role": "user", "content": 5}]},
    "image part": {**OK_CHAT, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
    "missing model": {k: v for k, v in OK_CHAT.items() if k != "model"},
    "huge max_tokens": {**OK_CHAT, "max_tokens": 10**12},
    "zero max_tokens": {**OK_CHAT, "max_tokens": 0},
    "n too big": {**OK_CHAT, "n": 1000},
    "stream not bool": {**OK_CHAT, "stream": "yes"},
    "empty stop": {**OK_CHAT, "stop": [""]},
    "unsupported penalty": {**OK_CHAT, "frequency_penalty": 0.5},
    "bad response_format": {**OK_CHAT, "response_format": {"type": "xml"}},
    "schema not an object": {**OK_CHAT, "response_format": {"type": "json_schema", "json_schema": {"schema": 3}}},
    "top_logprobs without logprobs": {**OK_CHAT, "top_logprobs": 2},
    "body not an object": [1, 2, 3],
}


@pytest.mark.parametrize("case", list(CHAT_CASES))
def test_bad_chat_bodies_are_400(serve_server, case):
    err = check_error(httpx.post(serve_server.url + "/v1/chat/completions", json=CHAT_CASES[case]), 400)
    assert err["type"] == "invalid_request_error"


def test_raw_bodies_and_routes(serve_server):
    url = serve_server.url + "/v1/chat/completions"
    check_error(httpx.post(url, content=b'{"model": "tiny", "messages": [', headers={"content-type": "application/json"}), 400)
    check_error(httpx.post(url, content=b'{"model": "tiny\xff\xfe", "messages": []}',
                           headers={"content-type": "application/json"}), 400)   # invalid UTF-8
    check_error(httpx.post(url, content=b"", headers={"content-type": "application/json"}), 400)
    check_error(httpx.post(url, json={**OK_CHAT, "model": "gpt-4"}), 404)
    check_error(httpx.get(serve_server.url + "/v1/nothing-here"), 404)
    check_error(httpx.get(url), 405)
    check_error(httpx.post(serve_server.url + "/v1/completions", json={"model": "tiny", "prompt": [10**9]}), 400)
    check_error(httpx.post(serve_server.url + "/v1/completions", json={"model": "tiny", "prompt": ""}), 400)
    check_error(httpx.post(serve_server.url + "/detokenize", json={"tokens": [10**9]}), 400)
    check_error(httpx.post(serve_server.url + "/tokenize", json={}), 400)


def test_oversized_bodies_are_413(serve_server):
    big = {**OK_CHAT, "messages": [{"role": "user", "content": "x" * 100_000}]}
    err = check_error(httpx.post(serve_server.url + "/v1/chat/completions", json=big), 413)
    assert err["code"] == "body_too_large"

    def chunks():  # no Content-Length: the limit must hold for a chunked upload too
        for _ in range(100):
            yield b"x" * 1024
    check_error(httpx.post(serve_server.url + "/v1/chat/completions", content=chunks(),
                           headers={"content-type": "application/json"}), 413)


def test_server_still_serves_after_bad_input(serve_server):
    r = httpx.post(serve_server.url + "/v1/chat/completions", json=OK_CHAT)
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("length", "stop")
    assert httpx.get(serve_server.url + "/health").json()["status"] == "ok"
    assert 'olmo2_http_errors_total{status="400"}' in httpx.get(serve_server.url + "/metrics").text


def test_api_key(serve_ckpt):
    app = create_app(ServeConfig(model=str(serve_ckpt), api_key="s3cret"), load_in_background=False)
    with LiveServer(app) as srv:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            err = check_error(httpx.post(srv.url + "/v1/chat/completions", json=OK_CHAT, headers=headers), 401)
            assert err["code"] == "invalid_api_key"
        check_error(httpx.get(srv.url + "/v1/models"), 401)
        check_error(httpx.post(srv.url + "/tokenize", json={"prompt": "a"}), 401)
        assert httpx.get(srv.url + "/health").status_code == 200          # probes need no key
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=srv.url + "/v1", api_key="nope", max_retries=0).models.list()
        good = openai.OpenAI(base_url=srv.url + "/v1", api_key="s3cret", max_retries=0)
        assert good.chat.completions.create(**OK_CHAT).choices[0].message.role == "assistant"


def test_503_while_loading(serve_ckpt, monkeypatch):
    release = threading.Event()
    real_load = State.load

    def slow_load(self):
        release.wait(30)
        real_load(self)
    monkeypatch.setattr(State, "load", slow_load)
    app = create_app(ServeConfig(model=str(serve_ckpt)))    # loads in the background
    with LiveServer(app) as srv:
        assert httpx.get(srv.url + "/health").json()["status"] == "loading"
        err = check_error(httpx.post(srv.url + "/v1/chat/completions", json=OK_CHAT), 503)
        assert err["code"] == "model_not_ready"
        release.set()
        deadline = time.monotonic() + 30
        while httpx.get(srv.url + "/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert httpx.post(srv.url + "/v1/chat/completions", json=OK_CHAT).status_code == 200


def test_queue_full_is_429(serve_ckpt):
    app = create_app(ServeConfig(model=str(serve_ckpt), engine=EngineConfig(max_batch=1, max_queue=1)),
                     load_in_background=False)
    engine = app.state.olmo2.engine
    with LiveServer(app) as srv:
        long = {**OK_CHAT, "max_tokens": 400, "stream": True}
        with httpx.stream("POST", srv.url + "/v1/chat/completions", json=long) as running:   # holds the one slot
            lines = running.iter_lines()     # keep a reference: a collected iterator closes the stream
            next(lines)
            waiting = threading.Thread(target=httpx.post, args=(srv.url + "/v1/chat/completions",),
                                       kwargs={"json": {**OK_CHAT, "max_tokens": 1}, "timeout": 60})
            waiting.start()
            deadline = time.monotonic() + 20
            while engine.queue_depth < 1:                     # the second request is queued
                assert time.monotonic() < deadline
                time.sleep(0.01)
            err = check_error(httpx.post(srv.url + "/v1/chat/completions", json=OK_CHAT), 429)
            assert err["type"] == "rate_limit_error"
        waiting.join(60)    # leaving the stream disconnected the first client: the queued one ran
        assert not waiting.is_alive()
        assert httpx.post(srv.url + "/v1/chat/completions", json=OK_CHAT).status_code == 200


def test_cli_flag_errors_are_one_line(tmp_path, capsys):
    from olmo2.cli import main
    for argv, needle in ((["--port", "70000"], "--port"), (["--max-batch", "0"], "--max-batch"),
                         (["--api-key", " "], "--api-key")):
        assert main(["serve", "--model", str(tmp_path), *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err and err.count("\n") == 1
    assert main(["serve", "--model", str(tmp_path / "missing")]) == 2
    assert "no such checkpoint directory" in capsys.readouterr().err
    assert main(["serve", "--model", str(tmp_path)]) == 2          # a directory without config.json
    assert "no config.json" in capsys.readouterr().err
