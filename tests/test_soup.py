"""Soup: identity on identical inputs, (A+B)/2, weight normalisation, mismatch refused."""
import json

import pytest
import torch

from olmo2.checkpoint import load_model, save_model
from olmo2.config import preset
from olmo2.errors import Olmo2Error
from olmo2.model import Olmo2
from olmo2.train.soup import normalise_weights, soup


def _ckpt(path, seed, **kw):
    m = Olmo2(preset("tiny").replace(**kw))
    m.reset_parameters(torch.Generator().manual_seed(seed))
    save_model(m, path)
    return m


def test_identical_is_identity(tmp_path):
    a = _ckpt(tmp_path / "a", 0)
    out = soup([tmp_path / "a", tmp_path / "a"], tmp_path / "s", progress=False)
    s = load_model(out)
    for (k, v), (_, w) in zip(a.state_dict().items(), s.state_dict().items()):
        assert torch.equal(v, w), k


def test_average_and_weights(tmp_path):
    a, b = _ckpt(tmp_path / "a", 0), _ckpt(tmp_path / "b", 1)
    s = load_model(soup([tmp_path / "a", tmp_path / "b"], tmp_path / "s", progress=False))
    w = load_model(soup([tmp_path / "a", tmp_path / "b"], tmp_path / "w", weights=[3, 1], progress=False,
                        max_shard_bytes=50_000))  # also exercises sharded output + index
    assert (tmp_path / "w" / "model.safetensors.index.json").exists()
    sa, sb, ss, sw = a.state_dict(), b.state_dict(), s.state_dict(), w.state_dict()
    for k in sa:
        torch.testing.assert_close(ss[k], (sa[k] + sb[k]) / 2, rtol=0, atol=1e-7)
        torch.testing.assert_close(sw[k], 0.75 * sa[k] + 0.25 * sb[k], rtol=0, atol=1e-7)
    assert json.loads((tmp_path / "w" / "soup.json").read_text())["weights"] == [0.75, 0.25]


def test_normalise_weights():
    assert normalise_weights(2, None) == [0.5, 0.5]
    assert normalise_weights(3, [2, 2, 4]) == [0.25, 0.25, 0.5]
    for bad in ([1], [0, 0], [-1, 2]):
        with pytest.raises(Olmo2Error):
            normalise_weights(2, bad)


def test_mismatch_refused(tmp_path):
    _ckpt(tmp_path / "a", 0)
    _ckpt(tmp_path / "b", 0, n_layers=3)
    with pytest.raises(Olmo2Error, match="num_hidden_layers") as e:
        soup([tmp_path / "a", tmp_path / "b"], tmp_path / "s", progress=False)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "s").exists()


def test_cli_soup(tmp_path, capsys):
    from olmo2.cli import main
    _ckpt(tmp_path / "a", 0)
    _ckpt(tmp_path / "b", 1, d_model=32, n_heads=2, n_kv_heads=2)
    assert main(["soup", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "s")]) == 2
    assert "error: cannot soup" in capsys.readouterr().err
