"""A dependency-free progress line for long work: done/total, rate, ETA, extra fields.

Writes a single carriage-return-updated line to stderr when it is a terminal, and one
plain line every `every_s` seconds otherwise (CI logs, pipes), so long runs always show
that they are alive and how long they have left.
"""
from __future__ import annotations

import sys
import time


def format_duration(seconds: float) -> str:
    """Seconds as `1h02m`, `3m05s` or `42s`."""
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


class Progress:
    """Progress(total, desc, unit); call .update(n, **fields) and .close()."""

    def __init__(self, total: float | None, desc: str = "", unit: str = "it",
                 every_s: float = 5.0, stream=None, enabled: bool = True):
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every_s = 0.2 if self.tty else every_s
        self.start = time.perf_counter()
        self.last_print = 0.0
        self.done = 0.0
        self.fields: dict = {}

    def update(self, n: float = 1, force: bool = False, **fields) -> None:
        self.done += n
        self.fields.update(fields)
        now = time.perf_counter()
        if self.enabled and (force or now - self.last_print >= self.every_s):
            self.last_print = now
            self._print(now)

    def line(self, now: float | None = None) -> str:
        elapsed = (now or time.perf_counter()) - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        parts = [self.desc] if self.desc else []
        if self.total:
            pct = 100.0 * self.done / self.total
            parts.append(f"{self.done:,.0f}/{self.total:,.0f} ({pct:.0f}%)")
        else:
            parts.append(f"{self.done:,.0f}")
        parts.append(f"{rate:,.1f} {self.unit}/s")
        for k, v in self.fields.items():
            parts.append(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}")
        if self.total and rate > 0:
            parts.append(f"ETA {format_duration((self.total - self.done) / rate)}")
        parts.append(f"elapsed {format_duration(elapsed)}")
        return " | ".join(parts)

    def _print(self, now: float) -> None:
        text = self.line(now)
        if self.tty:
            self.stream.write("\r\x1b[K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._print(time.perf_counter())
            if self.tty:
                self.stream.write("\n")
            self.stream.flush()
