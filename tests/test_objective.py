"""The loop's objective plug-in (olmo2/train/objective.py): a custom objective with extra
batch keys is sliced per micro-batch, normalised globally (accumulation does not change
the gradient), its (sum, count) metrics are logged, `bind` sees the live model, and packed
rows with document masks compute exactly what each document computes alone."""
import json

import numpy as np
import pytest
import torch

from olmo2.config import preset
from olmo2.model import Olmo2
from olmo2.train.config import TrainConfig
from olmo2.train.loop import train
from olmo2.train.objective import LMObjective, Objective, document_mask

VOCAB, T = 64, 16
MODEL_CFG = preset("tiny").replace(vocab_size=VOCAB, max_seq_len=64)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def cfg(**kw):
    base = dict(lr=1e-3, schedule="constant", warmup_tokens=0, global_batch_size=4, micro_batch_size=2,
                seq_len=T, max_steps=3, max_tokens=None, save_every=None, save_final=False, parallel="none",
                progress=False, seed=1)
    base.update(kw)
    return TrainConfig(**base)


def model(seed=1, dtype=torch.float64):
    m = Olmo2(MODEL_CFG)
    m.reset_parameters(torch.Generator().manual_seed(seed))
    return m.to(dtype)


class WeightedSeqSource:
    """Rows with per-row weights (an extra key) and a non-tensor field."""

    def __init__(self, n_steps=3, rows=4):
        g = np.random.default_rng(0)
        self.ids = torch.from_numpy(g.integers(0, VOCAB, (n_steps * rows, T))).long()
        self.w = torch.from_numpy(g.uniform(0.5, 2.0, n_steps * rows))
        self.rows, self.step, self.bound = rows, 0, []

    def __iter__(self):
        while self.step * self.rows < len(self.ids):
            s = slice(self.step * self.rows, (self.step + 1) * self.rows)
            self.step += 1
            yield {"input_ids": self.ids[s], "weights": self.w[s], "note": "passed through"}

    def bind(self, m):
        self.bound.append(m)


class WeightedSeqNLL(Objective):
    """Σ_rows w · (mean NLL of the row), normalised by the number of rows (a sequence-level
    loss, like DPO's per-pair one); metrics: weighted loss, mean row NLL as a (sum, count) pair."""

    name = "weighted_seq"

    def __init__(self):
        self.bound, self.notes = [], []

    def bind(self, m):
        self.bound.append(m)

    def normaliser(self, batch):
        return torch.tensor(float(batch["input_ids"].shape[0]))

    def micro_batch(self, m, mb, cfg, autocast):
        self.notes.append(mb["note"])
        assert mb["weights"].shape[0] == mb["input_ids"].shape[0] == cfg.micro_batch_size
        with autocast:
            logits = m(mb["input_ids"])
        logp = torch.log_softmax(logits[:, :-1].double(), -1)
        nll = -logp.gather(-1, mb["input_ids"][:, 1:, None]).squeeze(-1).mean(-1)    # [rows]
        loss = (mb["weights"] * nll).sum()
        return loss, {"loss": loss.detach(), "row_nll": (nll.detach().sum(), torch.tensor(float(len(nll))))}


def _run(tmp_path, micro):
    obj, data = WeightedSeqNLL(), WeightedSeqSource()
    res = train(MODEL_CFG, cfg(micro_batch_size=micro), data, tmp_path, model=model(), objective=obj)
    return res, obj, data


def test_custom_objective_is_sliced_normalised_and_bound(tmp_path):
    a, obj, data = _run(tmp_path / "m1", 1)
    b, _, _ = _run(tmp_path / "m4", 4)
    assert a.step == b.step == 3
    # accumulation over 4 micro-batches of 1 row == one micro-batch of 4 rows
    np.testing.assert_allclose(a.losses, b.losses, rtol=0, atol=1e-12)
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)
    assert obj.bound == [a.model] and data.bound == [a.model]
    assert obj.notes == ["passed through"] * 12
    # the logged loss is Σ w·nll / rows of the batch at the weights BEFORE the step: check step 1
    m0 = model()
    ids, w = data.ids[:4], data.w[:4]
    logp = torch.log_softmax(m0(ids)[:, :-1].double(), -1)
    nll = -logp.gather(-1, ids[:, 1:, None]).squeeze(-1).mean(-1)
    assert abs(a.losses[0] - float((w * nll).sum() / 4)) < 1e-10
    rec = [json.loads(x) for x in (tmp_path / "m1" / "metrics.jsonl").read_text().splitlines()]
    assert abs(rec[0]["row_nll"] - float(nll.mean())) < 1e-10
    assert rec[0]["z_loss"] == 0.0


def test_batch_with_wrong_rows_is_a_one_line_error(tmp_path):
    from olmo2.errors import DataError

    class Bad(WeightedSeqSource):
        def __iter__(self):
            yield {"input_ids": self.ids[:4], "weights": self.w[:3]}

    with pytest.raises(DataError, match=r"batch\['weights'\] has shape \(3,\)"):
        train(MODEL_CFG, cfg(), Bad(), tmp_path, model=model(), objective=WeightedSeqNLL())


def _pack(docs):
    """One row from several documents: ids, per-document positions, document ids."""
    ids = torch.cat(docs)
    pos = torch.cat([torch.arange(len(d)) for d in docs])
    doc = torch.cat([torch.full((len(d),), i) for i, d in enumerate(docs)])
    return ids[None], pos[None], doc[None]


def test_packed_row_with_document_mask_equals_each_document_alone():
    torch.manual_seed(0)
    m = model(dtype=torch.float32)
    docs = [torch.randint(0, VOCAB, (n,)) for n in (5, 9, 2)]
    ids, pos, doc = _pack(docs)
    packed = m(ids, positions=pos, attn_mask=document_mask(doc))[0]
    at = 0
    for d in docs:
        alone = m(d[None])[0]
        torch.testing.assert_close(packed[at:at + len(d)], alone, rtol=0, atol=2e-6)
        at += len(d)
    # control: without the mask the later documents DO see earlier ones
    leaky = m(ids, positions=pos)[0]
    assert (leaky[5:14] - m(docs[1][None])[0]).abs().max() > 1e-3


def test_lm_objective_on_packed_rows_equals_separate_rows():
    """The LM objective's loss sum on a packed row (labels ignored across the document
    boundary) equals the sum over the documents run as their own rows."""
    torch.manual_seed(1)
    m = model(dtype=torch.float64)
    docs = [torch.randint(0, VOCAB, (n,)) for n in (7, 6)]
    ids, pos, doc = _pack(docs)
    labels = ids.clone()
    labels[0, 7] = -100                        # the first token of doc 2 is no target of doc 1
    c = cfg(loss_chunk_tokens=4)
    obj = LMObjective()
    packed, _ = obj.micro_batch(m, {"input_ids": ids, "labels": labels, "position_ids": pos, "doc_ids": doc},
                                c, torch.autocast("cpu", enabled=False))
    alone = sum(obj.micro_batch(m, {"input_ids": d[None], "labels": d[None].clone()}, c,
                                torch.autocast("cpu", enabled=False))[0] for d in docs)
    assert abs(float(packed) - float(alone)) < 1e-9
    assert float(obj.normaliser({"labels": labels})) == 6 + 5
