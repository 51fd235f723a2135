"""Structured output: token masks that keep decoding inside JSON (or a JSON Schema).

    grammars = JsonGrammars(tok, vocab_size=model.config.vocab_size)     # once per server
    c = grammars.constraint({"type": "json_schema", "json_schema": {"schema": {...}}})
    c.apply(scores)      # [1, V] logits: disallowed tokens → -inf (in place)
    c.advance(token_id)  # after sampling
    c.done()             # the grammar accepted the end of the output

Backed by `xgrammar` (the library vLLM and SGLang use): it builds a token-level automaton
from a JSON Schema over the tokenizer's vocabulary and fills a bitmask of allowed tokens
per step in C++. We checked the alternatives on this machine first: xgrammar handles
dolma2's byte-level BPE vocabulary (`VocabType.BYTE_LEVEL`, 100 278 ids) on CPU, compiles
a small schema in ~10 ms and fills a mask in well under a millisecond; we pass it the
vocabulary directly (`TokenizerInfo(encoded_vocab, BYTE_LEVEL)`) so the server needs no
transformers tokenizer.

Why `any_whitespace=False`: with unrestricted whitespace a weak or random model can emit
newlines and tabs forever while staying inside valid JSON and never finish; compact
separators (`", "`, `": "`) bound that. `json_object` is the schema `{"type": "object"}`.
The model's EOS token is the grammar's stop token, so the mask allows EOS exactly when
the JSON is complete.

Closing within max_tokens: inside a string almost every token is allowed, so a weak model
(a random one certainly) can stay in one string until `max_tokens` cuts the JSON. In the
last `CLOSE_RESERVE` tokens of the budget we therefore steer, still inside the grammar's
mask, toward the end: each step takes the first grammar-allowed token from a fixed
preference list (EOS, then `"` variants inside a string, `}`/`]`, `: null`, digits,
letters that finish true/false/null outside one). Whether we are inside a string is
tracked from the emitted text (unescaped `"`), since xgrammar does not expose it. This
never breaks the grammar (only allowed tokens are chosen); for `json_object` it closes
any object nested up to ~10 deep; a schema with required fields still follows the mask, so
a tight `max_tokens` can cut it (finish_reason "length"), as with OpenAI.

Supported: what xgrammar's JSON Schema converter supports (types, properties/required,
additionalProperties, enum/const, arrays with items/min/maxItems, string min/maxLength and
pattern, integer/number ranges, anyOf/oneOf, $ref/$defs); anything else raises
`SchemaError`, answered with HTTP 400.
"""
from __future__ import annotations

import json
from typing import Any

import torch


class SchemaError(ValueError):
    """response_format is not something we can constrain decoding to (HTTP 400)."""


CLOSE_RESERVE = 16
# Preference lists for the closing steps (see the module docstring); strings that are not
# one token in the vocabulary are skipped.
_CLOSE_IN_STRING = ['"}', '"]', '"', '":']
_CLOSE_AFTER_BACKSLASH = ["n", '"']
_CLOSE_OUTSIDE = ["}}", "]}", "}", "]", ":", " ", "null", "0", '"', "ue", "ull", "lse", "alse", "rue",
                  "r", "u", "e", "a", "l", "s"]


class JsonConstraint:
    """One request's grammar state; used by the engine thread only."""

    def __init__(self, compiled, vocab_size: int, closers: "dict[str, list[int]]", token_text):
        import xgrammar as xgr
        self._xgr = xgr
        self.matcher = xgr.GrammarMatcher(compiled)
        self.bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        self.closers, self.token_text = closers, token_text
        self.in_string = self.escape = False

    def _allowed(self, token_id: int) -> bool:
        word = int(self.bitmask[0, token_id >> 5])
        return bool((word >> (token_id & 31)) & 1)

    def apply(self, scores: torch.Tensor, remaining: int | None = None) -> None:
        """Mask scores [1, V] in place: tokens the grammar forbids now get -inf.

        With `remaining` (tokens left in the budget, this one included) at or below the
        reserve, keep only the preferred closing token (module docstring).
        """
        self.matcher.fill_next_token_bitmask(self.bitmask)
        self._xgr.apply_token_bitmask_inplace(scores, self.bitmask.to(scores.device))
        if remaining is None or remaining > CLOSE_RESERVE:
            return
        kind = "backslash" if self.escape else ("string" if self.in_string else "outside")
        for t in self.closers[kind]:
            if t < scores.shape[-1] and self._allowed(t):
                keep = scores[0, t].clone()
                scores.fill_(float("-inf"))
                scores[0, t] = keep if torch.isfinite(keep) else 0.0
                return

    def advance(self, token_id: int) -> None:
        if not self.matcher.accept_token(token_id):  # cannot happen for a masked sample
            raise RuntimeError(f"grammar rejected token {token_id}")
        for ch in self.token_text(token_id):  # track string state for the closing steps
            if self.escape:
                self.escape = False
            elif self.in_string and ch == "\\":
                self.escape = True
            elif ch == '"':
                self.in_string = not self.in_string

    def done(self) -> bool:
        return self.matcher.is_terminated()


class JsonGrammars:
    """The tokenizer's vocabulary in xgrammar's form plus a compile cache (one per server)."""

    def __init__(self, tokenizer, vocab_size: int):
        import xgrammar as xgr
        n = tokenizer.vocab_size
        vocab = [tokenizer.id_to_token(i) or "" for i in range(n)]
        info = xgr.TokenizerInfo(vocab, vocab_type=xgr.VocabType.BYTE_LEVEL, vocab_size=vocab_size,
                                 stop_token_ids=[tokenizer.eos_id])
        self.vocab_size = vocab_size
        self.compiler = xgr.GrammarCompiler(info, max_threads=1)
        eos = [tokenizer.eos_id]

        def ids(strings: list[str]) -> list[int]:
            out = []
            for s in strings:
                enc = tokenizer.encode(s)
                if len(enc) == 1:
                    out.append(enc[0])
            return eos + out
        self.closers = {"string": ids(_CLOSE_IN_STRING), "backslash": ids(_CLOSE_AFTER_BACKSLASH),
                        "outside": ids(_CLOSE_OUTSIDE)}
        # Per-token text for string tracking; quotes and backslashes are ASCII, so the
        # U+FFFD that a partial multi-byte character decodes to cannot hide one.
        self.token_text = lambda i: tokenizer.decode([i])

    def constraint(self, response_format: dict[str, Any] | None) -> JsonConstraint | None:
        """A fresh constraint for an OpenAI `response_format` (None for text)."""
        if not response_format or response_format.get("type") in (None, "text"):
            return None
        kind = response_format.get("type")
        if kind == "json_object":
            schema: Any = {"type": "object"}
        elif kind == "json_schema":
            spec = response_format.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
                raise SchemaError("response_format.json_schema.schema: give the JSON Schema as an object")
            schema = spec["schema"]
        else:
            raise SchemaError(f"response_format.type: {kind!r} is not text, json_object or json_schema")
        try:
            compiled = self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=False)
        except Exception as e:  # xgrammar raises RuntimeError/ValueError with a message
            msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise SchemaError(f"response_format.json_schema.schema: unsupported or invalid schema ({msg})") from None
        return JsonConstraint(compiled, self.vocab_size, self.closers, self.token_text)
