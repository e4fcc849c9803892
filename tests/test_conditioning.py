"""The conditioning type, the Denoiser call with it (and the `class_labels=` alias), the one
teacher resolver with the data module's names, and per-method configs."""
import pytest
import torch

from fastdistill import Conditioning, load_teacher
from fastdistill.cli import main
from fastdistill.data import load_dataset
from fastdistill.engine import ConfigError, DistillConfig, method_config
from fastdistill.methods import SIGNConfig, SiDConfig

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------- Conditioning
def test_labels_batch_operations():
    c = Conditioning.from_labels([0, 2, 1, 2], 3)
    assert c.batch_size == len(c) == 4 and c.kind == "labels" and c.dtype == torch.float32
    assert torch.equal(c.labels.argmax(1), torch.tensor([0, 2, 1, 2]))
    assert torch.equal(c[1:3].labels, c.labels[1:3])
    assert torch.equal(c[torch.tensor([3, 0])].labels, c.labels[[3, 0]])
    assert torch.equal(c[2].labels, c.labels[2:3])
    both = Conditioning.cat([c, c[:1]])
    assert both.batch_size == 5 and torch.equal(both.labels[4], c.labels[0])
    assert torch.equal(c.repeat(2).labels, torch.cat([c.labels, c.labels]))
    assert c.to(dtype=torch.float64).labels.dtype == torch.float64
    assert torch.equal(c.unconditional().labels, torch.zeros(4, 3))
    assert Conditioning.cat([None, None]) is None
    assert torch.equal(Conditioning.from_labels(1, 3, n=2).labels, torch.tensor([[0.0, 1, 0], [0.0, 1, 0]]))


def test_text_conditioning_and_its_null():
    null = Conditioning(embeds=torch.full((1, 4, 8), 0.5), pooled=torch.ones(1, 8))
    c = Conditioning(embeds=torch.randn(3, 4, 8), pooled=torch.randn(3, 8), mask=torch.ones(3, 4, dtype=torch.long),
                     extra={"time_ids": torch.randn(3, 6)}, null=null)
    assert c.kind == "text" and set(c.tensors()) == {"embeds", "pooled", "mask", "extra.time_ids"}
    u = c.unconditional()
    assert u.batch_size == 3 and torch.equal(u.embeds, null.embeds.expand(3, 4, 8))
    assert c[:2].extra["time_ids"].shape == (2, 6) and c[:2].null is null
    assert c.to(dtype=torch.float16).mask.dtype == torch.long  # masks and ids keep their dtype


def test_bad_conditioning_is_a_clear_error():
    with pytest.raises(ValueError, match="at least one tensor"):
        Conditioning()
    with pytest.raises(ValueError, match="batch size"):
        Conditioning(labels=torch.zeros(2, 3), embeds=torch.zeros(3, 4, 8))
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        Conditioning.from_labels([0, 3], 3)
    with pytest.raises(ValueError, match="unconditional"):
        Conditioning.from_labels(0, 0)
    with pytest.raises(ValueError, match="different kinds"):
        Conditioning.cat([Conditioning(labels=torch.zeros(1, 3)), Conditioning(labels=torch.zeros(1, 4))])
    with pytest.raises(ValueError, match="conditioned and unconditioned"):
        Conditioning.cat([Conditioning(labels=torch.zeros(1, 3)), None])


def test_denoisers_take_cond_and_the_class_labels_alias():
    t = load_teacher("digits")
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    s = torch.full((3,), 1.5)
    onehot = torch.nn.functional.one_hot(torch.tensor([1, 4, 7]), 10).float()
    with torch.no_grad():
        a = t(x, s, Conditioning(labels=onehot))
        torch.testing.assert_close(t(x, s, class_labels=onehot), a, rtol=0, atol=0)
        torch.testing.assert_close(t(x, s, onehot), a, rtol=0, atol=0)
    with pytest.raises(TypeError, match="not both"):
        t(x, s, Conditioning(labels=onehot), class_labels=onehot)
    with pytest.raises(ValueError, match="text"):
        t(x, s, Conditioning(embeds=torch.zeros(3, 4, 8)))


# ---------------------------------------------------------------------- teacher resolver
def test_load_teacher_names():
    digits = load_teacher("digits")
    assert digits.label_dim == 10 and digits.img_resolution == 8
    ring = load_teacher("analytic:8gaussians")
    # the analytic teachers carry the names of the datasets they equal: same samples for a seed
    for name in ("8gaussians", "25gaussians"):
        t = load_teacher(f"analytic:{name}")
        x_t = t.sample(64, generator=torch.Generator().manual_seed(3))
        x_d, _ = load_dataset(name).sample(64, torch.Generator().manual_seed(3))
        torch.testing.assert_close(x_t.float(), x_d.float())
    assert load_teacher("analytic:ring8").num_components == ring.num_components == 8  # the older spelling
    assert load_teacher("analytic:ring64").num_components == 64
    with pytest.raises(ValueError, match="unknown analytic teacher"):
        load_teacher("analytic:nope")
    with pytest.raises(FileNotFoundError, match="analytic:NAME"):
        load_teacher("no/such/teacher.pkl")


# ---------------------------------------------------------------------- method configs
def test_each_method_owns_its_options():
    cfg = DistillConfig().with_overrides(["method.alpha=1.0", "method.sigma_init=2.0"])
    assert isinstance(cfg.method, SiDConfig) and cfg.method.alpha == 1.0
    sign = cfg.with_overrides(["method.l_idem=5", "method.name=sign"]).method  # name applied first
    assert isinstance(sign, SIGNConfig) and sign.l_idem == 5.0
    assert sign.sigma_init == 2.0 and sign.alpha == 1.2  # the options all methods share carry over, no others
    sim = cfg.with_overrides(["method.divisor=none", "method.name=sim"]).method
    assert sim.sigma_init == 2.0 and not hasattr(sim, "alpha") and sim.divisor == "none"
    assert cfg.with_overrides(["method.name=sim"]).method.divisor == "none"  # SIM's own default, not SiD's
    with pytest.raises(ConfigError, match="option of method sign: set method.name first"):
        DistillConfig().with_overrides(["method.l_idem=5"])
    with pytest.raises(ConfigError, match="Valid keys"):
        DistillConfig().with_overrides(["method.alfa=5"])
    with pytest.raises(ConfigError, match="unknown method"):
        DistillConfig().with_overrides(["method.name=gan"])
    from_dict = DistillConfig.from_dict({"method": {"l_rec": 2.0, "name": "sign"}})
    assert isinstance(from_dict.method, SIGNConfig) and from_dict.method.l_rec == 2.0
    again = DistillConfig.from_dict(from_dict.to_dict())
    assert again.to_dict() == from_dict.to_dict()
    bad = DistillConfig()
    bad.method.name = "sign"  # renaming in place does not switch the option set
    with pytest.raises(ConfigError, match="switch methods"):
        bad.validate()
    with pytest.raises(ConfigError, match="no option"):
        method_config("sid", l_idem=1.0)


def test_config_list_names_every_key(capsys):
    assert main(["config", "--list"]) == 0
    text = capsys.readouterr().out
    for key in ("optim.lr", "method.alpha", "method.l_idem", "method.ign_clamp", "method.distance", "log.wandb",
                "teacher.name", "eval_cache"):
        assert f"  {key} " in text, key
    assert "method.* of method.name=sign:" in text and '"8gaussians"' in text
    assert main(["config", "--preset", "toy", "method.name=sim"]) == 0
    assert '"name": "sim"' in capsys.readouterr().out
    assert main(["config", "nope=1"]) == 2
