"""The CLI and README.md cannot drift apart, and the command line answers fast.

The verb list is read from README.md, not typed here: every `olmo2 VERB [SUBVERB]` the
README shows (its table, its code blocks, `torchrun ... -m olmo2 VERB`) must answer
`--help` with exit 0 through the installed console script, and every verb and sub-verb the
CLI registers must have a row in the README's command table. A verb added to one side only
fails here (`olmo2 data tokenize` was once documented but never registered).
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from olmo2.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"
# The installed entry point, as a user runs it (pip puts it next to the interpreter).
OLMO2 = Path(sys.executable).parent / "olmo2"
# `olmo2 VERB` or `olmo2 VERB SUBVERB`: a sub-verb is a bare lowercase word; arguments in
# the README are flags, UPPERCASE placeholders, paths or quoted globs, so they never match.
_INVOCATION = re.compile(r"(?:^|[\s`(])olmo2 ([a-z][a-z0-9-]*)(?: ([a-z][a-z0-9-]*)(?=[\s`]|$))?")


def _code_text(md: str) -> str:
    """The README's shell code blocks and inline code spans: where commands are shown."""
    blocks = [body for lang, body in re.findall(r"```([^\n]*)\n(.*?)```", md, flags=re.S)
              if lang.strip() in ("", "bash", "sh", "shell", "console")]  # not ```python
    prose = re.sub(r"```.*?```", "", md, flags=re.S)
    return "\n".join(blocks + re.findall(r"`([^`\n]+)`", prose))


def readme_invocations(md: str | None = None) -> list[tuple[str, ...]]:
    """Every distinct (verb,) or (verb, subverb) the README shows (code blocks first)."""
    md = README.read_text(encoding="utf-8") if md is None else md
    seen: dict[tuple[str, ...], None] = {}
    for line in _code_text(md).splitlines():
        for verb, sub in _INVOCATION.findall(line):
            seen[(verb, sub) if sub else (verb,)] = None
    return list(seen)


def readme_table_verbs(md: str | None = None) -> set[tuple[str, ...]]:
    """(verb[, subverb]) of each row of the README's command table (`| \\`olmo2 ...`)."""
    md = README.read_text(encoding="utf-8") if md is None else md
    rows = [m.group(1) for m in re.finditer(r"^\| `(olmo2 [^`]*)`", md, flags=re.M)]
    out = set()
    for row in rows:
        for verb, sub in _INVOCATION.findall(row):
            out.add((verb, sub) if sub else (verb,))
    return out


def cli_verbs() -> set[tuple[str, ...]]:
    """(verb,) for plain verbs and (verb, subverb) for each sub-verb of a verb group."""
    out = set()
    top = next(a for a in build_parser()._actions if a.dest == "verb")
    for verb, p in top.choices.items():
        subs = [a for a in p._actions if a.__class__.__name__ == "_SubParsersAction"]
        if subs:
            out.update((verb, s) for s in subs[0].choices)
        if not subs or p.get_default("func") is not None:  # a verb that also runs on its own
            out.add((verb,))
    return out


def test_readme_parsing_finds_the_table():
    """Guards the parser above: a README reshuffle must not make the checks vacuous."""
    md = ("| `olmo2 data tokenize IN... --out DIR` | x |\n| `olmo2 soup CKPT... --out D` | y |\n"
          "run `olmo2 info --model m`\n```bash\ntorchrun -m olmo2 train --recipe r\n"
          "olmo2 soup hf/s2-* --out final\n```\n**olmo2** is a package; `olmo2` on PATH\n"
          "```python\nfrom olmo2 import Olmo2\n```\n")
    assert set(readme_invocations(md)) == {("data", "tokenize"), ("soup",), ("info",), ("train",)}
    assert readme_table_verbs(md) == {("data", "tokenize"), ("soup",)}
    assert len(readme_table_verbs()) >= 10, "README's command table not found"


@pytest.mark.parametrize("invocation", readme_invocations(), ids=" ".join)
def test_readme_verb_help_runs(invocation):
    """`olmo2 <verb> [sub] --help` through the console script, for every one README shows."""
    assert OLMO2.exists(), f"{OLMO2}: console script missing; run `make setup`"
    r = subprocess.run([str(OLMO2), *invocation, "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"olmo2 {' '.join(invocation)} --help: {r.stderr}"
    assert r.stdout.startswith(f"usage: olmo2 {' '.join(invocation)}")


def test_every_cli_verb_is_in_the_readme_table():
    missing = sorted(" ".join(v) for v in cli_verbs() - readme_table_verbs())
    assert not missing, f"verbs the CLI has but README.md's command table lacks: {missing}"
    stale = sorted(" ".join(v) for v in readme_table_verbs() - cli_verbs())
    assert not stale, f"README.md's command table lists verbs the CLI lacks: {stale}"


def test_building_the_cli_imports_no_torch():
    """`olmo2 --help` and argument errors must not pay for torch (~4 s on 2 cores)."""
    code = ("import sys, contextlib, io\n"
            "import olmo2.cli\n"
            "olmo2.cli.build_parser()\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
            "    for argv in (['--help'], ['init', '--preset', 'nope', '--out', 'x'], ['data', 'tokenize', '--help']):\n"
            "        try:\n"
            "            olmo2.cli.main(argv)\n"
            "        except SystemExit:\n"
            "            pass\n"
            "print(sorted(m for m in ('torch', 'numpy', 'transformers', 'tokenizers') if m in sys.modules))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", f"heavy modules imported by the CLI's parser: {r.stdout.strip()}"


def test_public_api_is_lazy_but_complete():
    code = ("import sys, olmo2\n"
            "assert 'torch' not in sys.modules\n"
            "from olmo2 import Olmo2, Tokenizer, ModelConfig, PRESETS, preset, load_model, save_model, Olmo2Error\n"
            "import olmo2.model\n"
            "assert Olmo2 is olmo2.model.Olmo2 and 'torch' in sys.modules\n"
            "assert set(olmo2.__all__) <= set(dir(olmo2))\n"
            "try:\n    olmo2.Nope\nexcept AttributeError:\n    print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_bad_choice_is_a_usage_error_listing_the_choices():
    r = subprocess.run([str(OLMO2), "init", "--preset", "olmo2-2b", "--out", "x"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "invalid choice" in r.stderr and "olmo2-1b" in r.stderr


def test_verb_help_has_description_and_example():
    for verb in ("init", "info", "score", "train", "soup", "replicate", "export"):
        r = subprocess.run([str(OLMO2), verb, "--help"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        usage_end = r.stdout.index("\n\n")
        assert r.stdout[usage_end + 2:].split("\n")[0].strip() and not r.stdout[usage_end + 2:].startswith(
            ("positional", "options")), f"{verb}: no description"
        assert re.search(rf"^examples?:\n  olmo2 {verb} ", r.stdout, flags=re.M), f"{verb}: no example"


def test_train_help_lists_recipes_and_set_fields():
    from olmo2.config import ModelConfig
    from olmo2.recipes import RECIPES
    from olmo2.train.config import TrainConfig, field_docs

    r = subprocess.run([str(OLMO2), "train", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    for name in RECIPES:
        assert f" {name}" in text, name
    for section, cls in (("train", TrainConfig), ("model", ModelConfig)):
        for field, doc in field_docs(cls).items():
            assert f"{section}.{field} (" in text, field
            assert " ".join(doc.split()[:6]) in text, f"{section}.{field}: doc missing"


def test_data_tokenize_help_default_matches_library():
    from olmo2.commands.data_cmds import DEFAULT_SHARD_TOKENS
    from olmo2.data.tokenize import DEFAULT_SHARD_TOKENS as LIB
    assert DEFAULT_SHARD_TOKENS == LIB


def test_init_info_score_round_trip(tmp_path, capsys):
    from olmo2.cli import main
    assert main(["init", "--preset", "tiny", "--out", str(tmp_path / "m"), "--seed", "3"]) == 0
    assert main(["info", "--model", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "parameters" in out and "12,952,128" in out
