"""A method can bring a trained module of its own (what a discriminator head needs) through
``DistillMethod.modules`` and ``param_groups``, without touching the loop: the module trains in the
update that holds it, is checkpointed under its name and resumes exactly."""
from __future__ import annotations

import pytest
import torch

from fastdistill.engine import Distiller, run_distillation
from fastdistill.engine import checkpoint as ckpt
from fastdistill.methods import ConfigError
from fastdistill.methods import base as methods_base
from fastdistill.methods.sid import SiD, SiDConfig
from tests._engine_helpers import tiny_config, tiny_teacher

HEAD_LR = 0.05


class SiDWithHead(SiD):
    """SiD whose fake update also fits a linear head on the generator's samples to output 1."""

    head_name = "head"

    def modules(self, fake):
        self.head = torch.nn.Linear(2, 1)
        return {self.head_name: self.head}

    def param_groups(self, update, params, optim):
        groups = super().param_groups(update, params, optim)
        return groups + [{"params": list(self.head.parameters()), "lr": HEAD_LR}] if update == "fake" else groups

    def fake_loss(self, G, fake, noise, samples=None):
        loss, nan = super().fake_loss(G, fake, noise, samples)
        x = (self.fake_samples(G, noise) if samples is None else samples).detach()
        return loss + (self.head(x) - 1).pow(2).mean(), nan


@pytest.fixture
def sid_with_head(monkeypatch):
    monkeypatch.setitem(methods_base._REGISTRY, "sid-with-head", SiDWithHead)
    monkeypatch.setattr(SiDWithHead, "name", "sid-with-head")
    monkeypatch.setattr(SiDWithHead, "config_class", SiDConfig)
    return SiDWithHead


def _head_error(d: Distiller) -> float:
    with torch.no_grad():
        return float((d.method_modules["head"](d.student_samples(256, seed=1)) - 1).pow(2).mean())


def test_the_methods_module_trains_in_its_update_and_is_checkpointed(sid_with_head, tmp_path):
    d = Distiller(tiny_config(tmp_path, **{"method.name": "sid-with-head", "steps": 30}), teacher=tiny_teacher(0))
    before = _head_error(d)
    assert [g["lr"] for g in d.updates.opt_f.param_groups] == [d.cfg.optim.lr, HEAD_LR]
    assert [g["lr"] for g in d.updates.opt_g.param_groups] == [d.cfg.optim.lr]
    assert "head 3 parameters" in d.describe()
    d.run()
    assert _head_error(d) < 0.5 * before
    tensors, _ = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))
    for name, value in d.method_modules["head"].state_dict().items():
        torch.testing.assert_close(tensors["head"][name], value, rtol=0, atol=0)


def test_a_run_with_the_methods_module_resumes_exactly(sid_with_head, tmp_path):
    over = {"method.name": "sid-with-head", "ckpt_every": 2}
    whole = Distiller(tiny_config(tmp_path / "whole", steps=4, **over), teacher=tiny_teacher(0))
    whole.run()
    run_distillation(tiny_config(tmp_path / "halves", steps=2, **over), teacher=tiny_teacher(0))
    halves = Distiller(tiny_config(tmp_path / "halves", steps=4, resume="auto", **over), teacher=tiny_teacher(0))
    halves.run()
    for name in ("head",):
        for a, b in zip(whole.method_modules[name].parameters(), halves.method_modules[name].parameters()):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(whole.G.parameters(), halves.G.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_methods_module_may_not_take_a_networks_name(sid_with_head, tmp_path, monkeypatch):
    monkeypatch.setattr(SiDWithHead, "head_name", "fake")
    with pytest.raises(ConfigError, match=r"names its own modules \['fake'\]: generator, fake"):
        Distiller(tiny_config(tmp_path, **{"method.name": "sid-with-head"}), teacher=tiny_teacher(0))


def test_sharding_refuses_a_method_with_modules_of_its_own(sid_with_head, tmp_path):
    with pytest.raises(ConfigError, match="does not shard yet"):
        Distiller(tiny_config(tmp_path, **{"method.name": "sid-with-head", "distributed.strategy": "fsdp"}),
                  teacher=tiny_teacher(0))
