"""Serving benchmark: aggregate tokens/s and p50/p95 time to first token at 1/4/16 clients.

    python benchmarks/serve_load.py                      # random tiny model with the dolma2 vocab
    python benchmarks/serve_load.py --model DIR --tokens 64 --requests 32
    python benchmarks/serve_load.py --quick              # 1 and 4 clients, fewer requests

Starts `olmo2 serve` twice on 127.0.0.1 (separate processes, same checkpoint, same flags):
with continuous batching (`--max-batch 16`) and without it (`--max-batch 1`, requests
decoded one at a time: the peer measured in the same run). At each concurrency C, C client
coroutines each send their share of `--requests` streaming completions (distinct prompts,
greedy, `max_tokens=--tokens`) back to back; we record per request the time from sending
to the first streamed text (TTFT) and the completion tokens (`usage`), and overall the wall
time. Aggregate tok/s = all completion tokens / wall time.

Prints a table and the batching speed-up (aggregate tok/s, batched / one at a time).
llama.cpp's server is the peer the issue names; it is not run here: llama-cpp-python builds
from source (~10 min on 2 cores) and OLMo 2 would first need a GGUF export, which this
package does not have yet.

Footgun: other CPU load on the machine skews both servers; rerun when idle. The prefix
cache is warm for neither: every request's prompt is distinct.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_checkpoint() -> Path:
    """A random tiny-preset checkpoint with the real dolma2 tokenizer (built once, reused)."""
    from olmo2.data.sources import dolma2_tokenizer_path
    out = Path(os.environ.get("OLMO2_CACHE", "/tmp/olmo2-bench")) / "bench" / "serve-tiny"
    if not (out / "config.json").exists():
        subprocess.run([sys.executable, "-m", "olmo2", "init", "--preset", "tiny", "--out", str(out),
                        "--tokenizer", str(dolma2_tokenizer_path()), "--seed", "0"], check=True)
    return out


class Server:
    def __init__(self, model: Path, max_batch: int, threads: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "olmo2", "serve", "--model", str(model), "--port",
                                      str(self.port), "--max-batch", str(max_batch), "--threads", str(threads),
                                      "--max-queue", "256"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 180
        while True:
            if self.proc.poll() is not None:
                raise SystemExit("olmo2 serve exited during start-up")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        self.model_id = json.load(r)["model"]
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("olmo2 serve did not become healthy in 180 s")
            time.sleep(0.3)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


async def one_request(client, url: str, model: str, i: int, tokens: int) -> tuple[float, int]:
    """(TTFT seconds, completion tokens) of one streamed completion."""
    body = {"model": model, "prompt": f"Request {i}: the weather today is", "max_tokens": tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft, used = None, 0
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if ttft is None and chunk.get("choices") and chunk["choices"][0].get("text"):
                ttft = time.perf_counter() - t0
            if chunk.get("usage"):
                used = chunk["usage"]["completion_tokens"]
    return (ttft if ttft is not None else time.perf_counter() - t0), used


async def run_level(url: str, model: str, clients: int, requests: int, tokens: int, offset: int) -> dict:
    import httpx
    async with httpx.AsyncClient(timeout=600) as client:
        per_client = [list(range(offset + c, offset + requests, clients)) for c in range(clients)]

        async def worker(ids):
            return [await one_request(client, url, model, i, tokens) for i in ids]
        t0 = time.perf_counter()
        results = [x for part in await asyncio.gather(*[worker(ids) for ids in per_client]) for x in part]
        wall = time.perf_counter() - t0
    ttfts = sorted(t for t, _ in results)
    total = sum(n for _, n in results)
    p95 = ttfts[min(len(ttfts) - 1, int(round(0.95 * (len(ttfts) - 1))))]
    return {"clients": clients, "requests": len(results), "tokens": total, "wall_s": wall,
            "tok_s": total / wall, "ttft_p50_ms": 1000 * statistics.median(ttfts), "ttft_p95_ms": 1000 * p95}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="checkpoint dir (default: a random tiny dolma2 model)")
    ap.add_argument("--tokens", type=int, default=32, help="max_tokens per request")
    ap.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    ap.add_argument("--threads", type=int, default=1, help="server torch threads")
    ap.add_argument("--quick", action="store_true", help="1 and 4 clients, 8 requests")
    args = ap.parse_args()
    levels = [1, 4] if args.quick else [1, 4, 16]
    requests = 8 if args.quick else args.requests
    model = Path(args.model) if args.model else tiny_checkpoint()
    rows = {}
    for name, max_batch in (("batched", 16), ("one-at-a-time", 1)):
        srv = Server(model, max_batch, args.threads)
        try:
            asyncio.run(run_level(srv.url, srv.model_id, 1, 1, 4, 10_000))            # warm up
            for k, c in enumerate(levels):
                rows[name, c] = asyncio.run(run_level(srv.url, srv.model_id, c, requests, args.tokens, 1000 * (k + 1)))
        finally:
            srv.close()
    print(f"model {model}, {requests} requests x {args.tokens} tokens per level, server threads {args.threads}")
    print(f"{'clients':>7} | {'server':>14} | {'tok/s':>8} | {'TTFT p50 ms':>11} | {'TTFT p95 ms':>11} | {'wall s':>7}")
    for c in levels:
        for name in ("batched", "one-at-a-time"):
            r = rows[name, c]
            print(f"{c:>7} | {name:>14} | {r['tok_s']:>8.1f} | {r['ttft_p50_ms']:>11.0f} | {r['ttft_p95_ms']:>11.0f} | "
                  f"{r['wall_s']:>7.2f}")
        print(f"{c:>7} | batching speed-up (aggregate tok/s): "
              f"{rows['batched', c]['tok_s'] / rows['one-at-a-time', c]['tok_s']:.2f}x")


if __name__ == "__main__":
    main()
