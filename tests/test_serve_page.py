"""The chat page at `/` in headless Chromium (Debian's chromium + chromium-driver, driven by
selenium): a message streams an answer, the conversation is kept, Stop aborts the stream
and frees the server's slot. `OLMO2_SAVE_SCREENSHOT=1` refreshes the README's docs/serve.png."""
from __future__ import annotations

import os
import shutil
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("xgrammar")
webdriver = pytest.importorskip("selenium.webdriver")

from olmo2.serve.app import ServeConfig, create_app
from olmo2.serve.engine import EngineConfig
from serve_fixtures import REPO, LiveServer, make_tiny_checkpoint
from test_trace import PLANT, corpus, index  # noqa: F401 (fixtures of the trace button test)

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
# Slow: Chromium is a Debian package that .ci/run does not install (apt needs root and ~2 min);
# run with `make test-all` after `apt-get install chromium chromium-driver`.
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                 reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")]


def wait_for(fn, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        assert time.monotonic() < deadline, "timed out waiting in the page"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    opts = Options()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=900,640"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield driver
    driver.quit()


def test_chat_page_streams_keeps_history_and_stops(tmp_path, dolma2_tokenizer_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    ckpt = make_tiny_checkpoint(tmp_path / "tiny", dolma2_tokenizer_path)
    app = create_app(ServeConfig(model=str(ckpt), engine=EngineConfig(max_batch=4)), load_in_background=False)
    engine = app.state.olmo2.engine
    with LiveServer(app) as srv:
        b = browser
        b.get(srv.url + "/")
        assert "can produce false, biased or harmful text" in b.find_element(By.ID, "note").text
        wait_for(lambda: b.find_element(By.ID, "model").text == "tiny")
        box, maxt = b.find_element(By.ID, "input"), b.find_element(By.ID, "maxtokens")
        maxt.clear()
        maxt.send_keys("12")
        box.send_keys("Hello, who are you?", Keys.ENTER)
        wait_for(lambda: b.execute_script(
            "const m = document.querySelectorAll('.assistant'); return m.length == 1 && m[0].dataset.state == 'done'"))
        first = b.execute_script("return document.querySelectorAll('.assistant')[0].textContent")  # .text trims
        assert first.strip()
        assert b.execute_script("return history.length") == 2

        # A long answer: it streams, then Stop aborts it and the server frees the slot.
        maxt.clear()
        maxt.send_keys("400")
        cancelled = engine.stats["finished_cancelled"]
        box.send_keys("Tell me a long story.", Keys.ENTER)
        wait_for(lambda: len(b.find_elements(By.CSS_SELECTOR, ".assistant")) == 2
                 and len(b.find_elements(By.CSS_SELECTOR, ".assistant")[1].text) > 20)
        sent = b.execute_script("return history")
        assert [m["role"] for m in sent] == ["user", "assistant", "user"]     # the conversation is kept
        assert sent[1]["content"] == first
        b.save_screenshot(str(tmp_path / "page.png"))
        b.find_element(By.ID, "stop").click()
        wait_for(lambda: b.execute_script(
            "return document.querySelectorAll('.assistant')[1].dataset.state == 'stopped'"))
        assert b.find_element(By.ID, "send").is_enabled() and not b.find_element(By.ID, "stop").is_enabled()
        wait_for(lambda: engine.stats["finished_cancelled"] > cancelled and engine.batch_size == 0, 20)
        assert engine.stats["completion_tokens"] < 12 + 400
    if os.environ.get("OLMO2_SAVE_SCREENSHOT") == "1":   # refresh the README's picture on purpose only
        (REPO / "docs").mkdir(exist_ok=True)
        shutil.copy(tmp_path / "page.png", REPO / "docs" / "serve.png")



def test_trace_button_highlights_spans_and_lists_documents(corpus, index, tmp_path, browser):  # noqa: F811
    """With --trace, a finished reply gets a trace button; on a reply holding a planted corpus
    sentence it marks that sentence and lists its documents (the synthetic corpus of test_trace)."""
    from selenium.webdriver.common.by import By

    from olmo2.cli import main
    m = tmp_path / "m"
    assert main(["init", "--preset", "tiny", "--out", str(m), "--tokenizer", corpus[2], "--seed", "1"]) == 0
    app = create_app(ServeConfig(model=str(m), trace=str(index.path)), load_in_background=False)
    with LiveServer(app) as srv:
        b = browser
        b.get(srv.url + "/")
        wait_for(lambda: b.find_element(By.ID, "model").text == "m")
        wait_for(lambda: b.execute_script("return traceOn"))
        b.find_element(By.ID, "input").send_keys("w1 w2\n")
        wait_for(lambda: b.execute_script("const m = document.querySelector('.assistant'); return m && m.dataset.state == 'done'"))
        reply = b.execute_script("return document.querySelector('.assistant').textContent")
        # a finished reply gets the button (an empty one, which a random model can give, none)
        assert bool(b.find_elements(By.CSS_SELECTOR, ".assistant + .trace .trace-btn")) == bool(reply)
        # A reply known to hold a corpus span: the button marks it and lists its documents.
        text = "w5 " + PLANT + " w7"
        b.execute_script("const out = bubble('assistant', arguments[0]); out.id = 'planted'; traceButton(out, arguments[0]);"
                         "out.nextSibling.querySelector('.trace-btn').click();", text)
        wait_for(lambda: b.find_elements(By.CSS_SELECTOR, "#planted + .trace .trace-result"))
        assert [e.text for e in b.find_elements(By.CSS_SELECTOR, "#planted mark")] == [PLANT]
        listed = b.find_element(By.CSS_SELECTOR, "#planted + .trace .trace-result").text
        assert "licence" in listed and "shard data/f0000" in listed and "offset" in listed
        assert b.execute_script("return document.getElementById('planted').textContent") == text
