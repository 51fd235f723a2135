"""Every verb's --help runs, and the verb surface is what the README documents."""
import subprocess
import sys

import pytest

from olmo2.cli import build_parser

VERBS = ["init", "info", "score", "generate", "chat", "data", "train", "soup", "replicate"]


def test_all_verbs_registered():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "verb")
    missing = [v for v in VERBS if v not in sub.choices]
    assert not missing, f"verbs not registered: {missing}"


@pytest.mark.parametrize("verb", VERBS)
def test_help(verb):
    r = subprocess.run([sys.executable, "-m", "olmo2", verb, "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "usage: olmo2" in r.stdout


def test_init_info_score_round_trip(tmp_path, capsys):
    from olmo2.cli import main
    assert main(["init", "--preset", "tiny", "--out", str(tmp_path / "m"), "--seed", "3"]) == 0
    assert main(["info", "--model", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "parameters" in out and "12,952,128" in out
