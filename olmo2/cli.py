"""`olmo2 <verb>`: one command line across the lifecycle.

The verbs are the table in README.md ("The command line"); `olmo2 --help` lists them and
tests/test_cli.py fails when the two differ, so this docstring does not repeat the list.

Each verb lives in `olmo2/commands/<stage>_cmds.py` and registers its own flags; this file
only wires them up and owns the one place where user errors are printed: an `Olmo2Error`
becomes `error: <one line>` on stderr and exit code 2; `--debug` adds the traceback.

Footgun: building the parser must stay cheap (`olmo2 --help` and argument errors answer in
well under a second). Verb modules import torch, numpy and the rest inside their run
functions, never at module level; tests/test_cli.py checks that `olmo2.cli` imports no torch.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from olmo2.errors import Olmo2Error

# Verb modules in the order their verbs appear in --help.
VERB_MODULES = [
    "olmo2.commands.model_cmds",
    "olmo2.commands.convert_cmds",
    "olmo2.commands.gen_cmds",
    "olmo2.commands.data_cmds",
    "olmo2.commands.train_cmds",
    "olmo2.commands.post_cmds",
    "olmo2.commands.trace_cmds",
    "olmo2.commands.eval_cmds",
    "olmo2.commands.serve_cmds",
    "olmo2.commands.quant_cmds",
]


class Parser(argparse.ArgumentParser):
    """argparse with the house error format: a bad or missing flag is one line on stderr,
    `error: <verb>: <what>; see <verb> --help`, exit 2 (argparse's default adds the whole
    usage block). Sub-verb parsers inherit the class (argparse uses `type(parent)`)."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="olmo2", description="OLMo 2 from raw text to a laptop.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name in VERB_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # a real missing dependency inside the module: surface it
                raise
            continue  # a verb group not installed in this build
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from olmo2.infer.omp import bounded_spin
    bounded_spin()  # before any verb imports torch (olmo2/infer/omp.py: decode under outside load)
    argv = list(sys.argv[1:] if argv is None else argv)
    # `--debug` is accepted anywhere on the line, not only before the verb.
    debug = "--debug" in argv or os.environ.get("OLMO2_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
        sys.stdout.flush()  # a closed pipe shows up here rather than at interpreter exit
        return int(rc or 0)
    except BrokenPipeError:  # `olmo2 generate ... | head`: the reader has what it wanted
        _silence_stdout()
        return 0
    except Olmo2Error as e:
        if debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # unreadable input, unwritable output, disk full: the user's to fix
        if debug:
            traceback.print_exc()
        print(f"error: {describe_os_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def describe_os_error(e: OSError) -> str:
    """One line for an OSError: the file it concerns (when known), what happened, what to do."""
    import errno
    where = f"{e.filename}: " if getattr(e, "filename", None) else ""
    if e.errno == errno.ENOSPC:
        return f"{where}no space left on device; free some space (or choose another --out) and rerun"
    return f"{where}{e.strerror or e}"


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail on the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
