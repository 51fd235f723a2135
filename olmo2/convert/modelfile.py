"""The ollama `Modelfile` written beside a GGUF (`ollama create NAME -f FILE.Modelfile`).

ollama renders prompts with its own Go `text/template`, not the Jinja template in the GGUF,
so the tulu format is spelled again here in Go template syntax. It must produce exactly what
olmo2/tokenizer.py's `render_chat` does (no BOS; a non-final assistant turn ends
`<|endoftext|>\\n`; the prompt ends `<|assistant|>\\n`):

    <|system|>\\n{s}\\n<|user|>\\n{u}\\n<|assistant|>\\n{a}<|endoftext|>\\n<|user|>\\n{u2}\\n<|assistant|>\\n

Whitespace: `{{-` trims the newline before an action, so only the newlines written inside
the branches reach the output. A final assistant message is left open (no `<|endoftext|>`),
so ollama continues it, as it expects of templates. Stop tokens: `<|endoftext|>` (EOS) and `<|user|>` (the next
turn, which a weak model may start writing instead of ending). `num_ctx` is set because
ollama's default window differs from the model's and OLMo 2 users report hangs without it.
The risk notice from the README travels as a comment, since ollama shows the Modelfile.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

from olmo2.card import RISK_NOTICE

# First line of every Modelfile we write: how `convert gguf --force` recognises its own file.
HEADER = "# ollama Modelfile written by `olmo2 convert gguf`"

TULU_GO_TEMPLATE = (
    '{{- range $i, $m := .Messages }}\n'
    '{{- $last := eq (len (slice $.Messages $i)) 1 }}\n'
    '{{- if eq $m.Role "assistant" }}<|assistant|>\n'
    '{{ $m.Content }}{{ if not $last }}<|endoftext|>\n'
    '{{ end }}\n'
    '{{- else }}<|{{ $m.Role }}|>\n'
    '{{ $m.Content }}\n'
    '{{ end }}\n'
    '{{- if and $last (ne $m.Role "assistant") }}<|assistant|>\n'
    '{{ end }}\n'
    '{{- end }}'
)
STOP_TOKENS = ("<|endoftext|>", "<|user|>")


def modelfile_path(gguf_path: Path) -> Path:
    """`model.q8_0.gguf` → `model.q8_0.Modelfile` (one per GGUF, so several can share a folder)."""
    return gguf_path.with_suffix(".Modelfile")


def modelfile_text(gguf_path: Path, num_ctx: int) -> str:
    """The Modelfile for `gguf_path` (FROM is relative: ollama resolves it beside the Modelfile)."""
    risk = "\n".join("# " + line for line in textwrap.wrap("Risks: " + RISK_NOTICE, 88))
    lines = [
        HEADER,
        "#",
        risk,
        "#",
        f"#   ollama create NAME -f {modelfile_path(gguf_path).name} && ollama run NAME",
        "",
        f"FROM ./{gguf_path.name}",
        f'TEMPLATE """{TULU_GO_TEMPLATE}"""',
        *(f'PARAMETER stop "{s}"' for s in STOP_TOKENS),
        f"PARAMETER num_ctx {num_ctx}",
        "",
    ]
    return "\n".join(lines)


def is_ours(path: Path) -> bool:
    """True if `path` is a Modelfile this module wrote (safe to replace with --force)."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().rstrip("\n") == HEADER
    except (OSError, UnicodeDecodeError):
        return False
