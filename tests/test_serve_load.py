"""olmo2 serve under load, on loopback: 32 concurrent streaming clients are all correct and
finish much faster than the same requests one after another (slow: a server process and
~100 requests); a client killed mid-stream frees its slot without stalling the others; a
full queue answers 429; RSS stays bounded over 500 requests (slow)."""
from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("xgrammar")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from olmo2.serve.app import ServeConfig, create_app
from olmo2.serve.engine import EngineConfig
from serve_fixtures import LiveServer, ServerProcess, serve_ckpt  # noqa: F401 (fixture)


def body(i: int, n: int = 8) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": f"Request number {i}: say something."}],
            "max_tokens": n, "temperature": 0}


async def stream_text(client, i: int, n: int = 8) -> str:
    chunks = await client.chat.completions.create(**body(i, n), stream=True)
    return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])


def metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics").text
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))


@pytest.mark.slow
def test_32_concurrent_streams_are_correct_and_faster_than_serial(serve_ckpt):
    # A separate server process, as in real use: client and server do not share a GIL.
    with ServerProcess(serve_ckpt, "--max-batch", "32", "--threads", "1") as srv:
        async def run():
            client = openai.AsyncOpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=120)
            await stream_text(client, 1000)                                   # warm up
            t0 = time.perf_counter()       # timed serial pass on other prompts (no prefix-cache help)
            for i in range(100, 132):
                await stream_text(client, i)
            t_serial = time.perf_counter() - t0
            steps_before = metric(srv.url, "olmo2_decode_steps_total")
            t0 = time.perf_counter()
            batched = await asyncio.gather(*[stream_text(client, i) for i in range(32)])
            t_batched = time.perf_counter() - t0
            steps = metric(srv.url, "olmo2_decode_steps_total") - steps_before
            alone = [await stream_text(client, i) for i in range(32)]         # the reference, untimed
            await client.close()
            return alone, batched, t_serial, t_batched, steps
        alone, batched, t_serial, t_batched, steps = asyncio.run(run())
    assert batched == alone and all(alone)           # each equals the same request decoded alone
    ratio = t_serial / t_batched
    print(f"\n32 streaming clients x 8 tokens: serial {t_serial:.2f} s, batched {t_batched:.2f} s, "
          f"speed-up {ratio:.1f}x ({steps:.0f} batched decode steps for {32 * 7} single-request steps)")
    assert steps < 32 * 7 / 2          # requests really shared decode forwards
    assert ratio > 1.5   # measured 3-11x on 2 shared cores; the bound leaves room for a loaded machine


def test_killed_client_does_not_stall_others(serve_ckpt):
    app = create_app(ServeConfig(model=str(serve_ckpt), engine=EngineConfig(max_batch=8)), load_in_background=False)
    engine = app.state.olmo2.engine
    with LiveServer(app) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=120)
        expect = [client.chat.completions.create(**body(i, 24)).choices[0].message.content for i in range(4)]
        victim_code = ("import httpx, sys\n"
                       f"with httpx.stream('POST', '{srv.url}/v1/chat/completions', json={body(99, 400)!r} | "
                       "{'stream': True}, timeout=60) as r:\n"
                       "    for line in r.iter_lines():\n"
                       "        print(line, flush=True)\n")
        victim = subprocess.Popen([sys.executable, "-c", victim_code], stdout=subprocess.PIPE, text=True)
        assert victim.stdout.readline().startswith("data: ")      # it is streaming
        results: list[str | None] = [None] * 4

        def run(i):
            chunks = client.chat.completions.create(**body(i, 24), stream=True)
            results[i] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        victim.send_signal(signal.SIGKILL)                          # dies mid-stream
        victim.wait()
        for t in threads:
            t.join(60)
        assert results == expect
        deadline = time.monotonic() + 10
        while engine.stats["finished_cancelled"] < 1 or engine.batch_size:
            assert time.monotonic() < deadline, dict(engine.stats)
            time.sleep(0.05)
        assert engine.pool.free_blocks == engine.pool.n_blocks      # the victim's blocks came back
        assert engine.stats["completion_tokens"] < 4 * 24 * 2 + 300  # it did not run to 400 tokens


def test_queue_overflow_gives_429_and_the_rest_complete(serve_ckpt):
    app = create_app(ServeConfig(model=str(serve_ckpt), engine=EngineConfig(max_batch=2, max_queue=4)),
                     load_in_background=False)
    with LiveServer(app) as srv:
        async def run():
            async with httpx.AsyncClient(timeout=120) as c:
                rs = await asyncio.gather(*[c.post(srv.url + "/v1/chat/completions", json=body(i, 16))
                                            for i in range(24)])
            return rs
        rs = asyncio.run(run())
    codes = [r.status_code for r in rs]
    assert set(codes) == {200, 429} and codes.count(200) >= 4     # at least the queue's worth got in
    assert all(r.json()["choices"][0]["message"]["content"] for r in rs if r.status_code == 200)
    assert all(r.json()["error"]["type"] == "rate_limit_error" for r in rs if r.status_code == 429)


@pytest.mark.slow
def test_rss_bounded_over_500_requests(serve_ckpt):
    with ServerProcess(serve_ckpt, "--max-batch", "8", "--threads", "1") as srv:
        def burst(n: int):
            async def run():
                async with httpx.AsyncClient(timeout=120) as c:
                    sem = asyncio.Semaphore(8)

                    async def one(i):
                        async with sem:
                            r = await c.post(srv.url + "/v1/chat/completions",
                                             json=body(i, 4) | {"stream": i % 2 == 0})
                            assert r.status_code == 200
                    await asyncio.gather(*[one(i) for i in range(n)])
            asyncio.run(run())
        burst(100)
        rss_warm = srv.rss_kib()
        burst(400)
        rss_end = srv.rss_kib()
    growth = (rss_end - rss_warm) / 1024
    print(f"\nserver RSS after 100 requests {rss_warm / 1024:.0f} MiB, after 500 {rss_end / 1024:.0f} MiB "
          f"(+{growth:.1f} MiB)")
    assert growth < 40
