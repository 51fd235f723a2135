"""User text from flags, files and stdin, decoded as strict UTF-8 with a message that says where.

    text = arg_text(args.prompt, "--prompt")            # a command-line value
    text = decode_utf8(data, "notes.txt")               # bytes from a file or stdin

Why this exists: Python hands us command-line bytes that are not UTF-8 as lone surrogates
(`\\udcff`), which the Rust tokenizer rejects with an exception that names nothing; a
`sys.stdin.read()` in text mode raises UnicodeDecodeError from deep inside the verb. Both
become one `InputTextError` line here: which flag/file/line, which byte, and what to do.
"""
from __future__ import annotations

from olmo2.errors import Olmo2Error


class InputTextError(Olmo2Error):
    """Text given by the user (flag, file, stdin line) is not valid UTF-8."""


_HINT = "save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)"


def decode_utf8(data: bytes, where: str, one_line: bool = False) -> str:
    """`data` as str; invalid UTF-8 raises InputTextError naming `where`, the line and the byte
    (`one_line`: `where` already names the line, so only the column is given)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        at = f"column {col}" if one_line else f"line {line}, column {col}"
        bad = data[e.start:e.end].hex(" ")
        raise InputTextError(f"{where}: invalid UTF-8 at {at} (byte 0x{bad}); {_HINT}") from None


def arg_text(value: str | None, flag: str) -> str | None:
    """A command-line value back as valid text, or InputTextError naming `flag` and the byte."""
    if value is None:
        return None
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        pass
    try:
        # Undo Python's surrogateescape to report the user's actual bytes and position.
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as e:  # a lone surrogate that did not come from bytes
        raise InputTextError(f"{flag}: contains an unpaired surrogate at character {e.start + 1}; "
                             "pass valid Unicode text") from None
    return decode_utf8(raw, flag)


def stdin_bytes(line: bool = False) -> bytes:
    """All of stdin (or one line) as bytes, so bad UTF-8 can be reported instead of raising.
    A text-only stdin (an io.StringIO in tests, an embedding app) is re-encoded losslessly."""
    import sys
    buf = getattr(sys.stdin, "buffer", None)
    if buf is not None:
        return buf.readline() if line else buf.read()
    text = sys.stdin.readline() if line else sys.stdin.read()
    return text.encode("utf-8", "surrogateescape")
