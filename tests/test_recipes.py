"""Published recipe numbers, the tiny recipes, and the --set override parser."""
import pytest

from olmo2.errors import ConfigError
from olmo2.recipes import RECIPES, apply_overrides, get_recipe
from olmo2.recipes.tiny import stage1_final_lr, tiny_stage1, tiny_stage2
from olmo2.train.schedule import build_schedule


def _last_lr(t):
    return build_schedule(t).lr(t.max_steps * t.global_batch_size * t.seq_len)


def test_1b_stage1_published():
    r = get_recipe("olmo2_1b_stage1")
    t = r.train
    assert (t.global_batch_size, t.seq_len, t.max_steps, t.lr) == (512, 4096, 1_907_359, 4e-4)
    assert t.warmup_tokens == 8_388_608_000 and t.t_max_tokens == 5e12 and t.alpha_f == 0.1
    assert (t.betas, t.eps, t.weight_decay, t.decay_embeddings) == ((0.9, 0.95), 1e-8, 0.1, False)
    assert t.z_loss_coeff > 0 and t.max_grad_norm == 1.0 and t.seed == 6198
    assert r.data.name == "olmo-mix-1124"
    assert _last_lr(t) == pytest.approx(7.4487e-5, rel=1e-4)


def test_1b_stage2_published():
    r = get_recipe("olmo2_1b_stage2:42")
    t = r.train
    assert t.lr == 7.4487e-5 and t.schedule == "linear" and t.alpha_f == 0 and t.warmup_tokens == 0
    assert t.t_max_tokens == 50_000_000_000 and t.max_steps == 23_852 and t.seed == 42
    assert t.init_from and "1907359" in t.init_from
    assert r.data.name == "dolmino-mix-1124-50b"
    assert build_schedule(t).lr(t.max_steps * 512 * 4096) == 0.0
    assert {RECIPES["olmo2_1b_stage2"](s).train.seed for s in (42069, 666, 42)} == {42069, 666, 42}


def test_7b_13b():
    assert get_recipe("olmo2_7b_stage1").model.d_model == 4096
    assert get_recipe("olmo2_7b_stage1").train.global_batch_size == 1024
    assert _last_lr(get_recipe("olmo2_7b_stage1").train) == pytest.approx(6.1499e-5, rel=0.01)
    assert get_recipe("olmo2_7b_stage2").train.lr == 6.1499e-5
    r = get_recipe("olmo2_13b_stage2:2662")
    assert r.model.n_layers == 40 and r.train.lr == 9e-5 and r.train.t_max_tokens == 100_000_000_000


def test_tiny_chain():
    s1 = tiny_stage1("d")
    s2 = tiny_stage2(666, "d")
    assert s2.train.lr == pytest.approx(stage1_final_lr(s1.train)) and s2.train.alpha_f == 0
    assert 0 < s2.train.lr < s1.train.lr
    assert [s.name for s in s2.data.sources] == ["demo", "arith"]


def test_overrides():
    r = apply_overrides(get_recipe("tiny_stage1"), ["train.lr=1e-3", "model.n_layers=2", "train.max_steps=1e3",
                                                    "train.betas=0.9,0.99", "train.compile=true",
                                                    "train.init_from=none", "data.seed=3"])
    assert (r.train.lr, r.model.n_layers, r.train.max_steps, r.train.betas) == (1e-3, 2, 1000, (0.9, 0.99))
    assert r.train.compile is True and r.train.init_from is None and r.data.seed == 3


@pytest.mark.parametrize("ov,msg", [
    ("train.lrr=1", "did you mean 'lr'"), ("model.n_layers=two", "integer"), ("optim.lr=1", "unknown section"),
    ("train.lr", "section.field=value"), ("train.compile=maybe", "true/false"), ("train.lr=-1", "lr must be"),
    ("model.n_heads=3", "divisible"),
])
def test_override_errors(ov, msg):
    with pytest.raises(ConfigError, match=msg):
        apply_overrides(get_recipe("tiny_stage1"), [ov])


def test_unknown_recipe():
    with pytest.raises(ConfigError, match="unknown recipe"):
        get_recipe("olmo2_2b_stage1")
    with pytest.raises(ConfigError, match="takes no seed"):
        get_recipe("olmo2_1b_stage1:3")


def test_cli_print_config(capsys):
    import json

    from olmo2.cli import main
    assert main(["train", "--recipe", "olmo2_1b_stage2:666", "--set", "train.lr=1e-5", "--out", "x",
                 "--print-config"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["train"]["lr"] == 1e-5 and d["train"]["seed"] == 666
    assert main(["train", "--recipe", "tiny_stage1", "--set", "train.nope=1", "--out", "x"]) == 2


@pytest.mark.parametrize("ovs", [["train.seq_len=100000"], ["model.max_seq_len=64"],
                                 ["train.seq_len=1024", "model.max_seq_len=512"]])
def test_seq_len_beyond_max_seq_len_is_a_config_error(ovs, capsys):
    from olmo2.cli import main
    with pytest.raises(ConfigError, match=r"train.seq_len \d+ exceeds model.max_seq_len \d+"):
        apply_overrides(get_recipe("tiny_stage1"), ovs)
    # raising both together is fine
    r = apply_overrides(get_recipe("tiny_stage1"), ["train.seq_len=1024", "model.max_seq_len=1024"])
    assert (r.train.seq_len, r.model.max_seq_len) == (1024, 1024)
    args = ["train", "--recipe", "tiny_stage1", "--out", "x", "--print-config"]
    assert main(args + [a for ov in ovs for a in ("--set", ov)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --set ") and "max_seq_len" in err[0]
