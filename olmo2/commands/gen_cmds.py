"""`olmo2 generate` and `olmo2 chat`: streamed text generation on the CPU.

    olmo2 generate --model DIR --prompt "The capital of France is" --temperature 0
    olmo2 generate --model DIR --chat --prompt "Write a haiku" --stop "\\n\\n" --seed 1
    olmo2 chat --model DIR --system "You are terse."        # /reset, /exit, Ctrl-D

The continuation / assistant text goes to stdout, flushed per piece; everything else
(banner, prompts, notices, tokens/s) goes to stderr so stdout can be piped. `chat` reads
stdin line by line and works when stdin is not a terminal
(`printf 'Hi\\n/exit\\n' | olmo2 chat --model DIR`).

Chat keeps one `Decoder` for the conversation: each turn prefills only the tokens after
the cached prefix (the previous turns); `/reset` empties it, and when the history is
trimmed to fit the context the cache is rebuilt from the first token that changed.

Footguns: `--temperature 0` is greedy and ignores --top-k/--top-p; chat history is
trimmed oldest-turn-first when prompt + --max-new-tokens would exceed the context.
"""
from __future__ import annotations

import argparse
import sys

from olmo2.errors import GenerationError

BANNER = ("Note: this model can produce false, biased or harmful text and must not be relied on. "
          "Type /reset to clear the history, /exit to quit.")


def _add_sampling_flags(p: argparse.ArgumentParser, default_max_new: int) -> None:
    p.add_argument("--model", required=True, help="checkpoint directory (HF format, with tokenizer.json) or hub id")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help=f"most tokens to generate per reply (default {default_max_new}, or what the context leaves)")
    p.set_defaults(default_max_new=default_max_new)
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature; 0 = greedy")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling threshold in (0, 1]")
    p.add_argument("--top-k", type=int, default=None, help="sample only from the k most likely tokens")
    p.add_argument("--repetition-penalty", type=float, default=None, help="> 1 discourages repeating tokens")
    p.add_argument("--seed", type=int, default=None, help="RNG seed for reproducible sampling")
    p.add_argument("--stop", action="append", default=None, metavar="STR",
                   help="stop when this text appears (not printed); repeatable")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype")
    p.add_argument("--quant", choices=("none", "bf16", "int8", "int4"), default="none",
                   help="weight precision: quantize on the fly at load (olmo2/quant); a checkpoint from `olmo2 quantize` loads as stored")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the one-token decode step (slow first call; needs a C++ compiler)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: the cores this process may run on)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `generate` and `chat` to the top-level CLI."""
    g = subparsers.add_parser("generate", help="stream a continuation of a prompt",
                              description="Stream the model's continuation of --prompt to stdout.")
    _add_sampling_flags(g, 128)
    g.add_argument("--prompt", required=True, help="prompt text ('-' reads it from stdin)")
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template as one user turn")
    g.add_argument("--add-bos", action="store_true", help="with --chat: prepend <|endoftext|> (the SFT training format)")
    g.add_argument("--trace", metavar="INDEX", default=None,
                   help="then trace the continuation against an `olmo2 trace index` (view on stderr)")
    g.set_defaults(func=run_generate)

    c = subparsers.add_parser("chat", help="interactive chat with the OLMo 2 (tulu) template",
                              description="Chat on stdin/stdout; /reset clears history, /exit quits.")
    _add_sampling_flags(c, 256)
    c.add_argument("--system", default=None, help="system message placed before the conversation")
    c.add_argument("--verbose", action="store_true",
                   help="after each reply, print prompt tokens (and how many came from the cache) and tok/s")
    c.add_argument("--add-bos", action="store_true", help="prepend <|endoftext|> to the chat (the SFT training format)")
    c.add_argument("--trace", metavar="INDEX", default=None,
                   help="trace each reply against an `olmo2 trace index` (view on stderr)")
    c.set_defaults(func=run_chat)


def _validate(args) -> None:
    """Fail on bad flag values (and text that is not UTF-8) before spending time loading the model."""
    from olmo2.infer.sampling import SamplingParams
    from olmo2.textinput import arg_text
    SamplingParams(args.temperature, args.top_k, args.top_p, args.repetition_penalty).validated()
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise GenerationError(f"--max-new-tokens must be >= 1 (got {args.max_new_tokens})")
    if args.threads is not None and args.threads < 1:
        raise GenerationError(f"--threads must be >= 1 (got {args.threads})")
    if args.seed is not None and not 0 <= args.seed < 2**64:
        raise GenerationError(f"--seed must be in [0, 2**64) (got {args.seed})")
    if any(not s for s in args.stop or []):
        raise GenerationError("--stop must be a non-empty string")
    args.stop = [arg_text(s, "--stop") for s in args.stop] if args.stop else args.stop
    for flag in ("prompt", "system"):
        if getattr(args, flag, None) is not None:
            setattr(args, flag, arg_text(getattr(args, flag), f"--{flag}"))


def _load(args):
    from olmo2.checkpoint import load_model
    from olmo2.infer.threads import set_threads
    from olmo2.tokenizer import Tokenizer
    set_threads(args.threads)
    model = load_model(args.model, dtype=args.dtype, quant=args.quant)
    tok = Tokenizer.from_pretrained(args.model)
    tok.check_fits(model.config.vocab_size, str(args.model))
    return model, tok


def _sampling_kwargs(args, tok) -> dict:
    return dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                repetition_penalty=args.repetition_penalty, eos_token_id=tok.eos_id,
                stop_strings=args.stop or None, compile=args.compile)


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def run_generate(args) -> int:
    """`olmo2 generate`: stream the continuation, then tokens/s on stderr."""
    import torch

    from olmo2.infer.generate import GenerationStats, stream_generate
    from olmo2.textinput import decode_utf8, stdin_bytes
    _validate(args)
    prompt = decode_utf8(stdin_bytes(), "--prompt - (stdin)") if args.prompt == "-" else args.prompt
    if args.trace:  # a bad index fails before the model is loaded
        from olmo2.trace.store import open_index
        open_index(args.trace)
    model, tok = _load(args)
    if args.chat:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                       add_bos=True if args.add_bos else None)
    else:
        text = prompt
    ids = tok.encode(text)
    stats = GenerationStats()
    gen = torch.Generator().manual_seed(args.seed) if args.seed is not None else None
    max_new = args.max_new_tokens if args.max_new_tokens is not None else args.default_max_new
    pieces = stream_generate(model, tok, ids, max_new, generator=gen, stats=stats,
                             **_sampling_kwargs(args, tok))
    out = []
    for piece in pieces:
        _write(piece)
        out.append(piece)
    _write("\n")
    prefill = stats.prompt_tokens / stats.prefill_s if stats.prefill_s > 0 else 0.0
    print(f"[{stats.new_tokens} tokens ({stats.stop_reason}); prompt {stats.prompt_tokens} tokens at "
          f"{prefill:.1f} tok/s; decode {stats.decode_tok_s:.1f} tok/s]", file=sys.stderr)
    if args.trace:
        from olmo2.commands.trace_cmds import trace_and_print
        trace_and_print(args.trace, "".join(out), stream=sys.stderr)
    return 0


def _fit_history(tok, model, system, history, user, max_new, add_bos):
    """(prompt ids, turns dropped): drop the oldest (user, assistant) pairs until it fits."""
    ctx = model.config.max_seq_len
    dropped = 0
    while True:
        msgs = ([{"role": "system", "content": system}] if system else []) + history + [
            {"role": "user", "content": user}]
        ids = tok.encode(tok.apply_chat_template(msgs, add_generation_prompt=True, add_bos=add_bos))
        if len(ids) + max_new <= ctx or not history:
            return ids, dropped
        del history[:2]
        dropped += 1


def run_chat(args) -> int:
    """`olmo2 chat`: a line-based REPL with history, /reset and /exit."""
    import torch

    from olmo2.infer.decoder import Decoder
    from olmo2.infer.generate import GenerationStats, stream_generate
    from olmo2.textinput import InputTextError, decode_utf8, stdin_bytes
    _validate(args)
    if args.trace:  # a bad index fails before the model is loaded
        from olmo2.trace.store import open_index
        open_index(args.trace)
    model, tok = _load(args)
    add_bos = True if args.add_bos else None
    args.max_new_tokens = _check_chat_room(tok, model, args.system, args.max_new_tokens, args.default_max_new, add_bos)
    gen = torch.Generator().manual_seed(args.seed) if args.seed is not None else None
    kw = _sampling_kwargs(args, tok)
    # A model that starts a new user turn by itself has finished its reply.
    kw["stop_strings"] = (args.stop or []) + ["<|user|>"]
    # One decoder for the whole conversation: its cache keeps the K/V of every turn, so a
    # new turn prefills only its own tokens (the cache grows as the chat does).
    decoder = Decoder(model, 1, 0, compile=args.compile)
    tty = sys.stdin.isatty()
    print(BANNER, file=sys.stderr, flush=True)
    history: list[dict] = []
    lineno = 0
    try:
        while True:
            if tty:
                print("user> ", end="", file=sys.stderr, flush=True)
            raw = stdin_bytes(line=True)  # bytes: a bad line is reported, not fatal
            if not raw:  # EOF
                break
            lineno += 1
            try:
                line = decode_utf8(raw, f"stdin line {lineno}", one_line=True)
            except InputTextError as e:
                print(f"error: {e}; the line was skipped", file=sys.stderr, flush=True)
                continue
            user = line.rstrip("\n").rstrip("\r")
            cmd = user.strip()
            if not cmd:
                continue
            if cmd in ("/exit", "/quit"):
                break
            if cmd == "/reset":
                history.clear()
                decoder.reset()
                print("(history cleared)", file=sys.stderr, flush=True)
                continue
            ids, dropped = _fit_history(tok, model, args.system, history, user, args.max_new_tokens, add_bos)
            if dropped:
                print(f"(context full: dropped the {dropped} oldest turn{'s' if dropped > 1 else ''})",
                      file=sys.stderr, flush=True)
            try:
                stats = GenerationStats()
                pieces = stream_generate(model, tok, ids, args.max_new_tokens, generator=gen, stats=stats,
                                         decoder=decoder, **kw)
            except GenerationError as e:  # this message alone does not fit: say so, keep chatting
                print(f"error: {e}", file=sys.stderr, flush=True)
                continue
            reply = []
            for piece in pieces:
                reply.append(piece)
                _write(piece)
            _write("\n")
            if args.verbose:
                print(f"[prompt {stats.prompt_tokens} tokens, {stats.reused_tokens} reused from the cache; "
                      f"decode {stats.decode_tok_s:.1f} tok/s]", file=sys.stderr, flush=True)
            history += [{"role": "user", "content": user}, {"role": "assistant", "content": "".join(reply).strip()}]
            if args.trace:
                from olmo2.commands.trace_cmds import trace_and_print
                trace_and_print(args.trace, "".join(reply), stream=sys.stderr)
    except KeyboardInterrupt:  # Ctrl-C: end the session like generate does (128 + SIGINT)
        _write("\n")
        print("interrupted", file=sys.stderr, flush=True)
        return 130
    return 0


def _check_chat_room(tok, model, system, max_new, default_max_new, add_bos) -> int:
    """The reply budget: refuse at start a --max-new-tokens that leaves no room for even a
    one-word turn (rather than failing every turn); the default shrinks to what fits."""
    ctx = model.config.max_seq_len
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": "hi"}]
    need = len(tok.encode(tok.apply_chat_template(msgs, add_generation_prompt=True, add_bos=add_bos)))
    if max_new is None:
        max_new = max(1, min(default_max_new, (ctx - need) // 2))  # leave room for the user's words
    if need + max_new > ctx:
        raise GenerationError(
            f"--max-new-tokens {max_new} leaves no room for a message: the model's context is {ctx} tokens and "
            f"the chat template{' with --system' if system else ''} takes {need}; use at most {max(ctx - need, 0)}")
    return max_new
