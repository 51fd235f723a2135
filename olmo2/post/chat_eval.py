"""What each post-training stage is supposed to move, measured on held-out data with intervals.

    from olmo2.post.chat_eval import chat_arithmetic, preference_logps, sampled_reward, paired_diff
    r = chat_arithmetic(model, tok, problems)            # greedy replies in the chat template
    r.accuracy, r.adherence                              # hits / n, clean stops / n (Wilson intervals)
    lp = preference_logps(model, tok, pairs)             # per pair: avg log-prob of chosen, rejected
    rw = sampled_reward(model, tok, problems, samples=4, seed=0)   # RLVR reward, T = 1
    est, lo, hi = paired_diff(after.hits, before.hits)   # same items, bootstrap interval

The measures (one per stage, plus the ones a stage must not break):
- **SFT**: held-out arithmetic in the chat format. The prompt is the OLMo 2 template with
  the leading `<|endoftext|>` (as the 1B SFT trained, `--add_bos`) and the generation
  prompt `<|assistant|>\\n`; greedy, up to `max_new_tokens`. A reply is *correct* when the
  RLVR verifier (`olmo2.post.verifiers.gsm8k_correct`: last number, by value) accepts the
  text before EOS, and *adheres* to the chat format when the model emitted EOS within the
  budget, the reply holds no turn tag (`<|user|>`, `<|assistant|>`, `<|system|>`) and it
  states its answer ("... answer is N", `olmo2.data.arithmetic.parses`): a base model
  runs past the budget, invents the next turn, or stops without answering (the demo's
  quick base ends every reply with EOS, after '3. 3. 3.', so EOS alone would not tell).
- **DPO**: held-out preference pairs (test-split problems, `heldout_dpo.jsonl`). Per pair the
  average per-token log-prob of the chosen and the rejected reply (reply tokens + the closing
  EOS, on the tokens DPO trains on: `preference_logps`); *preference accuracy* is the share with
  chosen > rejected, and the DPO model's implicit reward margin is β·[(c − c_ref) − (r − r_ref)]
  with the SFT model as reference (`dpo_norm`'s averaged log-probs).
- **Constraints** (`constraint_following`): greedy chat replies to held-out IFEval-style
  prompts (`heldout_ifeval.jsonl`), followed when `olmo2.post.verifiers.ifeval_reward`
  accepts the text before EOS (every constraint of the prompt: IFEval's strict prompt-level
  accuracy). A reply that never ends is scored as it stands at the budget.
- **RLVR**: the mean verifiable reward (10 per verified reply, else 0) of `samples` replies per
  held-out prompt sampled at temperature 1 (the recipe's rollout temperature), seeded; a
  prompt is an arithmetic problem ({question, answer}: last number) or a constrained one
  ({question, dataset "ifeval", ground_truth}: the constraint alone), as RLVR rewards them.

Intervals: Wilson for a single rate; for a before/after difference on the same items the
paired percentile bootstrap over items (`paired_diff`), so item difficulty cancels.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from olmo2.eval.intervals import ratio_ci, wilson

TURN_TAGS = ("<|user|>", "<|assistant|>", "<|system|>")


def chat_prompt(question: str) -> list[dict]:
    return [{"role": "user", "content": question}]


@dataclass
class ChatArith:
    """Greedy chat replies to n held-out problems: per-item outcomes and the rates."""
    replies: list[str]
    hits: list[int]
    clean: list[int]
    """1 when the reply ended with EOS within the budget, holds no turn tag and states an answer."""
    eos: list[int] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.hits)

    @property
    def accuracy(self) -> float:
        return sum(self.hits) / self.n

    @property
    def adherence(self) -> float:
        return sum(self.clean) / self.n

    def summary(self) -> dict:
        return {"n": self.n, "accuracy": self.accuracy, "accuracy_ci": list(wilson(sum(self.hits), self.n)),
                "adherence": self.adherence, "adherence_ci": list(wilson(sum(self.clean), self.n)),
                "eos_rate": sum(self.eos) / self.n, "example": self.replies[0] if self.replies else ""}


@torch.inference_mode()
def _replies(model, tok, questions: list[str], max_new_tokens: int, temperature: float, seed: int | None,
             batch_size: int) -> list[tuple[str, bool]]:
    """(text before EOS, whether EOS came) per question, batched, chat template with BOS."""
    from olmo2.infer.generate import generate
    was = model.training
    model.eval()
    out: list[tuple[str, bool]] = []
    for i in range(0, len(questions), batch_size):
        prompts = [tok.encode(tok.apply_chat_template(chat_prompt(q), add_generation_prompt=True, add_bos=True))
                   for q in questions[i:i + batch_size]]
        ids = generate(model, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                       seed=None if seed is None else seed + i, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
        width = max(len(p) for p in prompts)   # left-padded: every prompt ends at `width`
        for row in ids[:, width:].tolist():
            ended = tok.eos_id in row
            gen = row[:row.index(tok.eos_id)] if ended else row
            out.append((tok.decode([t for t in gen if t != tok.pad_id]), ended))
    model.train(was)
    return out


def chat_arithmetic(model, tok, problems: list[dict], max_new_tokens: int = 48, batch_size: int = 64) -> ChatArith:
    """Greedy chat replies to `problems` ({question, answer}) scored for answer and format."""
    from olmo2.data.arithmetic import parses
    from olmo2.post.verifiers import gsm8k_correct
    res = _replies(model, tok, [p["question"] for p in problems], max_new_tokens, 0.0, None, batch_size)
    hits = [int(gsm8k_correct(t, p["answer"])) for (t, _), p in zip(res, problems)]
    clean = [int(e and parses(t) and not any(tag in t for tag in TURN_TAGS)) for t, e in res]
    return ChatArith([t for t, _ in res], hits, clean, [int(e) for _, e in res])


def item_reward(item: dict, text: str) -> float:
    """RLVR's reward of a reply to a held-out item: its `dataset`'s verifier on `ground_truth`,
    or for a plain arithmetic problem the last number against `answer`."""
    from olmo2.post.verifiers import reward
    if "dataset" in item:
        return reward(item["dataset"], text, item["ground_truth"])
    return reward("arithmetic", text, item["answer"])


def sampled_reward(model, tok, problems: list[dict], samples: int = 4, seed: int = 0, max_new_tokens: int = 48,
                   batch_size: int = 64) -> list[float]:
    """Per problem, the mean verifiable reward (`item_reward`) of `samples` replies sampled at T = 1."""
    qs = [p["question"] for p in problems for _ in range(samples)]
    res = _replies(model, tok, qs, max_new_tokens, 1.0, seed, batch_size)
    per = [item_reward(p, t) for (t, _), p in zip(res, (p for p in problems for _ in range(samples)))]
    return [sum(per[i * samples:(i + 1) * samples]) / samples for i in range(len(problems))]


def constraint_following(model, tok, items: list[dict], max_new_tokens: int = 48,
                         batch_size: int = 64) -> tuple[list[int], list[str]]:
    """(1 per greedy reply that satisfies every constraint of its item, the replies)."""
    from olmo2.post.verifiers import ifeval_reward
    res = _replies(model, tok, [it["question"] for it in items], max_new_tokens, 0.0, None, batch_size)
    return [int(ifeval_reward(t, it["ground_truth"]) > 0) for (t, _), it in zip(res, items)], [t for t, _ in res]


@torch.inference_mode()
def preference_logps(model, tok, pairs: list[dict], batch_size: int = 32,
                     seq_len: int | None = None) -> list[tuple[float, float]]:
    """(avg log-prob of the chosen reply, of the rejected reply) per pair, on exactly the
    tokens and with exactly the reduction DPO trains on (`dpo_norm`): each side rendered
    whole with the chat template (leading <|endoftext|>), labelled as SFT/DPO label it
    (assistant tokens + their closing EOS), per-token mean (olmo2.post.dpo.pair_logps).

    Why not `olmo2 eval`'s log-likelihood requests: their context/continuation split moves
    the context's trailing whitespace into the continuation (the lm-eval rule), and the
    template's context ends in `<|assistant|>\n`, which the dolma2-style BPE writes as one
    token `>\n`: the split context ends in `>` and the `\n` vanishes from the scored text,
    so every reply was scored after a prompt the model never trained on (measured on the
    demo SFT model: -0.65 instead of -0.45 nats per token), and not on DPO's signal."""
    from olmo2.post.dpo import pair_logps
    from olmo2.post.dpo_run import encode_pairs, pair_batch
    seq_len = seq_len or model.config.max_seq_len
    for p in pairs:
        if p["chosen"][:-1] != p["rejected"][:-1]:
            raise ValueError(f"pair {p.get('id')}: chosen and rejected have different prompts")
    enc = encode_pairs(tok, [(str(p.get("id")), p["chosen"], p["rejected"]) for p in pairs], seq_len, add_bos=True)
    if len(enc.chosen) != len(pairs) or enc.truncated:
        raise ValueError(f"{len(pairs) - len(enc.chosen)} pairs lost their reply and {enc.truncated} sides were "
                         f"truncated at {seq_len} tokens: preference accuracy needs whole pairs")
    was = model.training
    model.eval()
    pad = tok.pad_id if tok.pad_id is not None else tok.eos_id
    out: list[tuple[float, float]] = []
    for s in range(0, len(pairs), batch_size):
        c, r = pair_logps(model, pair_batch(enc, list(range(s, min(len(pairs), s + batch_size))), pad), True, None)
        out += list(zip(c.double().tolist(), r.double().tolist()))
    model.train(was)
    return out


def preference_accuracy(lp: list[tuple[float, float]]) -> list[int]:
    """1 per pair whose chosen reply has the higher average log-prob."""
    return [int(c > r) for c, r in lp]


def reward_margins(policy: list[tuple[float, float]], ref: list[tuple[float, float]], beta: float) -> list[float]:
    """DPO's implicit reward margin per pair: β·[(c − c_ref) − (r − r_ref)]."""
    return [beta * ((c - cr) - (r - rr)) for (c, r), (cr, rr) in zip(policy, ref)]


def mean_ci(xs: list[float], n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of `xs` with its percentile bootstrap interval over items."""
    return ratio_ci(xs, [1.0] * len(xs), n_boot=n_boot, seed=seed)


def paired_diff(after: list[float], before: list[float], n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """mean(after − before) over the same items, with the paired bootstrap interval."""
    if len(after) != len(before) or not after:
        raise ValueError("paired_diff: need two equal-length non-empty lists over the same items")
    return mean_ci([a - b for a, b in zip(after, before)], n_boot, seed)
