"""The dolma2 tokenizer (and demo tokenizers in its style) plus the OLMo 2 chat template.

A thin wrapper over a `tokenizers.Tokenizer` loaded from `tokenizer.json`:

- dolma2 is cl100k-based byte-level BPE: 100278 ids, eos `<|endoftext|>` = 100257,
  pad `<|pad|>` = 100277. **No BOS** is prepended to base-model text (OLMo 2 pretraining
  only appends EOS after each document), so `encode()` adds nothing unless asked.
- `<|user|>`, `<|assistant|>`, `<|system|>` are NOT special tokens in dolma2; the chat
  template is plain text around the turns (tulu format):

      [<|endoftext|>]<|system|>\\n{s}\\n<|user|>\\n{u}\\n<|assistant|>\\n{a}<|endoftext|>\\n<|user|>\\n...

  A non-final assistant turn ends `<|endoftext|>\\n`, the final one `<|endoftext|>`, and the
  generation prompt is `<|assistant|>\\n`. The OLMo 2 1B model card says its template has
  no BOS, while the 1B SFT/DPO/RL runs trained with `--add_bos` (a leading
  `<|endoftext|>`); `add_bos` switches between the two. We also write the same template in
  Jinja into `tokenizer_config.json`, so `transformers`' `apply_chat_template` renders the
  identical string (a test checks this).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from olmo2.errors import CheckpointError, Olmo2Error

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
ROLES = ("system", "user", "assistant")

# Our Jinja rendering of the tulu template; `bos_token` is prepended only in the add_bos
# variant. Whitespace control (`-`) keeps the output free of template newlines.
_JINJA_BODY = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ '<|system|>\\n' + message['content'] + '\\n' }}"
    "{%- elif message['role'] == 'user' -%}{{ '<|user|>\\n' + message['content'] + '\\n' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ '<|assistant|>\\n' + message['content'] + eos_token }}{%- if not loop.last -%}{{ '\\n' }}{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}{%- endif -%}"
)
CHAT_TEMPLATE = _JINJA_BODY
CHAT_TEMPLATE_BOS = "{{ bos_token }}" + _JINJA_BODY


def render_chat(messages: list[dict], eos_token: str = EOS_TOKEN, add_generation_prompt: bool = True,
                add_bos: bool = False) -> str:
    """The tulu chat string for `messages` ([{role, content}]); see the module docstring."""
    out = [eos_token] if add_bos else []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise Olmo2Error(f"messages[{i}]: expected an object with 'role' and 'content'")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise Olmo2Error(f"messages[{i}].role: {role!r} is not one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise Olmo2Error(f"messages[{i}].content: expected a string")
        if role == "assistant":
            out.append("<|assistant|>\n" + content + eos_token + ("\n" if i < len(messages) - 1 else ""))
        else:
            out.append(f"<|{role}|>\n{content}\n")
    if add_generation_prompt:
        out.append("<|assistant|>\n")
    return "".join(out)


class Tokenizer:
    """`tokenizer.json` + the ids that matter (eos, pad, optional bos) + the chat template."""

    def __init__(self, tk, eos_token: str = EOS_TOKEN, pad_token: str = PAD_TOKEN,
                 chat_add_bos: bool = False, source: str = "tokenizer.json"):
        self.tk = tk
        self.source = source
        self.eos_token, self.pad_token = eos_token, pad_token
        self.eos_id = tk.token_to_id(eos_token)
        if self.eos_id is None:
            raise CheckpointError(f"{source}: has no {eos_token!r} token (OLMo 2 tokenizers need it as EOS)")
        pid = tk.token_to_id(pad_token)
        self.pad_id = pid if pid is not None else self.eos_id
        self.chat_add_bos = chat_add_bos
        self._json: str | None = None

    # ---- loading / saving ----------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | os.PathLike, **kw) -> "Tokenizer":
        from tokenizers import Tokenizer as HFTokenizer
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
            tk = HFTokenizer.from_str(text)
        except FileNotFoundError:
            raise CheckpointError(f"{path}: not found") from None
        except Exception as e:
            raise CheckpointError(f"{path}: not a valid tokenizer.json ({str(e).splitlines()[0][:100]})") from None
        tok = cls(tk, source=str(path), **kw)
        tok._json = text
        return tok

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike) -> "Tokenizer":
        """A checkpoint dir (tokenizer.json [+ tokenizer_config.json]), a tokenizer.json file, or a hub id."""
        p = Path(path_or_id).expanduser()
        if p.is_file():
            return cls.from_file(p)
        if not p.exists():
            from olmo2.checkpoint import resolve
            p = resolve(path_or_id)
        if not (p / "tokenizer.json").exists():
            raise CheckpointError(f"{p}: no tokenizer.json (save one with the model, or pass --tokenizer)")
        kw = {}
        cfg_path = p / "tokenizer_config.json"
        if cfg_path.exists():
            try:
                cfg = json.loads(cfg_path.read_text())
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{cfg_path}: not valid JSON ({e.msg})") from None
            for key, name in (("eos_token", "eos_token"), ("pad_token", "pad_token")):
                v = cfg.get(key)
                if isinstance(v, dict):
                    v = v.get("content")
                if isinstance(v, str):
                    kw[name] = v
            kw["chat_add_bos"] = str(cfg.get("chat_template", "")).lstrip().startswith("{{ bos_token }}")
        return cls.from_file(p / "tokenizer.json", **kw)

    def save(self, out_dir: str | os.PathLike) -> None:
        """Write tokenizer.json, tokenizer_config.json (with the Jinja chat template) and
        special_tokens_map.json so both olmo2 and transformers load the same tokenizer."""
        out = Path(out_dir)
        (out / "tokenizer.json").write_text(self.to_json(), encoding="utf-8")
        config = {
            # A fast tokenizer over tokenizer.json; no automatic BOS/EOS, like dolma2 in OLMo 2.
            "tokenizer_class": "PreTrainedTokenizerFast",
            "add_bos_token": False,
            "add_eos_token": False,
            "bos_token": self.eos_token,
            "eos_token": self.eos_token,
            "pad_token": self.pad_token,
            "unk_token": self.eos_token,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 1000000000000000019884624838656,
            "chat_template": CHAT_TEMPLATE_BOS if self.chat_add_bos else CHAT_TEMPLATE,
        }
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        special = {"bos_token": self.eos_token, "eos_token": self.eos_token, "pad_token": self.pad_token,
                   "unk_token": self.eos_token}
        (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")

    def to_json(self) -> str:
        return self._json if self._json is not None else self.tk.to_str()

    @property
    def sha256(self) -> str:
        """Fingerprint of the tokenizer definition (data shards record it)."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    # ---- encoding ------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of ids (including added tokens); the model's embedding may be larger."""
        return self.tk.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        """Token ids of `text`; special-token strings in the text map to their ids."""
        ids = self.tk.encode(text, add_special_tokens=False).ids
        return [self.eos_id] + ids if add_bos else ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tk.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.tk.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def id_to_token(self, i: int) -> str | None:
        return self.tk.id_to_token(i)

    def token_to_id(self, token: str) -> int | None:
        return self.tk.token_to_id(token)

    # ---- chat ----------------------------------------------------------------------
    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            add_bos: bool | None = None) -> str:
        add_bos = self.chat_add_bos if add_bos is None else add_bos
        return render_chat(messages, self.eos_token, add_generation_prompt, add_bos)

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True,
                    add_bos: bool | None = None) -> list[int]:
        return self.encode(self.apply_chat_template(messages, add_generation_prompt, add_bos))

    def check_fits(self, vocab_size: int, model_source: str = "model") -> None:
        """Refuse a tokenizer with ids the model's embedding does not have."""
        if self.vocab_size > vocab_size:
            raise CheckpointError(
                f"{self.source}: tokenizer has {self.vocab_size} ids but {model_source} embeds only {vocab_size}; "
                "use the tokenizer the model was trained with")
