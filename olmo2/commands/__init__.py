"""CLI verbs, grouped by lifecycle stage. Each module exposes `register(subparsers)`,
which adds its verbs with `set_defaults(func=run_fn)`; `olmo2/cli.py` wires them up.

`HelpFormatter` is the one formatter the verbs share: descriptions are re-wrapped to the
terminal like argparse's default, while text with its own line breaks (the `examples:`
epilogs) is printed as written.
"""
from __future__ import annotations

import argparse


class HelpFormatter(argparse.HelpFormatter):
    """Wrap one-paragraph text; keep multi-line text (examples) verbatim."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)
