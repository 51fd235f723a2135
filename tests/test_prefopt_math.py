"""DPO and GRPO maths (olmo2/post/logps.py, dpo.py, grpo.py) against values worked out by
hand from the papers' formulas, and the chunked log-probs against a plain log_softmax."""
from __future__ import annotations

import math

import pytest
import torch

from olmo2.config import preset
from olmo2.model import Olmo2
from olmo2.post.dpo import dpo_loss, pair_logps
from olmo2.post.grpo import group_advantages, grpo_token_loss, k3_kl
from olmo2.post.logps import model_token_logps, reference_token_logps, sequence_logps, token_logps


def _labels(ids: torch.Tensor, keep_from: int) -> torch.Tensor:
    lab = ids.clone()
    lab[:, :keep_from] = -100
    return lab


@pytest.mark.parametrize("chunk", [1, 5, None])
def test_chunked_token_logps_equal_unchunked(chunk):
    g = torch.Generator().manual_seed(0)
    B, T, D, V = 2, 7, 6, 50
    h = torch.randn(B, T, D, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(V, D, dtype=torch.float64, generator=g, requires_grad=True)
    ids = torch.randint(0, V, (B, T), generator=g)
    lab = _labels(ids, 3)
    lab[1, -2:] = -100  # padding at the end of a row
    got, mask = token_logps(h, w, lab, chunk)
    want, mask2 = reference_token_logps(h @ w.T, lab)
    assert torch.equal(mask, mask2) and mask.sum() == 4 + 2
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    upstream = torch.randn(B, T, dtype=torch.float64, generator=g)
    gh, gw = torch.autograd.grad((got * upstream).sum(), (h, w))
    rh, rw = torch.autograd.grad((want * upstream).sum(), (h, w))
    torch.testing.assert_close(gh, rh, rtol=0, atol=1e-12)
    torch.testing.assert_close(gw, rw, rtol=0, atol=1e-12)


def test_model_token_logps_by_hand():
    """Column t is log p(ids[t+1]) for the label positions, from a plain forward."""
    torch.manual_seed(0)
    model = Olmo2(preset("tiny").replace(vocab_size=97)).double()
    ids = torch.randint(0, 97, (1, 9))
    lab = _labels(ids, 4)
    got, mask = model_token_logps(model, ids, lab, chunk_tokens=3)
    logits = model(ids)[0]
    for t in range(9):
        want = torch.log_softmax(logits[t], -1)[ids[0, t + 1]].item() if 3 <= t < 8 else 0.0
        assert bool(mask[0, t]) == (3 <= t < 8)
        assert got[0, t].item() == pytest.approx(want, abs=1e-12)


def test_dpo_loss_hand_values():
    # β = 5: chosen reward 5·(−1 − −1.5) = 2.5, rejected 5·(−2 − −1.5) = −2.5;
    # loss = −log σ(5) = log(1 + e^−5)
    pc, pr, rc, rr = (torch.tensor([x], dtype=torch.float64) for x in (-1.0, -2.0, -1.5, -1.5))
    loss, r_c, r_r = dpo_loss(pc, pr, rc, rr, beta=5.0)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-5.0)), abs=1e-15)
    assert (r_c.item(), r_r.item()) == pytest.approx((2.5, -2.5))
    # equal margins → log 2; gradient pushes chosen up, rejected down by β·σ(−x)
    pc.requires_grad_(True)
    pr.requires_grad_(True)
    loss, _, _ = dpo_loss(pc, pr, pc.detach() + 0.3, pr.detach() + 0.3, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2.0))
    gc, gr = torch.autograd.grad(loss.sum(), (pc, pr))
    assert (gc.item(), gr.item()) == pytest.approx((-0.05, 0.05))


def test_dpo_norm_on_a_tiny_model_by_hand():
    """dpo_norm uses the MEAN log-prob of the response tokens: checked against a loop over
    positions of a plain full-logits forward."""
    torch.manual_seed(1)
    model = Olmo2(preset("tiny").replace(vocab_size=61)).double()
    c = torch.randint(0, 61, (1, 8))
    r = c.clone()
    r[0, 5:] = torch.randint(0, 61, (3,))
    mb = {"chosen_ids": c, "chosen_labels": _labels(c, 4), "rejected_ids": r, "rejected_labels": _labels(r, 4)}

    def mean_lp(ids):
        lp = torch.log_softmax(model(ids)[0], -1)
        vals = [lp[t - 1, ids[0, t]].item() for t in range(4, 8)]  # response tokens 4..7
        return sum(vals) / len(vals), sum(vals)

    (mc, sc), (mr, sr) = mean_lp(c), mean_lp(r)
    pc, pr = pair_logps(model, mb, average=True, chunk_tokens=5)
    assert (pc.item(), pr.item()) == pytest.approx((mc, mr), abs=1e-12)
    pc_sum, _ = pair_logps(model, mb, average=False, chunk_tokens=None)
    assert pc_sum.item() == pytest.approx(sc, abs=1e-12)
    ref_c, ref_r = torch.tensor([mc - 0.1], dtype=torch.float64), torch.tensor([mr + 0.2], dtype=torch.float64)
    loss, _, _ = dpo_loss(pc, pr, ref_c, ref_r, beta=5.0)
    x = 5.0 * (0.1 - (-0.2))
    assert loss.item() == pytest.approx(math.log1p(math.exp(-x)), abs=1e-9)


def test_sequence_logps_mean_and_sum():
    lp = torch.tensor([[-1.0, -2.0, -3.0, 0.0]])
    m = torch.tensor([[True, True, False, False]])
    assert sequence_logps(lp, m, average=False).item() == -3.0
    assert sequence_logps(lp, m, average=True).item() == -1.5


def test_group_advantages_hand_values():
    # group 1: [10, 0, 0, 0]: mean 2.5, Bessel std sqrt((7.5² + 3·2.5²)/3) = 5
    # group 2: all equal → 0 (no signal), not NaN
    adv = group_advantages(torch.tensor([10.0, 0, 0, 0, 10, 10, 10, 10]), group_size=4)
    torch.testing.assert_close(adv, torch.tensor([1.5, -0.5, -0.5, -0.5, 0, 0, 0, 0], dtype=torch.float64),
                               rtol=0, atol=1e-7)
    # population std (numpy's, grpo_fast): sqrt(75/4)
    adv0 = group_advantages(torch.tensor([10.0, 0, 0, 0]), 4, unbiased=False)
    assert adv0[0].item() == pytest.approx(7.5 / math.sqrt(75 / 4), rel=1e-7)


def test_k3_hand_value():
    # log π = −1, log π_ref = −1.5: e^−0.5 − 1 + 0.5
    assert k3_kl(torch.tensor(-1.0), torch.tensor(-1.5)).item() == pytest.approx(math.exp(-0.5) - 0.5, rel=1e-6)
    assert k3_kl(torch.tensor(-2.0), torch.tensor(-2.0)).item() == 0.0


def test_clipped_objective_hand_values():
    # four tokens (one row each), old log-prob 0; ratios e^0.3 (above 1+ε) and e^−0.5 (below 1−ε)
    logp = torch.tensor([[0.3], [0.3], [-0.5], [-0.5]], dtype=torch.float64, requires_grad=True)
    old = torch.zeros(4, 1, dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    mask = torch.ones(4, 1, dtype=torch.bool)
    total, parts = grpo_token_loss(logp, old, ref_logp=logp.detach(), adv=adv, mask=mask, clip=0.2, beta=0.01)
    hi, lo = math.exp(0.3), math.exp(-0.5)
    # A=+1, ρ=1.35: max(−1.35, −1.2) = −1.2 (clipped); A=−1, ρ=1.35: max(1.35, 1.2) = 1.35;
    # A=+1, ρ=0.61: max(−0.61, −0.8) = −0.61;           A=−1, ρ=0.61: max(0.61, 0.8) = 0.8 (clipped)
    want = -1.2 + hi - lo + 0.8
    assert total.item() == pytest.approx(want, abs=1e-12)  # KL is 0: ref = π
    assert parts["clip_frac"].item() == 2 and parts["tokens"].item() == 4
    (g,) = torch.autograd.grad(total, logp)
    # clipped tokens get no gradient; the others −A·ρ
    torch.testing.assert_close(g.flatten(), torch.tensor([0.0, hi, -lo, 0.0], dtype=torch.float64))
    # masked tokens count for nothing; the KL term is β·k3 per token
    ref = torch.full((4, 1), -0.2, dtype=torch.float64)
    total2, parts2 = grpo_token_loss(logp.detach(), old, ref, adv, torch.tensor([[True], [False], [False], [False]]),
                                     clip=0.2, beta=0.01)
    k = math.exp(-0.2 - 0.3) - 1 - (-0.2 - 0.3)
    assert total2.item() == pytest.approx(-1.2 + 0.01 * k, abs=1e-12)
    assert parts2["kl"].item() == pytest.approx(k, abs=1e-12)


def test_clipped_tokens_give_the_model_no_gradient():
    # GRPOObjective on a real tiny model: tokens whose ratio is past the clip on the side the
    # advantage pushes (A > 0, ρ > 1 + ε; A < 0, ρ < 1 − ε) must contribute exactly nothing:
    # the model's gradient equals the gradient of the unclipped tokens' −A·ρ alone.
    from olmo2.post.rlvr import GRPOObjective
    from olmo2.train.config import TrainConfig
    torch.manual_seed(0)
    cfg = preset("tiny").replace(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=4, d_ff=64,
                                 max_seq_len=32)
    model = Olmo2(cfg)
    model.reset_parameters(generator=torch.Generator().manual_seed(1))
    ids = torch.randint(0, 64, (2, 8))
    labels = _labels(ids, keep_from=3)              # 5 response tokens per row, targets at columns 2..6
    with torch.no_grad():
        now, mask = model_token_logps(model, ids, labels, None)
    # per token: old = now − shift, so ρ = e^shift; row 0 has A = +1, row 1 has A = −1
    shift = torch.zeros(2, 8, dtype=now.dtype)
    shift[0, 2:7] = torch.tensor([0.5, 0.1, -0.5, 0.0, 0.3])   # clipped: ρ=1.65 and 1.35 (A > 0, ratio too high)
    shift[1, 2:7] = torch.tensor([-0.5, 0.1, 0.5, -0.3, 0.0])  # clipped: ρ=0.61 and 0.74 (A < 0, ratio too low)
    clipped = torch.zeros(2, 8, dtype=torch.bool)
    clipped[0, [2, 6]] = True
    clipped[1, [2, 5]] = True
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    mb = {"input_ids": ids, "labels": labels, "old_logps": now - shift, "ref_logps": now.clone(),
          "advantages": adv, "reward": torch.zeros(2), "response_len": torch.full((2,), 5.0)}
    obj = GRPOObjective(clip=0.2, beta=0.0)
    loss, metrics = obj.micro_batch(model, mb, TrainConfig(loss_chunk_tokens=None), None)
    assert metrics["clip_frac"].item() == 4 and mask.sum().item() == 10
    grads = torch.autograd.grad(loss, list(model.parameters()))
    # the same with only the unclipped tokens, as −A·ρ written out by hand
    logp, _ = model_token_logps(model, ids, labels, None)
    keep = mask & ~clipped
    want_loss = (-adv[:, None] * torch.exp(logp - (now - shift)) * keep).sum()
    want = torch.autograd.grad(want_loss, list(model.parameters()))
    for g, w in zip(grads, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)
    # and the clipped tokens alone have an identically zero gradient
    (g_tok,) = torch.autograd.grad(grpo_token_loss(logp, now - shift, now, adv, mask & clipped, 0.2, 0.0)[0], logp)
    assert torch.count_nonzero(g_tok) == 0
