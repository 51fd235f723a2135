"""`olmo2 serve --trace INDEX`: POST /v1/trace answers what `olmo2 trace query --json` prints,
on the synthetic corpus and index of tests/test_trace.py; errors are OpenAI-shaped (no index:
404 `trace_not_enabled`; bad body: 400); a bad index fails at startup with one line; the chat
page wires its trace button to the endpoint."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("xgrammar")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient

from olmo2.cli import main
from olmo2.errors import DataError
from olmo2.serve.app import ServeConfig, create_app
from olmo2.trace.rank import trace_text
from test_trace import PLANT, corpus, index  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def ckpt(corpus, tmp_path_factory):  # noqa: F811
    """A tiny random model on the synthetic corpus's tokenizer."""
    _, _, tokpath = corpus
    out = tmp_path_factory.mktemp("serve-trace") / "tiny"
    assert main(["init", "--preset", "tiny", "--out", str(out), "--tokenizer", tokpath, "--seed", "1"]) == 0
    return out


@pytest.fixture(scope="module")
def client(ckpt, index):  # noqa: F811
    app = create_app(ServeConfig(model=str(ckpt), trace=str(index.path)), load_in_background=False)
    with TestClient(app) as c:
        yield c


def test_trace_endpoint_equals_cli_and_library(client, index, capsys):  # noqa: F811
    text = "w5 " + PLANT + " w7"
    r = client.post("/v1/trace", json={"text": text})
    assert r.status_code == 200, r.text
    got = r.json()
    assert [s["text"] for s in got["spans"]] == [PLANT]
    d = got["spans"][0]["docs"][0]
    assert {"source", "shard", "offset", "license", "before", "match", "after"} <= d.keys()
    capsys.readouterr()
    assert main(["trace", "query", "--index", str(index.path), "--json", "--text", text]) == 0
    assert got == json.loads(capsys.readouterr().out)
    assert got == json.loads(json.dumps(trace_text(index, text).to_dict()))
    # Options map onto the CLI's flags; an empty text is an empty result, not an error.
    r = client.post("/v1/trace", json={"text": text, "max_docs": 1, "context": 3})
    assert all(len(s["docs"]) <= 1 for s in r.json()["spans"])
    r = client.post("/v1/trace", json={"text": ""})
    assert r.status_code == 200 and r.json()["spans"] == []


@pytest.mark.parametrize("body, param", [
    ({}, "text"), ({"text": 5}, "text"), ({"text": "x", "max_count": 0}, "max_count"),
    ({"text": "x", "context": "3"}, "context"), (None, None)])
def test_trace_bad_body_is_400(client, body, param):
    r = (client.post("/v1/trace", content=b"{not json", headers={"content-type": "application/json"})
         if body is None else client.post("/v1/trace", json=body))
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"]


def test_no_index_is_404(ckpt):
    app = create_app(ServeConfig(model=str(ckpt)), load_in_background=False)
    with TestClient(app) as c:
        r = c.post("/v1/trace", json={"text": "w1 w2"})
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["code"] == "trace_not_enabled" and "--trace" in err["message"]


def test_bad_index_fails_at_startup(ckpt, tmp_path, capsys):
    with pytest.raises(DataError, match="not a trace index"):
        create_app(ServeConfig(model=str(ckpt), trace=str(tmp_path)))
    assert main(["serve", "--model", str(ckpt), "--port", "0", "--trace", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "not a trace index" in err[0]


def test_page_has_trace_button(client):
    html = client.get("/").text
    assert '"/v1/trace"' in html and '"trace"' in html and "<mark" not in html.split("<script>")[0]
    assert "http://" not in html and "https://" not in html  # no external assets
