"""Chat data for SFT: `messages` JSONL → tokens with assistant-only labels → packed rows.

    examples = read_messages(["tulu.jsonl"])                     # [(where, messages)], bad lines → DataError
    enc = encode_example(tok, messages, add_bos=True)            # ids, labels (-100 outside assistant turns)
    rows, stats = pack(encoded, seq_len=4096, pad_id=tok.pad_id, seed=1)
    data = PackedSFTData(rows, global_batch_size=128, epochs=2)  # the loop's data protocol

Input: one JSON object per line with `messages: [{"role", "content"}, ...]` (the HF chat
format of allenai/tulu-3-sft-olmo-2-mixture-0225; other keys such as `id`/`source` are
ignored). Roles are system/user/assistant; at least one assistant turn. An argument that
is not a local file is taken as an HF dataset id (online only, needs `datasets`).
Every bad line is reported as `file:line: what` (the first one in the error, with the count).

Labels: the tokens of each assistant turn's content and its closing `<|endoftext|>` (the
tokens a chat model must produce); everything else — system/user turns, the
`<|assistant|>\\n` prompt, the `\\n` between turns, the optional leading BOS — is -100. Spans
are found as open-instruct does, by rendering prefixes: an assistant turn i spans from
len(render(messages[:i], generation prompt)) to len(render(messages[:i+1])), in characters
of the full rendering; a token is a label when its first character lies in a span
(tokenizer offsets), so the ids are exactly the full string's tokenization, as at inference.

Packing (why not padding): SFT examples are short next to 4096 tokens (tulu's median is a
few hundred), so padding would spend most of each step's compute on pad tokens. Rows are
filled next-fit in a seeded shuffled order; each example keeps its own `position_ids`
(from 0) and `doc_ids`, and the loop's LM objective turns doc_ids into a block-diagonal
causal mask (olmo2/train/objective.py `document_mask`), so a packed example computes
exactly what it computes alone (tests/test_objective.py). The first token of every example
in a row is forced to -100 so the previous example's last position predicts nothing.
`packing=False` puts one example per row (padded), for comparison.

Truncation: an example longer than seq_len is cut to seq_len tokens (as open-instruct's
max_seq_length does) and counted; one left with no label is dropped and counted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from olmo2.errors import DataError
from olmo2.train.loss import IGNORE_INDEX

ROLES = ("system", "user", "assistant")


# ---- reading ---------------------------------------------------------------------------
def _check_messages(obj, where: str) -> list[dict]:
    """The messages of one record, or DataError naming `where`."""
    if not isinstance(obj, dict) or "messages" not in obj:
        raise DataError(f"{where}: expected an object with a 'messages' list")
    msgs = obj["messages"]
    if not isinstance(msgs, list) or not msgs:
        raise DataError(f"{where}: 'messages' must be a non-empty list of {{role, content}}")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: messages[{i}] must be an object with string 'role' and 'content'")
        if m["role"] not in ROLES:
            raise DataError(f"{where}: messages[{i}].role {m['role']!r} is not one of {', '.join(ROLES)}")
    if not any(m["role"] == "assistant" for m in msgs):
        raise DataError(f"{where}: no assistant turn (nothing to train on)")
    return [{"role": m["role"], "content": m["content"]} for m in msgs]


def read_messages(sources: list[str]) -> list[tuple[str, list[dict]]]:
    """[(`file:line`, messages)] from JSONL files (or HF dataset ids); all bad lines are
    collected and the first is raised as DataError with the number of others."""
    from olmo2.post.jsonl import read_jsonl
    return read_jsonl(sources, lambda obj, where: (where, _check_messages(obj, where)), "examples",
                      missing=_read_hub)


def _read_hub(name: str) -> list[tuple[str, list[dict]]]:
    """An HF dataset id (its train split), e.g. allenai/tulu-3-sft-olmo-2-mixture-0225."""
    if "/" not in name or name.endswith((".jsonl", ".json")):
        raise DataError(f"{name}: no such file")
    try:
        import datasets
    except ImportError:
        raise DataError(f"{name}: not a local file, and reading HF datasets needs `pip install datasets` "
                        f"(and the internet)") from None
    try:
        ds = datasets.load_dataset(name, split="train")
    except Exception as e:  # offline, unknown id, gated, ...
        raise DataError(f"{name}: could not load this HF dataset ({str(e).splitlines()[0][:120]})") from None
    return [(f"{name}[{i}]", _check_messages(row, f"{name}[{i}]")) for i, row in enumerate(ds)]


# ---- encoding --------------------------------------------------------------------------
@dataclass
class Encoded:
    ids: list[int]
    labels: list[int]
    truncated: bool = False


def assistant_spans(tok, messages: list[dict], add_bos: bool) -> tuple[str, list[tuple[int, int]]]:
    """(full rendering, [(start, end) character spans of assistant content + EOS])."""
    full = tok.apply_chat_template(messages, add_generation_prompt=False, add_bos=add_bos)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        head = tok.apply_chat_template(messages[:i], add_generation_prompt=True, add_bos=add_bos)
        upto = tok.apply_chat_template(messages[: i + 1], add_generation_prompt=False, add_bos=add_bos)
        if not (full.startswith(head) and full.startswith(upto) and len(upto) >= len(head)):
            raise DataError(f"{tok.template_source}: the chat template does not render conversations "
                            f"prefix by prefix; assistant tokens cannot be located for SFT")
        spans.append((len(head), len(upto)))
    return full, spans


def encode_example(tok, messages: list[dict], add_bos: bool) -> Encoded:
    """Token ids of the rendered conversation and labels that keep only assistant tokens."""
    full, spans = assistant_spans(tok, messages, add_bos)
    enc = tok.tk.encode(full, add_special_tokens=False)
    ids = list(enc.ids)
    labels = [IGNORE_INDEX] * len(ids)
    j = 0
    for t, (start, _end) in enumerate(enc.offsets):
        while j < len(spans) and start >= spans[j][1]:
            j += 1
        if j < len(spans) and spans[j][0] <= start < spans[j][1]:
            labels[t] = ids[t]
    return Encoded(ids, labels)


# ---- packing ---------------------------------------------------------------------------
@dataclass
class PackStats:
    examples: int = 0
    truncated: int = 0
    dropped_no_labels: int = 0
    rows: int = 0
    tokens: int = 0          # real (non-pad) tokens in the rows
    label_tokens: int = 0

    def line(self, seq_len: int) -> str:
        fill = self.tokens / max(self.rows * seq_len, 1)
        return (f"{self.examples:,} examples → {self.rows:,} rows of {seq_len} ({fill:.1%} filled), "
                f"{self.label_tokens:,} assistant tokens; truncated {self.truncated:,}, "
                f"dropped (no assistant token left) {self.dropped_no_labels:,}")

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Rows:
    """Packed rows as int64 arrays [n_rows, seq_len]."""
    input_ids: np.ndarray
    labels: np.ndarray
    position_ids: np.ndarray
    doc_ids: np.ndarray


def pack(encoded: list[Encoded], seq_len: int, pad_id: int, seed: int, packing: bool = True) -> tuple[Rows, PackStats]:
    """Truncate, shuffle (seeded) and pack examples next-fit into rows of seq_len tokens."""
    st = PackStats(examples=len(encoded))
    kept = []
    for e in encoded:
        ids, labels = e.ids, e.labels
        if len(ids) > seq_len:
            ids, labels = ids[:seq_len], labels[:seq_len]
            st.truncated += 1
        if all(x == IGNORE_INDEX for x in labels[1:]):  # labels[0] never counts (shifted loss)
            st.dropped_no_labels += 1
            continue
        kept.append((ids, labels))
    if not kept:
        raise DataError("no example has an assistant token within train.seq_len; raise seq_len or check the data")
    order = np.random.default_rng(seed).permutation(len(kept))
    rows: list[list[tuple[list[int], list[int]]]] = []
    used = seq_len + 1
    for i in order:
        ids, labels = kept[i]
        if not packing or used + len(ids) > seq_len:
            rows.append([])
            used = 0
        rows[-1].append((ids, labels))
        used += len(ids)
    n = len(rows)
    out = Rows(np.full((n, seq_len), pad_id, np.int64), np.full((n, seq_len), IGNORE_INDEX, np.int64),
               np.zeros((n, seq_len), np.int64), np.full((n, seq_len), -1, np.int64))
    for r, docs in enumerate(rows):
        at = 0
        for d, (ids, labels) in enumerate(docs):
            k = len(ids)
            out.input_ids[r, at:at + k] = ids
            lab = np.asarray(labels, np.int64)
            lab[0] = IGNORE_INDEX  # the previous example's last token predicts nothing
            out.labels[r, at:at + k] = lab
            out.position_ids[r, at:at + k] = np.arange(k)
            out.doc_ids[r, at:at + k] = d
            at += k
        # padding: positions continue from 0 (any valid index), one "document" of its own
        out.position_ids[r, at:] = np.arange(seq_len - at)
        st.tokens += at
    st.rows = n
    st.label_tokens = int((out.labels[:, 1:] != IGNORE_INDEX).sum())
    return out, st


class PackedSFTData:
    """The loop's data protocol over packed rows: `epochs` passes, each in a PCG64(seed+epoch)
    order, global batches sliced rank::world; the last batch of an epoch is completed with
    empty rows (all labels -100: they add nothing to the loss or its normaliser)."""

    def __init__(self, rows: Rows, global_batch_size: int, epochs: int, seed: int = 0, rank: int = 0,
                 world: int = 1, pad_id: int = 0):
        self.rows, self.gb, self.epochs, self.seed = rows, global_batch_size, epochs, seed
        self.rank, self.world, self.pad_id = rank, world, pad_id
        self.epoch = self.step = 0

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.rows.input_ids) / self.gb)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def _batch(self, idx: np.ndarray) -> dict:
        T = self.rows.input_ids.shape[1]
        n_empty = self.gb - len(idx)
        out = {}
        for k, fill in (("input_ids", self.pad_id), ("labels", IGNORE_INDEX), ("position_ids", 0), ("doc_ids", -1)):
            a = getattr(self.rows, k)[idx]
            if n_empty:
                pad = np.full((n_empty, T), fill, np.int64)
                if k == "position_ids":
                    pad[:] = np.arange(T)
                a = np.concatenate([a, pad])
            out[k] = torch.from_numpy(np.ascontiguousarray(a[self.rank::self.world]))
        return out

    def __iter__(self):
        n = len(self.rows.input_ids)
        while self.epoch < self.epochs:
            order = np.random.Generator(np.random.PCG64(self.seed + self.epoch)).permutation(n)
            while self.step < self.steps_per_epoch:
                idx = order[self.step * self.gb:(self.step + 1) * self.gb]
                self.step += 1
                yield self._batch(idx)
            self.epoch, self.step = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step}

    def load_state_dict(self, sd: dict) -> None:
        self.epoch, self.step = int(sd["epoch"]), int(sd["step"])
