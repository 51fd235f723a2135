"""`olmo2 rlvr`: GRPO with verifiable rewards, rollouts from olmo2's own KV-cache generation.

    from olmo2.post.rlvr import run_rlvr
    res = run_rlvr("runs/dpo/hf", ["prompts.jsonl"], "runs/rlvr", recipe="tiny_rlvr", eval_sources=["held.jsonl"])
    olmo2 rlvr --model DPO_MODEL --data prompts.jsonl --out RUN [--recipe olmo2_1b_rlvr|tiny_rlvr] [--eval-data F]

Data: JSONL, one prompt per line: {"messages": [turns up to the user's question], "ground_truth":
"72", "dataset": "gsm8k"} (allenai/RLVR-GSM-MATH-IF-Mixed-Constraints' layout) or
{"prompt": "text", ...} for one user turn; `dataset` picks the verifier
(olmo2/post/verifiers.py: gsm8k/arithmetic, ifeval; default gsm8k). Bad lines → `file:line: what`.

One rollout, then `rlvr.num_epochs × rlvr.num_mini_batches` optimizer steps of the loop
(olmo2/train/loop.py, with `GRPOObjective`) on it:
1. `RolloutData` takes the next num_mini_batches × global_batch_size / group_size prompts (a
   PCG64(seed + epoch) order, cycling), renders each with the chat template and its generation
   prompt, and samples group_size completions per prompt from the CURRENT policy
   (`olmo2.infer.generate`: one batched KV-cache generation, temperature `rlvr.temperature`,
   stop at EOS, at most `rlvr.max_new_tokens`; seeded by (train.seed, rollout, rank), so a
   resumed run samples the same).
2. Each completion's text is scored by its verifier (10 / 0); advantages per group.
3. The policy's log-probs of the sampled tokens at temperature 1 (π_old: the policy that
   sampled, before any update on this rollout) and the frozen reference's are computed once,
   without autograd.
4. PPO epochs (open-instruct's `num_epochs`/`num_mini_batches`): each epoch shuffles the
   rollout's completions (seeded) and cuts them into num_mini_batches minibatches of
   global_batch_size rows, one optimizer step each. The first step on a rollout sees ρ = 1;
   later ones see the policy already moved, so the ratio leaves 1 and the clip acts. With
   1 × 1 (the 1B recipe: one update per rollout) every step samples afresh and clip_frac is 0.
5. The objective: token-masked mean of PPO-clip(0.2) policy loss + β·k3 KL (olmo2/post/grpo.py).
Logged per step: reward (mean), kl, clip_frac, response_len, pg_loss; with --eval-data, the
held-out accuracy (greedy, share of prompts the verifier accepts) every train.eval_every steps.

Resume: the loop's step counts optimizer steps; a checkpoint is exact only at a rollout
boundary (the rollout itself is not saved), so run_rlvr requires train.save_every to be a
multiple of num_epochs × num_mini_batches. Resuming from a mid-rollout checkpoint anyway
(e.g. a final save at a max_steps that is not such a multiple, then a higher max_steps)
samples that rollout again from the restored policy: a valid run, not the uninterrupted one.

The reference model is a frozen copy (requires_grad=False, eval) of --model, made before the
loop restores a checkpoint, so after a resume it is still the starting model.
Under torchrun each rank samples its own prompts (global_batch_size / world_size rows, whole
groups); rollouts under FSDP2 are not tested here.
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from olmo2.errors import ConfigError, DataError
from olmo2.post.grpo import group_advantages, grpo_token_loss
from olmo2.post.logps import model_token_logps
from olmo2.post.verifiers import VERIFIERS, parse_ground_truth, reward
from olmo2.train.loss import IGNORE_INDEX
from olmo2.train.objective import Objective


@dataclass(frozen=True)
class RLVRConfig:
    """What GRPO adds to the loop's TrainConfig (`--set rlvr.FIELD=...`)."""

    SECTION = "rlvr"

    group_size: int = 16
    """Completions sampled per prompt (G); train.global_batch_size counts completions."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts."""
    max_new_tokens: int = 2048
    """Longest completion (the 1B runs' response_length)."""
    max_prompt_tokens: int = 2048
    """Prompts longer than this (rendered) are dropped and counted."""
    clip: float = 0.2
    """PPO clip range ε."""
    beta: float = 0.01
    """KL coefficient (k3 estimator) against the frozen starting model."""
    unbiased_std: bool = True
    """Bessel-corrected group std in the advantages (torch's default, the 1B's script)."""
    add_bos: bool = True
    """Start every prompt with <|endoftext|> (as the SFT/DPO stages trained)."""
    eval_max_new_tokens: int | None = None
    """Greedy completion length for the held-out accuracy (None: max_new_tokens)."""
    num_epochs: int = 1
    """PPO epochs: passes over each rollout (1: one update per rollout, as the 1B ran)."""
    num_mini_batches: int = 1
    """Optimizer steps per epoch; a rollout samples num_mini_batches × train.global_batch_size completions."""

    @property
    def updates_per_rollout(self) -> int:
        return self.num_epochs * self.num_mini_batches

    def __post_init__(self):
        p = []
        for name in ("group_size", "max_new_tokens", "max_prompt_tokens", "num_epochs", "num_mini_batches"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                p.append(f"{name} must be an integer >= 1 (got {v!r})")
        if not isinstance(self.temperature, (int, float)) or self.temperature <= 0:
            p.append(f"temperature must be > 0 (got {self.temperature!r})")
        if not isinstance(self.clip, (int, float)) or not 0 < self.clip < 1:
            p.append(f"clip must be in (0, 1) (got {self.clip!r})")
        if not isinstance(self.beta, (int, float)) or self.beta < 0:
            p.append(f"beta must be >= 0 (got {self.beta!r})")
        if p:
            raise ConfigError("invalid rlvr config: " + "; ".join(p))


@dataclass
class Prompt:
    where: str
    messages: list[dict]
    ground_truth: object
    dataset: str


def read_prompts(sources: list[str]) -> list[Prompt]:
    """Prompts with ground truths from JSONL (module docstring); all bad lines collected."""
    from olmo2.post.jsonl import read_jsonl
    return read_jsonl(sources, _prompt, "prompts",
                      hint="RLVR data is JSONL with messages/prompt and ground_truth")


def _prompt(obj, where: str) -> Prompt:
    if not isinstance(obj, dict) or "ground_truth" not in obj:
        raise DataError(f"{where}: expected an object with 'messages' (or 'prompt') and 'ground_truth'")
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs or any(
                not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant")
                or not isinstance(m.get("content"), str) for m in msgs):
            raise DataError(f"{where}: 'messages' must be a non-empty list of {{role, content}}")
        if msgs[-1]["role"] == "assistant":  # a trailing answer would be the label, not the prompt
            msgs = msgs[:-1]
        if not msgs:
            raise DataError(f"{where}: no prompt turns before the assistant's answer")
    elif isinstance(obj.get("prompt"), str):
        msgs = [{"role": "user", "content": obj["prompt"]}]
    else:
        raise DataError(f"{where}: expected 'messages' (a list) or 'prompt' (a string)")
    ds = str(obj.get("dataset", "gsm8k")).lower()
    if ds not in VERIFIERS:
        raise DataError(f"{where}: dataset {ds!r} has no verifier; use one of {', '.join(VERIFIERS)}")
    try:  # a ground truth the verifier cannot read is a data error now, not a crash mid-run
        if ds in ("gsm8k", "arithmetic"):
            parse_ground_truth(obj["ground_truth"])
        else:
            reward(ds, "", obj["ground_truth"])
    except DataError as e:
        raise DataError(f"{where}: {e}") from None
    return Prompt(where, msgs, obj["ground_truth"], ds)


def encode_prompts(tok, prompts: list[Prompt], cfg: RLVRConfig) -> tuple[list[list[int]], list[Prompt], int]:
    """(prompt ids, the prompts kept, how many were too long)."""
    ids, kept, long = [], [], 0
    for p in prompts:
        text = tok.apply_chat_template(p.messages, add_generation_prompt=True, add_bos=cfg.add_bos)
        x = tok.encode(text)
        if len(x) > cfg.max_prompt_tokens:
            long += 1
            continue
        ids.append(x)
        kept.append(p)
    if not kept:
        raise DataError(f"every prompt is longer than rlvr.max_prompt_tokens {cfg.max_prompt_tokens}")
    return ids, kept, long


def sample(model, prompt_ids: list[list[int]], cfg: RLVRConfig, eos: int, pad: int, seed: int | None,
           greedy: bool = False, max_new: int | None = None) -> list[list[int]]:
    """Completion ids per prompt (EOS included when produced), from one batched generation."""
    from olmo2.infer.generate import generate
    was = model.training
    model.eval()
    with torch.no_grad():
        out = generate(model, prompt_ids, max_new_tokens=max_new or cfg.max_new_tokens,
                       temperature=0 if greedy else cfg.temperature, seed=seed, eos_token_id=eos,
                       pad_token_id=pad)
    model.train(was)
    T = max(len(p) for p in prompt_ids)
    comps = []
    for row in out[:, T:].tolist():
        c = []
        for t in row:
            c.append(t)
            if t == eos:
                break
        while c and c[-1] == pad and pad != eos:  # rows that ended early are pad-filled
            c.pop()
        comps.append(c)
    return comps


def completion_text(tok, comp: list[int], eos: int) -> str:
    return tok.decode([t for t in comp if t != eos])


def rollout_rows(prompt_ids, comps, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded prompt+completion rows and labels (completion tokens only)."""
    T = max(len(p) + len(c) for p, c in zip(prompt_ids, comps))
    ids = torch.full((len(comps), T), pad, dtype=torch.long)
    lab = torch.full((len(comps), T), IGNORE_INDEX, dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompt_ids, comps)):
        ids[i, :len(p) + len(c)] = torch.tensor(p + c)
        if c:
            lab[i, len(p):len(p) + len(c)] = torch.tensor(c)
    return ids, lab


KEYS = ("input_ids", "labels", "advantages", "old_logps", "ref_logps", "reward", "response_len")


class GRPOObjective(Objective):
    """The loop's objective for GRPO (see the module docstring); normaliser = response tokens."""

    name = "grpo"

    def __init__(self, clip: float = 0.2, beta: float = 0.01, row_tokens: int = 4096):
        self.clip, self.beta = float(clip), float(beta)
        # Rollout batches are padded to their longest completion, so T varies; the schedule
        # (constant in the recipe) counts a fixed nominal row length per step instead.
        self._row_tokens = int(row_tokens)

    def normaliser(self, batch: dict) -> torch.Tensor:
        return (batch["labels"][:, 1:] != -100).sum().to(torch.float64)

    def row_tokens(self, batch: dict) -> int:
        return self._row_tokens

    def check_batch(self, batch: dict, local_rows: int) -> None:
        missing = [k for k in KEYS if k not in batch]
        if missing:
            raise DataError(f"the GRPO objective needs batch keys {', '.join(missing)} (got {sorted(batch)})")
        super().check_batch(batch, local_rows)

    def micro_batch(self, model: nn.Module, mb: dict, cfg, autocast):
        logp, mask = model_token_logps(model, mb["input_ids"], mb["labels"], cfg.loss_chunk_tokens, autocast)
        total, parts = grpo_token_loss(logp, mb["old_logps"], mb["ref_logps"], mb["advantages"], mask,
                                       self.clip, self.beta)
        rows = torch.tensor(float(mb["input_ids"].shape[0]), dtype=torch.float64, device=total.device)
        metrics = {"loss": total.detach().double(), "pg_loss": parts["pg_loss"].double(),
                   "kl": parts["kl"].double(), "clip_frac": parts["clip_frac"].double(),
                   # per completion, not per token
                   "reward": (mb["reward"].double().sum(), rows),
                   "response_len": (mb["response_len"].double().sum(), rows)}
        return total, metrics


class RolloutData:
    """The loop's data protocol for GRPO: each rollout of the bound policy feeds
    num_epochs × num_mini_batches batches (module docstring, steps 1-4)."""

    def __init__(self, tok, prompt_ids, prompts, cfg: RLVRConfig, global_batch_size: int, seed: int,
                 ref_model, chunk_tokens: int | None, rank: int = 0, world: int = 1):
        rows = global_batch_size // world
        if global_batch_size % world or rows % cfg.group_size:
            raise ConfigError(f"train.global_batch_size {global_batch_size} must split into whole groups of "
                              f"rlvr.group_size {cfg.group_size} on each of {world} processes")
        self.tok, self.ids, self.prompts, self.cfg = tok, prompt_ids, prompts, cfg
        self.rows = rows                                  # completions per rank per optimizer step
        self.per_rank = rows // cfg.group_size * cfg.num_mini_batches   # prompts per rank per rollout
        self.per_step = self.per_rank * world             # prompts per rollout, all ranks
        self.seed, self.ref, self.chunk, self.rank, self.world = seed, ref_model, chunk_tokens, rank, world
        self.eos, self.pad = tok.eos_id, tok.pad_id if tok.pad_id is not None else tok.eos_id
        self.step = 0                                     # batches handed out (= optimizer steps)
        self.policy = None
        self._cache: tuple[int, dict] | None = None       # (rollout index, its full batch)

    def bind(self, model) -> None:
        """Called by the loop once the policy is built and restored."""
        self.policy = model

    def _prompt_indices(self, rollout: int) -> list[int]:
        n = len(self.ids)
        start = rollout * self.per_step
        out = []
        for k in range(start, start + self.per_step):
            epoch, pos = divmod(k, n)
            order = np.random.Generator(np.random.PCG64(self.seed + epoch)).permutation(n)
            out.append(int(order[pos]))
        return out[self.rank::self.world]

    def rollout(self, rollout: int) -> dict:
        """Sample, score and prepare the whole batch of rollout `rollout` (module docstring)."""
        from olmo2.train import parallel
        if self.policy is None:
            raise RuntimeError("RolloutData.bind(model) was not called")
        G = self.cfg.group_size
        idx = self._prompt_indices(rollout)
        pids = [self.ids[i] for i in idx for _ in range(G)]
        comps = sample(parallel.unwrap(self.policy), pids, self.cfg, self.eos, self.pad,
                       seed=(self.seed * 1_000_003 + rollout) * 64 + self.rank)
        rewards = torch.tensor([reward(self.prompts[i].dataset, completion_text(self.tok, c, self.eos),
                                       self.prompts[i].ground_truth)
                                for i, c in zip([i for i in idx for _ in range(G)], comps)], dtype=torch.float64)
        ids, labels = rollout_rows(pids, comps, self.pad)
        with torch.no_grad():
            old, _ = model_token_logps(parallel.unwrap(self.policy), ids, labels, self.chunk)
            ref, _ = model_token_logps(self.ref, ids, labels, self.chunk)
        return {"input_ids": ids, "labels": labels, "old_logps": old, "ref_logps": ref,
                "advantages": group_advantages(rewards, G, unbiased=self.cfg.unbiased_std),
                "reward": rewards, "response_len": torch.tensor([float(len(c)) for c in comps])}

    def minibatch_rows(self, rollout: int, k: int) -> torch.Tensor:
        """Row indices of the k-th optimizer step on rollout `rollout`: epoch k // M shuffles
        the rollout's rows (seeded by seed, rollout, epoch, rank) and takes slice k % M."""
        M, n = self.cfg.num_mini_batches, self.rows * self.cfg.num_mini_batches
        epoch, j = divmod(k, M)
        if M == 1 and self.cfg.num_epochs == 1:
            return torch.arange(n)                        # one update per rollout: rows in order
        g = np.random.Generator(np.random.PCG64([self.seed, rollout, epoch, self.rank]))
        perm = torch.from_numpy(g.permutation(n))
        return perm[j * self.rows:(j + 1) * self.rows]

    def __iter__(self):
        U = self.cfg.updates_per_rollout
        while True:
            r, k = divmod(self.step, U)
            if self._cache is None or self._cache[0] != r:
                self._cache = (r, self.rollout(r))
            full = self._cache[1]
            rows = self.minibatch_rows(r, k)
            self.step += 1
            if k == U - 1:
                self._cache = None                        # the next step samples a new rollout
            b = {key: v[rows] for key, v in full.items()}
            # the rollout is padded to its longest row; a minibatch only to its own
            used = (b["labels"] != IGNORE_INDEX).any(0).nonzero()
            width = int(used.max()) + 1 if used.numel() else b["labels"].shape[1]
            yield {key: v[:, :width] if v.dim() == 2 else v for key, v in b.items()}

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, sd: dict) -> None:
        self.step = int(sd["step"])
        self._cache = None


def heldout_accuracy(model, tok, prompt_ids, prompts, cfg: RLVRConfig, batch: int = 16) -> dict:
    """Greedy completions of held-out prompts: the share the verifier accepts, and mean reward."""
    from olmo2.train import parallel
    m = parallel.unwrap(model)
    eos, pad = tok.eos_id, tok.pad_id if tok.pad_id is not None else tok.eos_id
    rs = []
    for s in range(0, len(prompt_ids), batch):
        comps = sample(m, prompt_ids[s:s + batch], cfg, eos, pad, seed=None, greedy=True,
                       max_new=cfg.eval_max_new_tokens)
        rs += [reward(p.dataset, completion_text(tok, c, eos), p.ground_truth)
               for p, c in zip(prompts[s:s + batch], comps)]
    return {"accuracy": float(np.mean([r > 0 for r in rs])), "reward": float(np.mean(rs))}


@dataclass
class RLVRResult:
    out_dir: Path
    hf_dir: Path | None
    step: int
    metrics_path: Path


def run_rlvr(model_dir: str, sources: list[str], out: str | os.PathLike, recipe="tiny_rlvr",
             overrides: list[str] | tuple = (), eval_sources: list[str] | None = None,
             tokenizer: str | None = None, restart: bool = False, export: bool = True) -> RLVRResult:
    """GRPO-train `model_dir` on the prompts in `sources` into `out` (module docstring)."""
    from olmo2.checkpoint import load_model
    from olmo2.fsio import atomic_file
    from olmo2.post.recipe import PostRecipe, apply_post_overrides, get_post_recipe, train_and_export
    from olmo2.tokenizer import Tokenizer
    from olmo2.train import parallel

    r = recipe if isinstance(recipe, PostRecipe) else get_post_recipe(recipe, RLVRConfig)
    r = apply_post_overrides(r, overrides)
    cfg: RLVRConfig = r.stage
    out = Path(out)
    tok = Tokenizer.from_pretrained(tokenizer or model_dir)
    prompt_ids, prompts, long = encode_prompts(tok, read_prompts(sources), cfg)
    held = encode_prompts(tok, read_prompts(eval_sources), cfg) if eval_sources else None
    model = load_model(model_dir, dtype=torch.float32)
    mcfg = model.config
    tok.check_fits(mcfg.vocab_size, f"{model_dir} (vocab_size)")
    U = cfg.updates_per_rollout
    if U > 1 and r.train.save_every and r.train.save_every % U:
        raise ConfigError(f"train.save_every {r.train.save_every} must be a multiple of rlvr.num_epochs × "
                          f"rlvr.num_mini_batches = {U} (a checkpoint inside a rollout cannot resume exactly)")
    row_tokens = cfg.max_prompt_tokens + cfg.max_new_tokens
    if row_tokens > mcfg.max_seq_len:
        raise ConfigError(f"rlvr.max_prompt_tokens + rlvr.max_new_tokens = {row_tokens} exceeds the model's "
                          f"max_seq_len {mcfg.max_seq_len}; lower them with --set rlvr.FIELD=N")
    parallel.init_distributed()
    try:
        ref = copy.deepcopy(model).eval()  # the frozen reference: the starting weights
        for p in ref.parameters():
            p.requires_grad_(False)
        with torch.no_grad():  # the policy gets its own copy of the memory-mapped weights
            for p in model.parameters():
                p.data = p.data.clone()
        data = RolloutData(tok, prompt_ids, prompts, cfg, r.train.global_batch_size, r.train.seed, ref,
                           r.train.loss_chunk_tokens, rank=parallel.rank(), world=parallel.world_size())
        parallel.print0(f"rlvr data: {len(prompts)} prompts ({long} longer than {cfg.max_prompt_tokens} tokens "
                        f"dropped); {data.per_step} prompts × {cfg.group_size} completions per rollout, "
                        f"{cfg.num_epochs} epoch(s) × {cfg.num_mini_batches} minibatch(es) of "
                        f"{r.train.global_batch_size} completions = {U} optimizer step(s) per rollout")
        train_cfg = r.train.replace(seq_len=row_tokens)
        if parallel.rank() == 0:
            out.mkdir(parents=True, exist_ok=True)
            resolved = dict(r.replace(train=train_cfg).to_dict(), base=str(model_dir),
                            data=[str(s) for s in sources], eval_data=[str(s) for s in eval_sources or []],
                            prompts=len(prompts), dropped_long=long, overrides=list(overrides))
            with atomic_file(out / "recipe.json") as f:
                json.dump(resolved, f, indent=2)
        hook = None
        if held is not None:
            def hook(m, state):
                return heldout_accuracy(m, tok, held[0], held[1], cfg)
        objective = GRPOObjective(cfg.clip, cfg.beta, row_tokens=row_tokens)
        res, hf = train_and_export(mcfg, train_cfg, data, out, model, objective, tok, export, restart,
                                   eval_hook=hook)
        parallel.print0(f"done: step {res.step}; model in {hf}")
        return RLVRResult(out, hf, res.step, res.metrics_path)
    finally:
        parallel.cleanup_distributed()


__all__ = ["RLVRConfig", "RLVRResult", "run_rlvr", "read_prompts", "RolloutData", "heldout_accuracy"]
