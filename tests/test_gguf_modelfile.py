"""The ollama Modelfile's Go template renders exactly our tulu prompt.

ollama renders prompts with Go's `text/template` over `.Messages` ({Role, Content}); the
reference here is Go's own text/template (a Go toolchain, Debian `golang-go`), run on the
TEMPLATE block of a Modelfile we write, against olmo2/tokenizer.py's `render_chat`. Skips
where no `go` is installed (it is not a registry package of this project).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from olmo2.convert.modelfile import modelfile_text
from olmo2.tokenizer import render_chat

GO_MAIN = r"""
package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

func main() {
	src, _ := os.ReadFile(os.Args[1])
	var convs [][]Message
	if err := json.NewDecoder(os.Stdin).Decode(&convs); err != nil {
		panic(err)
	}
	t := template.Must(template.New("m").Parse(string(src)))
	var outs []string
	for _, c := range convs {
		var b []byte
		w := &buf{&b}
		if err := t.Execute(w, map[string]any{"Messages": c}); err != nil {
			panic(err)
		}
		outs = append(outs, string(b))
	}
	json.NewEncoder(os.Stdout).Encode(outs)
}

type buf struct{ b *[]byte }

func (w *buf) Write(p []byte) (int, error) { *w.b = append(*w.b, p...); return len(p), nil }
"""

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+3?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
     {"role": "user", "content": "Line one\nline two\n"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hel"}],  # continue a reply
]


@pytest.mark.skipif(shutil.which("go") is None, reason="no Go toolchain (apt install golang-go)")
def test_modelfile_template_renders_like_render_chat(tmp_path):
    from pathlib import Path
    text = modelfile_text(Path("m.gguf"), 2048)
    template = re.search(r'TEMPLATE """(.*?)"""', text, re.S).group(1)
    (tmp_path / "t.tmpl").write_text(template)
    (tmp_path / "main.go").write_text(GO_MAIN)
    env = dict(os.environ, GOCACHE=str(tmp_path / "gocache"), GOPATH=str(tmp_path / "gopath"), GO111MODULE="off")
    p = subprocess.run(["go", "run", str(tmp_path / "main.go"), str(tmp_path / "t.tmpl")],
                       input=json.dumps(CONVERSATIONS), capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    for conv, g in zip(CONVERSATIONS, got):
        last_is_assistant = conv[-1]["role"] == "assistant"
        want = render_chat(conv, add_generation_prompt=not last_is_assistant)
        if last_is_assistant:  # ollama continues the reply: no closing EOS on the last turn
            want = want[: -len("<|endoftext|>")]
        assert g == want, conv
