"""Shared by the olmo2 serve tests: a tiny dolma2 checkpoint and a live server on loopback.

    with LiveServer(create_app(ServeConfig(model=str(ckpt)), load_in_background=False)) as srv:
        client = OpenAI(base_url=srv.url + "/v1", api_key="x")

The server is a real uvicorn on 127.0.0.1 with an OS-chosen port, run in a thread of the
test process (so tests can also look at the engine), or `ServerProcess` for tests that
need to measure or kill a separate server.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def make_tiny_checkpoint(out: Path, tokenizer: Path, seed: int = 1) -> Path:
    """`olmo2 init --preset tiny` with the real dolma2 tokenizer (random weights)."""
    from olmo2.cli import main
    assert main(["init", "--preset", "tiny", "--out", str(out), "--tokenizer", str(tokenizer),
                 "--seed", str(seed)]) == 0
    return out


class LiveServer:
    """uvicorn serving `app` on 127.0.0.1:<free port> in a background thread."""

    def __init__(self, app):
        import uvicorn
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m olmo2 serve` in a subprocess on loopback; waits until /health is ok."""

    def __init__(self, model: Path, *flags: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "olmo2", "serve", "--model", str(model),
                                      "--port", str(self.port), *flags], env=env, cwd=REPO,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def __enter__(self) -> "ServerProcess":
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, f"server exited: {self.proc.stderr.read()}"
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            assert time.monotonic() < deadline, "server did not become healthy"
            time.sleep(0.2)

    def rss_kib(self) -> int:
        """Resident set size of the server process (Linux /proc)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ---- fixtures shared by the serve test modules (import them by name) ----------------------
@pytest.fixture(scope="session")
def serve_ckpt(tmp_path_factory, dolma2_tokenizer_path) -> Path:
    """One tiny dolma2 checkpoint for every serve test (named "tiny": the served model id)."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("serve") / "tiny", dolma2_tokenizer_path)


@pytest.fixture(scope="session")
def serve_server(serve_ckpt):
    """A default server (batch 8, 64 KiB body limit) shared by the API and bad-input tests."""
    from olmo2.serve.app import ServeConfig, create_app
    from olmo2.serve.engine import EngineConfig
    app = create_app(ServeConfig(model=str(serve_ckpt), max_body_bytes=64 * 1024,
                                 engine=EngineConfig(max_batch=8)), load_in_background=False)
    with LiveServer(app) as srv:
        yield srv
