"""A checkpoint's own chat template is used, rendered as transformers renders it.

References nobody here wrote: the chat template published with OLMo 2 Instruct/SFT
checkpoints (the Jinja below, from allenai/OLMo-2-1124-7B-SFT's tokenizer_config.json
`chat_template`), the strings ../shared/docs/olmo2-facts.md §2 says it produces (written out
literally here), and transformers' `apply_chat_template` on the same directory.
"""
from __future__ import annotations

import json

import pytest

from olmo2.errors import Olmo2Error
from olmo2.tokenizer import Tokenizer

# Published OLMo 2 7B/13B Instruct template (note the double spaces: they are in the original).
OLMO2_INSTRUCT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ '<|system|>\\n' + message['content'] + '\\n' }}{% elif message['role'] == 'user' %}"
    "{{ '<|user|>\\n' + message['content'] + '\\n' }}{% elif message['role'] == 'assistant' %}"
    "{% if not loop.last %}{{ '<|assistant|>\\n'  + message['content'] + eos_token + '\\n' }}"
    "{% else %}{{ '<|assistant|>\\n'  + message['content'] + eos_token }}{% endif %}{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}{% endfor %}"
)

CONV = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}]
# olmo2-facts.md §2: `<|system|>\n{sys}\n` first, `<|user|>\n{user}\n`, a non-final assistant
# turn `<|assistant|>\n{a}<|endoftext|>\n`, generation prompt `<|assistant|>\n`; the 7B/13B
# template starts with bos_token = <|endoftext|>.
CONV_RENDERED = ("<|endoftext|><|system|>\nYou are terse.\n<|user|>\n2+2?\n<|assistant|>\n"
                 "4<|endoftext|>\n<|user|>\nAnd 3+3?\n<|assistant|>\n")

# Not tulu at all: multi-line with block tags (so trim_blocks/lstrip_blocks matter),
# raise_exception, loop controls, tojson and a {% generation %} block.
CUSTOM_TEMPLATE = """{% for m in messages %}
    {% if m['role'] not in ['system', 'user', 'assistant'] %}
        {{ raise_exception('unsupported role ' + m['role']) }}
    {% endif %}
    {% if m['role'] == 'system' and not loop.first %}{% continue %}{% endif %}
<|im_start|>{{ m['role'] }}
    {% if m['role'] == 'assistant' %}
{% generation %}{{ m['content'] }}{% endgeneration %}<|im_end|>
    {% else %}
{{ m['content'] }}{{ '' if m['content'] is string else (m['content'] | tojson) }}<|im_end|>
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

CONVS = [CONV, CONV[1:2], [{"role": "user", "content": "naïve “quotes” <|endoftext|>"},
                           {"role": "assistant", "content": "ok"}]]


def _checkpoint(tmp_path, dolma2_tokenizer_path, template, in_file=False):
    d = tmp_path / "ckpt"
    d.mkdir(exist_ok=True)
    (d / "tokenizer.json").write_bytes(dolma2_tokenizer_path.read_bytes())
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>",
           "eos_token": "<|endoftext|>", "pad_token": "<|pad|>", "unk_token": "<|endoftext|>",
           "add_bos_token": False, "add_eos_token": False}
    if in_file:
        (d / "chat_template.jinja").write_text(template)
        cfg["chat_template"] = "{{ 'the separate file wins, as in transformers' }}"
    else:
        cfg["chat_template"] = template
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    return d


def _hf(d):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(d)


def test_published_olmo2_template_renders_the_documented_string(tmp_path, dolma2_tokenizer_path):
    d = _checkpoint(tmp_path, dolma2_tokenizer_path, OLMO2_INSTRUCT_TEMPLATE)
    tok = Tokenizer.from_pretrained(d)
    assert tok.apply_chat_template(CONV) == CONV_RENDERED
    assert tok.apply_chat_template(CONV[1:3], add_generation_prompt=False) == (
        "<|endoftext|><|user|>\n2+2?\n<|assistant|>\n4<|endoftext|>")
    assert tok.apply_chat_template(CONV, add_bos=False) == CONV_RENDERED[len("<|endoftext|>"):]


@pytest.mark.hf
@pytest.mark.parametrize("template", ["olmo2", "custom"])
@pytest.mark.parametrize("in_file", [False, True])
def test_checkpoint_template_matches_transformers(tmp_path, dolma2_tokenizer_path, template, in_file):
    text = OLMO2_INSTRUCT_TEMPLATE if template == "olmo2" else CUSTOM_TEMPLATE
    d = _checkpoint(tmp_path, dolma2_tokenizer_path, text, in_file=in_file)
    ours, hf = Tokenizer.from_pretrained(d), _hf(d)
    for conv in CONVS:
        for gen in (True, False):
            want = hf.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)
            assert ours.apply_chat_template(conv, add_generation_prompt=gen) == want, (conv, gen)
    if template == "custom":  # the case our built-in renderer used to produce instead
        assert ours.apply_chat_template(CONVS[1]).startswith("<|im_start|>user\n2+2?<|im_end|>")


@pytest.mark.hf
def test_saved_tokenizer_keeps_the_checkpoint_template(tmp_path, dolma2_tokenizer_path):
    d = _checkpoint(tmp_path, dolma2_tokenizer_path, CUSTOM_TEMPLATE)
    (tmp_path / "copy").mkdir()
    Tokenizer.from_pretrained(d).save(tmp_path / "copy")
    hf = _hf(tmp_path / "copy")
    assert (Tokenizer.from_pretrained(tmp_path / "copy").apply_chat_template(CONV)
            == hf.apply_chat_template(CONV, tokenize=False, add_generation_prompt=True))
    assert json.loads((tmp_path / "copy" / "tokenizer_config.json").read_text())["chat_template"] == CUSTOM_TEMPLATE


def test_template_errors_are_one_line(tmp_path, dolma2_tokenizer_path):
    d = _checkpoint(tmp_path, dolma2_tokenizer_path, CUSTOM_TEMPLATE)
    with pytest.raises(Olmo2Error, match="unsupported role tool") as e:
        Tokenizer.from_pretrained(d).apply_chat_template([{"role": "tool", "content": "x"}])
    assert "\n" not in str(e.value) and "tokenizer_config.json" in str(e.value)
    d = _checkpoint(tmp_path, dolma2_tokenizer_path, "{% for m in messages %}{{ m['content'] }")
    with pytest.raises(Olmo2Error, match="not valid Jinja") as e:
        Tokenizer.from_pretrained(d).apply_chat_template(CONV)
    assert "\n" not in str(e.value)
    with pytest.raises(Olmo2Error, match=r"messages\[0\]"):
        Tokenizer.from_pretrained(d).apply_chat_template([{"text": "no role"}])


def test_no_template_falls_back_to_tulu(tmp_path, dolma2_tokenizer_path):
    d = _checkpoint(tmp_path, dolma2_tokenizer_path, OLMO2_INSTRUCT_TEMPLATE)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    del cfg["chat_template"]
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = Tokenizer.from_pretrained(d)
    assert tok.chat_template is None
    assert tok.apply_chat_template(CONV, add_bos=True) == CONV_RENDERED
