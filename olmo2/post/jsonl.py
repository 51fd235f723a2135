"""The one JSONL reader of post-training data (SFT messages, DPO pairs, RLVR prompts).

Why one: every stage must report bad lines the same way (`file:line: what`), collect all of
them before failing (a user fixing a 100k-line file wants the count, not one error per run),
and refuse a directory or non-UTF-8 bytes with a line number, not a traceback."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, TypeVar

from olmo2.errors import DataError

T = TypeVar("T")


def read_jsonl(sources: list[str], parse: Callable[[object, str], T], what: str,
               missing: Callable[[str], list[T]] | None = None, hint: str = "") -> list[T]:
    """parse(obj, "file:line") for every non-blank line of every source; DataError raised by
    parse and invalid JSON are collected, and the first is raised with the number of others.

    `missing(src)` reads a source that is not a local path (e.g. an HF dataset id); without
    it a missing file is an error naming `hint` (what the file should hold). `what` names the
    records in the "no records" error."""
    out: list[T] = []
    bad: list[str] = []
    for src in sources:
        p = Path(src)
        if not p.exists():
            if missing is None:
                raise DataError(f"{src}: no such file{f' ({hint})' if hint else ''}")
            out.extend(missing(src))
            continue
        if p.is_dir():
            raise DataError(f"{src}: is a directory; pass JSONL files")
        n = 0
        with open(p, encoding="utf-8", errors="strict") as f:
            try:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    where = f"{src}:{n}"
                    try:
                        out.append(parse(json.loads(line), where))
                    except json.JSONDecodeError as e:
                        bad.append(f"{where}: not valid JSON ({e.msg} at column {e.colno})")
                    except DataError as e:
                        bad.append(str(e))
            except UnicodeDecodeError:
                bad.append(f"{src}:{n + 1}: not UTF-8 text")
    if bad:
        more = f" (and {len(bad) - 1} more bad lines)" if len(bad) > 1 else ""
        raise DataError(f"{bad[0]}{more}; fix or remove these lines")
    if not out:
        raise DataError(f"{', '.join(sources)}: no {what}")
    return out
