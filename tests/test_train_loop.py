"""The training loop on a tiny model: learning, grad accumulation, NaN skipping, z-loss,
metrics/plot output, and export of a training checkpoint to an HF directory."""
import copy
import json

import numpy as np
import pytest
import torch

from olmo2.checkpoint import load_model
from olmo2.config import preset
from olmo2.errors import Olmo2Error
from olmo2.model import Olmo2
from olmo2.train.config import TrainConfig
from olmo2.train.loop import Callback, lm_loss_sums, train
from olmo2.train.state import export_hf, list_checkpoints, load_model_from_checkpoint

VOCAB, T = 64, 32
MODEL_CFG = preset("tiny").replace(vocab_size=VOCAB, max_seq_len=64)


class ArraySource:
    """In-memory batch source with the loop's data protocol (see olmo2/train/loop.py):
    per-epoch PCG64(seed+epoch) order over rows, global batch sliced rank::world, unshifted labels."""

    def __init__(self, rows: np.ndarray, global_batch: int, rank: int = 0, world: int = 1, seed: int = 0):
        self.rows, self.gb, self.rank, self.world, self.seed = rows, global_batch, rank, world, seed
        self.epoch = self.step = 0

    def __iter__(self):
        while True:
            order = np.random.Generator(np.random.PCG64(self.seed + self.epoch)).permutation(len(self.rows))
            while (self.step + 1) * self.gb <= len(order):
                idx = order[self.step * self.gb:(self.step + 1) * self.gb][self.rank::self.world]
                self.step += 1
                x = torch.from_numpy(self.rows[idx]).long()
                yield {"input_ids": x, "labels": x.clone()}
            self.epoch, self.step = self.epoch + 1, 0

    def state_dict(self):
        return {"epoch": self.epoch, "step": self.step}

    def load_state_dict(self, sd):
        self.epoch, self.step = sd["epoch"], sd["step"]


def corpus(n_rows=16, seed=0):
    return np.random.default_rng(seed).integers(0, VOCAB, (n_rows, T))


def cfg(**kw):
    base = dict(lr=3e-3, schedule="constant", warmup_tokens=0, global_batch_size=4, micro_batch_size=2,
                seq_len=T, max_steps=5, max_tokens=None, save_every=None, save_final=False, parallel="none",
                progress=False, seed=1)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_loss_goes_down_and_outputs_are_written(tmp_path):
    rows = corpus(4)  # a tiny corpus seen over and over
    res = train(MODEL_CFG, cfg(max_steps=30, save_every=15, keep_last=1, save_final=True),
                ArraySource(rows, 4), tmp_path)
    assert res.step == 30 and res.tokens == 30 * 4 * T
    assert np.mean(res.losses[-5:]) < res.losses[0] - 1.0, res.losses
    lines = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 31))
    for key in ("loss", "z_loss", "grad_norm", "lr", "tokens_per_s", "mfu", "mem_gb", "skipped", "tokens"):
        assert key in lines[0], key
    assert lines[0]["mfu"] is None  # n/a on CPU without a configured peak
    assert (tmp_path / "loss.png").stat().st_size > 1000
    assert [s for s, _ in list_checkpoints(tmp_path)] == [30]  # keep_last=1 pruned step 15


@pytest.mark.parametrize("dtype,lr,tol", [(torch.float32, 3e-4, 1e-6), (torch.float64, 3e-3, 1e-10)])
def test_grad_accumulation_4x1_equals_1x4(tmp_path, dtype, lr, tol):
    # fp32: Adam's first steps are ~lr·sign(g), so a weight whose gradient is ~0 can move by
    # ~lr on one side of a rounding error and not the other; a small lr keeps that < 1e-6.
    # fp64 makes rounding negligible and checks the accumulation math sharply.
    rows = corpus(16)
    runs = []
    for micro in (1, 4):
        model = Olmo2(MODEL_CFG)
        model.reset_parameters(torch.Generator().manual_seed(1))
        runs.append(train(MODEL_CFG, cfg(micro_batch_size=micro, lr=lr), ArraySource(rows, 4),
                          tmp_path / str(micro), model=model.to(dtype)))
    a, b = runs
    np.testing.assert_allclose(a.losses, b.losses, rtol=0, atol=tol)
    for (n, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=tol, msg=n)


def test_ignored_labels_are_excluded_from_the_normalisation():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, VOCAB, generator=g) * 3
    labels = torch.randint(0, VOCAB, (2, 6), generator=g)
    labels[0, 2:4] = -100
    ce, z = lm_loss_sums(logits, labels, 1e-4)
    # by hand: next-token targets, skipping -100
    ce_h, z_h, n = 0.0, 0.0, 0
    for b in range(2):
        for t in range(5):
            y = int(labels[b, t + 1])
            if y == -100:
                continue
            row = logits[b, t].double()
            lse = torch.logsumexp(row, 0)
            ce_h += float(lse - row[y])
            z_h += float(lse) ** 2
            n += 1
    assert n == 8
    assert abs(float(ce) - ce_h) < 1e-4 and abs(float(z) - z_h) < 1e-3


def test_logged_z_loss_matches_hand_computation(tmp_path):
    rows = corpus(4)
    model = Olmo2(MODEL_CFG)
    model.reset_parameters(torch.Generator().manual_seed(7))
    ref = copy.deepcopy(model)
    coeff = 1e-2
    res = train(MODEL_CFG, cfg(max_steps=1, z_loss_coeff=coeff, peak_flops=1e12), ArraySource(rows, 4), tmp_path,
                model=model)
    first = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    # step 1's batch under the same order, computed by hand with the initial weights
    src = ArraySource(rows, 4)
    x = next(iter(src))["input_ids"]
    with torch.no_grad():
        logits = ref(x).double()[:, :-1]
    lse = torch.logsumexp(logits, -1)
    tgt = x[:, 1:]
    ce = (lse - logits.gather(-1, tgt[..., None])[..., 0]).mean()
    z = coeff * (lse ** 2).mean()
    assert abs(first["loss"] - float(ce)) < 1e-5
    assert abs(first["z_loss"] - float(z)) < 1e-6
    assert abs(first["total_loss"] - float(ce + z)) < 1e-5
    assert res.losses[0] == first["loss"]
    n_flop = sum(p.numel() for p in ref.parameters()) - VOCAB * MODEL_CFG.d_model  # input embedding excluded
    assert first["mfu"] == pytest.approx(6 * n_flop * first["tokens_per_s"] / 1e12, rel=1e-6)


class _Nan:
    """Forward hook (on the final norm) making the hidden states, so the logits, NaN on chosen
    forward calls (steps × micro-batches); the chunked loss never calls lm_head as a module."""

    def __init__(self, steps, micro=2):
        self.steps, self.micro, self.calls = set(steps), micro, 0

    def __call__(self, module, inputs, out):
        self.calls += 1
        step = (self.calls - 1) // self.micro + 1
        return out * float("nan") if step in self.steps else out


class _Record(Callback):
    def __init__(self):
        self.weights, self.skipped, self.ckpts = {}, {}, []

    def on_step_end(self, state):
        self.weights[state.step] = state.model.lm_head.weight.detach().clone()
        self.skipped[state.step] = state.skipped

    def on_checkpoint(self, path):
        self.ckpts.append(path)


def test_nan_step_is_skipped_and_training_continues(tmp_path):
    model = Olmo2(MODEL_CFG)
    model.reset_parameters(torch.Generator().manual_seed(1))
    model.model.norm.register_forward_hook(_Nan({3}))
    rec = _Record()
    res = train(MODEL_CFG, cfg(max_steps=5), ArraySource(corpus(), 4), tmp_path, model=model, callbacks=[rec])
    assert res.step == 5
    assert [rec.skipped[s] for s in range(1, 6)] == [False, False, True, False, False]
    assert torch.equal(rec.weights[3], rec.weights[2])          # no update on the NaN step
    assert not torch.equal(rec.weights[4], rec.weights[3])
    lines = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[2]["skipped"] is True and lines[2]["loss"] == "nan"
    assert torch.isfinite(model.lm_head.weight).all()


def test_repeated_nan_aborts_after_n_and_keeps_last_good_checkpoint(tmp_path):
    model = Olmo2(MODEL_CFG)
    model.reset_parameters(torch.Generator().manual_seed(1))
    model.model.norm.register_forward_hook(_Nan(range(4, 100)))
    rec = _Record()
    with pytest.raises(Olmo2Error, match=r"3 consecutive steps with non-finite.*step-000002") as e:
        train(MODEL_CFG, cfg(max_steps=20, save_every=2, max_consecutive_skips=3), ArraySource(corpus(), 4),
              tmp_path, model=model, callbacks=[rec])
    assert "up to step 6" in str(e.value)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2]   # nothing saved after the NaNs began
    assert sum(rec.skipped.values()) == 3


def test_export_hf_gives_identical_logits(tmp_path):
    res = train(MODEL_CFG, cfg(max_steps=3, save_final=True), ArraySource(corpus(), 4), tmp_path / "run")
    out = export_hf(res.last_checkpoint, tmp_path / "hf")
    loaded = load_model(out)
    x = torch.from_numpy(corpus(2, seed=5)).long()
    res.model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), res.model(x))


@pytest.mark.parametrize("compile_", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_activation_checkpointing_and_compile_do_not_change_training(tmp_path, compile_):
    rows = corpus(8)
    ref = train(MODEL_CFG, cfg(max_steps=3), ArraySource(rows, 4), tmp_path / "ref")
    ac = train(MODEL_CFG, cfg(max_steps=3, activation_checkpointing=True, compile=compile_, save_final=True),
               ArraySource(rows, 4), tmp_path / "ac")
    tol = 1e-5 if compile_ else 0.0  # recomputation is the same kernels; inductor may fuse differently
    np.testing.assert_allclose(ac.losses, ref.losses, rtol=0, atol=tol)
    names = [n for n, _ in ac.model.named_parameters()]
    assert any("_checkpoint_wrapped_module" in n for n in names)
    merged = load_model_from_checkpoint(ac.last_checkpoint)  # clean FQNs in the checkpoint
    for p, q in zip(merged.parameters(), ac.model.parameters()):
        assert torch.equal(p, q)


def test_seq_len_beyond_max_seq_len_is_a_one_line_error(tmp_path):
    from olmo2.errors import ConfigError, DataError
    with pytest.raises(ConfigError, match="train.seq_len 128 exceeds model.max_seq_len 64"):
        train(MODEL_CFG, cfg(seq_len=128), ArraySource(corpus(4), 4), tmp_path / "a")
    # rows longer than the config claims: caught per batch, before the RoPE table lookup
    long_rows = np.random.default_rng(0).integers(0, VOCAB, (4, 80))
    with pytest.raises(DataError, match="80 tokens per row exceeds model.max_seq_len 64"):
        train(MODEL_CFG, cfg(), ArraySource(long_rows, 4), tmp_path / "b")
