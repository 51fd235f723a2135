"""Incremental detokenization and stop-string holding for streamed generation.

    dec, stop = IncrementalDecoder(tokenizer), StopStringHolder(["\\nUser:"])
    for tok in tokens:
        text, hit = stop.push(dec.push(tok))
        print(text, end="", flush=True)
        if hit: break
    else:
        print(stop.push(dec.flush())[0] + stop.flush(), end="")

`IncrementalDecoder` turns one token id at a time into text that is safe to print. A
byte-level BPE token (dolma2, GPT-2 style) can be part of a multi-byte UTF-8 character,
so decoding it alone gives U+FFFD. We keep two offsets into the token list: `prefix`
(start of a small window of already-printed tokens, decoded again for context) and
`read` (end of what was printed). Each push decodes `ids[prefix:]`; the text beyond what
`ids[prefix:read]` decodes to is new, and it is only released when it does not end in
U+FFFD (an unfinished character). Decoding a short window rather than the whole output
keeps the per-token cost constant; the window context also keeps decoders that strip a
leading space (SentencePiece/Metaspace) correct. The concatenated pieces equal
`tokenizer.decode(all_ids)` whenever the byte stream is valid UTF-8.

`StopStringHolder` withholds any text tail that could still become a stop string, so a
stop string is never printed, not even partly; on a hit it releases exactly the text
before the earliest stop string.

Footguns: a genuinely invalid byte sequence (a random model can emit one) is held until
a later token completes a character or `flush()` is called, then printed as U+FFFD.
Works with any object that has `decode(ids, skip_special_tokens=...)` (our Tokenizer or a
`tokenizers.Tokenizer`).
"""
from __future__ import annotations

from collections.abc import Iterable

_REPLACEMENT = "\ufffd"


class IncrementalDecoder:
    """push(token_id) -> newly printable text ('' while a character is incomplete)."""

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.prefix = 0  # start of the context window (already printed)
        self.read = 0    # end of what has been printed

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes (may be '' or several characters)."""
        self.ids.append(int(token_id))
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        if len(after) > len(before) and not after.endswith(_REPLACEMENT):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before):]
        return ""

    def flush(self) -> str:
        """Text of tokens still held back (incomplete bytes come out as U+FFFD)."""
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return after[len(before):]


class StopStringHolder:
    """push(text) -> (text safe to print, stop string hit?); never prints a stop string."""

    def __init__(self, stop_strings: Iterable[str] | None = None):
        self.stops = [s for s in (stop_strings or []) if s]
        self.pending = ""
        self.stopped = False

    def push(self, text: str) -> tuple[str, bool]:
        """Add text; return what can be released now and whether a stop string was hit."""
        if self.stopped:
            return "", True
        if not self.stops:
            return text, False
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending, self.stopped = self.pending[:min(hits)], "", True
            return out, True
        hold = self._held_tail(self.pending)
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def _held_tail(self, text: str) -> int:
        """Length of the longest tail of `text` that is a proper prefix of a stop string."""
        best = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:k]):
                    best = k
                    break
        return best

    def flush(self) -> str:
        """Release held text at the end of generation (it turned out not to be a stop string)."""
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out
