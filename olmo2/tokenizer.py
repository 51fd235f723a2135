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
- A checkpoint's own chat template wins: `from_pretrained(dir)` reads `chat_template.jinja`
  or `tokenizer_config.json`'s `chat_template` (as transformers does, the separate file
  first) and renders it with jinja2 in the environment transformers uses (sandboxed,
  `trim_blocks`/`lstrip_blocks`, `raise_exception`, `tojson`, `strftime_now`, loop controls,
  `{% generation %}`), with the special tokens as variables. The Python tulu renderer is the
  fallback when there is no template (or it is one of ours: identical output, clearer errors).
  `save()` writes the checkpoint's template back unchanged.
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


def _check_messages(messages) -> None:
    """The shape every template needs: a list of {role, content} objects."""
    if not isinstance(messages, (list, tuple)):
        raise Olmo2Error("messages: expected a list of {'role', 'content'} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise Olmo2Error(f"messages[{i}]: expected an object with 'role' and 'content'")


def render_chat(messages: list[dict], eos_token: str = EOS_TOKEN, add_generation_prompt: bool = True,
                add_bos: bool = False) -> str:
    """The tulu chat string for `messages` ([{role, content}]); see the module docstring."""
    _check_messages(messages)
    out = [eos_token] if add_bos else []
    for i, m in enumerate(messages):
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


def _read_chat_template(d: Path, cfg: dict, cfg_path: Path) -> tuple[str | None, Path | None]:
    """(template, file it came from): `chat_template.jinja` first, then tokenizer_config.json's
    `chat_template` (a string, or a list of {name, template} whose `default` entry is used)."""
    jinja_file = d / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8"), jinja_file
    t = cfg.get("chat_template")
    if isinstance(t, list):
        named = {e.get("name"): e.get("template") for e in t if isinstance(e, dict)}
        t = named.get("default")
    if t is None:
        return None, None
    if not isinstance(t, str):
        raise CheckpointError(f"{cfg_path}: chat_template must be a string or a list of "
                              f"{{name, template}} with a 'default' entry")
    return t, cfg_path


def compile_chat_template(template: str, source: str = "chat_template"):
    """A jinja2 Template in the environment transformers renders chat templates in."""
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _Generation(Extension):
        # `{% generation %}...{% endgeneration %}` marks assistant text for transformers'
        # assistant-token masks; for a plain prompt string its body renders unchanged.
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # transformers' override: jinja's own tojson HTML-escapes, which no prompt wants
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        from datetime import datetime
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise CheckpointError(f"{source}: chat_template is not valid Jinja (line {e.lineno}: {e.message})") from None


def render_chat_template(compiled, messages: list[dict], add_generation_prompt: bool,
                         special_tokens: dict[str, str], source: str = "chat_template") -> str:
    """Render a compiled chat template as transformers' `apply_chat_template(tokenize=False)`."""
    import jinja2
    try:
        return compiled.render(messages=messages, tools=None, documents=None,
                               add_generation_prompt=add_generation_prompt, **special_tokens)
    except jinja2.exceptions.TemplateError as e:
        msg = " ".join(str(e).split())
        raise Olmo2Error(f"{source}: the chat template refused these messages: {msg}") from None


class Tokenizer:
    """`tokenizer.json` + the ids that matter (eos, pad, optional bos) + the chat template."""

    def __init__(self, tk, eos_token: str = EOS_TOKEN, pad_token: str = PAD_TOKEN,
                 chat_add_bos: bool = False, source: str = "tokenizer.json",
                 chat_template: str | None = None, template_source: str | None = None,
                 special_tokens: dict[str, str] | None = None, eos_id: int | None = None):
        self.tk = tk
        self.source = source
        self.eos_token, self.pad_token = eos_token, pad_token
        # A checkpoint's own Jinja template (None: the built-in tulu renderer) and the
        # special-token strings it sees (`bos_token`, `eos_token`, ...), as transformers passes.
        self.chat_template = chat_template
        self.template_source = template_source or source
        self.special_tokens = dict(special_tokens or {"bos_token": eos_token, "eos_token": eos_token,
                                                      "pad_token": pad_token, "unk_token": eos_token})
        self._compiled = None
        # `eos_id` overrides the lookup, for foreign tokenizers (`data tokenize --eos-id`).
        self.eos_id = tk.token_to_id(eos_token) if eos_id is None else int(eos_id)
        if self.eos_id is None:
            raise CheckpointError(f"{source}: has no {eos_token!r} token (OLMo 2 tokenizers need it as EOS; "
                                  f"for tokenization, pass --eos-id)")
        if not 0 <= self.eos_id < self.vocab_size:
            raise CheckpointError(f"{source}: eos id {self.eos_id} is outside the vocabulary (size {self.vocab_size})")
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
            # Bytes, not read_text(): universal newlines would change the text and so the
            # fingerprint (`sha256` must equal the file's sha256, which data shards record).
            text = path.read_bytes().decode("utf-8")
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
            raise CheckpointError(f"{p}: no tokenizer.json; save the model with its tokenizer "
                                  "(`olmo2 init`/`export` take --tokenizer) or copy tokenizer.json into it")
        kw: dict = {}
        cfg_path = p / "tokenizer_config.json"
        cfg: dict = {}
        if cfg_path.exists():
            try:
                cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{cfg_path}: not valid JSON ({e.msg})") from None
            special = {}
            for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
                v = cfg.get(key)
                if isinstance(v, dict):  # older files store AddedToken dicts
                    v = v.get("content")
                if isinstance(v, str):
                    special[key] = v
            kw.update({k: special[k] for k in ("eos_token", "pad_token") if k in special})
            kw["special_tokens"] = special
        template, where = _read_chat_template(p, cfg, cfg_path)
        if template is not None:
            kw.update(chat_template=template, template_source=str(where),
                      chat_add_bos=template.lstrip().startswith("{{ bos_token }}"))
        return cls.from_file(p / "tokenizer.json", **kw)

    def save(self, out_dir: str | os.PathLike) -> None:
        """Write tokenizer.json, tokenizer_config.json (with the Jinja chat template) and
        special_tokens_map.json so both olmo2 and transformers load the same tokenizer."""
        out = Path(out_dir)
        (out / "tokenizer.json").write_bytes(self.to_json().encode("utf-8"))  # sha256 == self.sha256
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
            "chat_template": (self.chat_template if not self._builtin_template()
                              else CHAT_TEMPLATE_BOS if self.chat_add_bos else CHAT_TEMPLATE),
        }
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        special = {"bos_token": self.eos_token, "eos_token": self.eos_token, "pad_token": self.pad_token,
                   "unk_token": self.eos_token}
        (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")

    def to_json(self) -> str:
        return self._json if self._json is not None else self.tk.to_str()

    @property
    def sha256(self) -> str:
        """The one tokenizer fingerprint: sha256 of the tokenizer.json bytes (of the file it was
        loaded from, or of what `save` writes). Token-shard metadata records this value."""
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
    def _builtin_template(self) -> bool:
        return self.chat_template is None or self.chat_template in (CHAT_TEMPLATE, CHAT_TEMPLATE_BOS)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            add_bos: bool | None = None) -> str:
        """The prompt string for `messages`: the checkpoint's template, else the tulu one.

        `add_bos` None keeps what the template does; True/False force a leading BOS string
        (`<|endoftext|>`, the SFT training format) on or off."""
        if self._builtin_template():
            add_bos = self.chat_add_bos if add_bos is None else add_bos
            return render_chat(messages, self.eos_token, add_generation_prompt, add_bos)
        _check_messages(messages)
        if self._compiled is None:
            self._compiled = compile_chat_template(self.chat_template, self.template_source)
        text = render_chat_template(self._compiled, messages, add_generation_prompt, self.special_tokens,
                                    self.template_source)
        bos = self.special_tokens.get("bos_token") or self.eos_token
        if add_bos and not text.startswith(bos):
            text = bos + text
        elif add_bos is False and text.startswith(bos):
            text = text[len(bos):]
        return text

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True,
                    add_bos: bool | None = None) -> list[int]:
        return self.encode(self.apply_chat_template(messages, add_generation_prompt, add_bos))

    def check_fits(self, vocab_size: int, model_source: str = "model") -> None:
        """Refuse a tokenizer with ids the model's embedding does not have."""
        if self.vocab_size > vocab_size:
            raise CheckpointError(
                f"{self.source}: tokenizer has {self.vocab_size} ids but {model_source} embeds only {vocab_size}; "
                "use the tokenizer the model was trained with")
