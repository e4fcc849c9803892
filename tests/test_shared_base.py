"""LoRA on one shared base (``lora.share_base``, the default): the teacher, the generator, the fake
network and the EMA copy hold the same frozen base tensors (one storage each), only the adapters
are their own, and training equals the untied form (every network with its own base copy) bit for
bit while the teacher stays fp32."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from fastdistill.engine import DistillConfig  # noqa: E402
from fastdistill.engine.loop import Distiller  # noqa: E402
from fastdistill.engine.lora import LORA_MARK  # noqa: E402
from tests.tiny_pipelines import make_sd_pipeline, write_prompt_file  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_sd_pipeline(tmp_path_factory.mktemp("shared") / "pipe")


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    return write_prompt_file(tmp_path_factory.mktemp("prompts") / "prompts.txt")


def _config(out, folder, prompts, **over) -> DistillConfig:
    items = {"teacher.kind": "checkpoint", "teacher.path": str(folder), "prompts": str(prompts), "lora.rank": 2,
             "method.guidance_teacher": 1.5, "method.guidance_fake": 1.5, "method.guidance_fake_train": 1.5,
             "optim.lr": 1e-3, "batch_size": 2, "steps": 3, "threads": 1, "out_dir": str(out), "teacher.dtype": "fp32",
             "progress": False, "eval_data": "none", **over}
    return DistillConfig().with_overrides([f"{k}={v}" for k, v in items.items()])


def _storages(net) -> set:
    return {p.untyped_storage().data_ptr() for p in net.parameters()}


def _base(net) -> set:
    return {p.untyped_storage().data_ptr() for n, p in net.named_parameters() if LORA_MARK not in n}


def _state(d: Distiller) -> dict:
    """Every network's whole state (the shared base included) and the optimisers' moments."""
    nets = {f"{name}.{k}": v.detach().clone() for name, net in d.trained.networks.items()
            for k, v in net.state_dict().items()}
    return {**nets, **d.trained.whole_tensors()[0]["optim"]}


def test_the_lora_networks_hold_the_teachers_own_weights(tmp_path, folder, prompts, capsys):
    d = Distiller(_config(tmp_path, folder, prompts))
    teacher = _storages(d.teacher.unet)
    for net in (d.G, d.fake, d.ema.module):
        assert _base(net.unet) == teacher  # one storage per base tensor, the teacher's
        adapters = _storages(net.unet) - teacher
        assert adapters and all(p.dtype == torch.float32 for n, p in net.unet.named_parameters() if LORA_MARK in n)
    assert not (_storages(d.G.unet) - teacher) & (_storages(d.ema.module.unet) - teacher)  # the EMA's adapters are its own
    assert "LoRA rank 2 (both), on the teacher's weights" in capsys.readouterr().out
    d.release()


def test_training_on_the_shared_base_equals_the_untied_form(tmp_path, folder, prompts):
    shared = Distiller(_config(tmp_path / "shared", folder, prompts))
    untied = Distiller(_config(tmp_path / "untied", folder, prompts, **{"lora.share_base": False}))
    assert not _base(untied.G.unet) & _storages(untied.teacher.unet)
    teacher_before = {n: p.detach().clone() for n, p in shared.teacher.unet.named_parameters()}
    rows = [(shared.train_step(), untied.train_step()) for _ in range(3)]
    for a, b in rows:
        assert (a["loss_gen"], a["loss_fake"]) == (b["loss_gen"], b["loss_fake"])
    a, b = _state(shared), _state(untied)
    assert a.keys() == b.keys() and not [k for k in a if not torch.equal(a[k], b[k])]
    for n, p in shared.teacher.unet.named_parameters():  # training moved only the adapters
        assert torch.equal(p, teacher_before[n]), n
    for d in (shared, untied):
        d.release()


def test_a_fully_trained_generator_beside_a_lora_fake_network_on_the_teachers_base(tmp_path, folder, prompts):
    d = Distiller(_config(tmp_path, folder, prompts, **{"lora.networks": "fake"}))
    teacher = _storages(d.teacher.unet)
    assert _base(d.fake.unet) == teacher
    assert not _storages(d.G.unet) & teacher and not _storages(d.ema.module.unet) & teacher  # its own fp32 copy
    before = {n: p.detach().clone() for n, p in d.teacher.unet.named_parameters()}
    d.train_step()
    assert all(torch.equal(p, before[n]) for n, p in d.teacher.unet.named_parameters())
    d.release()


def test_a_shared_base_run_resumes_exactly(tmp_path, folder, prompts):
    over = {"ckpt_every": 2, "steps": 4}
    full = Distiller(_config(tmp_path / "full", folder, prompts, **over))
    full.run()
    Distiller(_config(tmp_path / "half", folder, prompts, **dict(over, steps=2))).run()
    resumed = Distiller(_config(tmp_path / "half", folder, prompts, resume="auto", **over))
    assert resumed.step == 2 and _base(resumed.G.unet) == _storages(resumed.teacher.unet)
    resumed.run()
    a, b = _state(full), _state(resumed)
    assert not [k for k in a if not torch.equal(a[k], b[k])]


def test_a_bf16_teacher_casts_the_shared_base_and_keeps_the_adapters_fp32(tmp_path, folder, prompts):
    d = Distiller(_config(tmp_path, folder, prompts, **{"teacher.dtype": "bf16"}))
    assert {p.dtype for p in d.teacher.unet.parameters()} == {torch.bfloat16}
    for net in (d.G, d.fake):
        dtypes = {(LORA_MARK in n, p.dtype) for n, p in net.unet.named_parameters()}
        assert dtypes == {(False, torch.bfloat16), (True, torch.float32)}
    row = d.train_step()
    assert row["skipped"] == 0 and all(torch.isfinite(torch.tensor([row["loss_gen"], row["loss_fake"]])))
    d.release()


def test_a_shared_base_checkpoint_holds_the_adapters_and_loads_on_the_teacher(tmp_path, folder, prompts):
    from safetensors import safe_open

    from fastdistill.engine import checkpoint as ckpt
    from fastdistill.student import load_student
    from fastdistill.teachers import CheckpointError, load_teacher

    runs = {}
    for name, share in (("shared", True), ("untied", False)):
        Distiller(_config(tmp_path / name, folder, prompts, **{"lora.share_base": share, "steps": 2})).run()
        runs[name] = ckpt.latest_checkpoint(tmp_path / name)
    with safe_open(str(runs["shared"] / "generator.safetensors"), "pt") as f:
        unet_keys = [k for k in f.keys() if k.startswith("unet.")]
    assert unet_keys and all(LORA_MARK in k for k in unet_keys)  # the base is the teacher's, not written
    sizes = {name: sum(p.stat().st_size for p in run.glob("*.safetensors")) for name, run in runs.items()}
    assert sizes["shared"] < 0.5 * sizes["untied"]
    a, b = load_student(tmp_path / "shared"), load_student(tmp_path / "untied")
    torch.testing.assert_close(a.sample(2, seed=3, cond="a cat"), b.sample(2, seed=3, cond="a cat"), rtol=0, atol=0)
    changed = load_teacher(str(folder))
    with torch.no_grad():
        next(changed.unet.parameters()).add_(1e-3)
    with pytest.raises(CheckpointError, match="LoRA adapters only.*weights have changed"):
        load_student(tmp_path / "shared", network=changed)
    load_student(tmp_path / "shared", network=load_teacher(str(folder)))  # the run's own teacher: loads


def test_a_checkpoint_from_before_the_shared_base_resumes_untied_and_exactly(tmp_path, folder, prompts, monkeypatch):
    """A checkpoint whose config has no ``lora.share_base`` (written before the setting existed, its
    LoRA networks each on their own base) resumes untied, bit for bit, even with a bf16 teacher,
    where the two forms differ; the config check does not take the missing key for a change."""
    over = {"lora.share_base": False, "teacher.dtype": "bf16", "ckpt_every": 2, "steps": 4}
    full = Distiller(_config(tmp_path / "full", folder, prompts, **over))
    full.run()
    half = _config(tmp_path / "half", folder, prompts, **dict(over, steps=2))
    current = DistillConfig.to_dict

    def older(self):
        d = current(self)
        d["lora"].pop("share_base")
        return d

    monkeypatch.setattr(DistillConfig, "to_dict", older)
    Distiller(half).run()
    monkeypatch.setattr(DistillConfig, "to_dict", current)
    resumed = Distiller(_config(tmp_path / "half", folder, prompts, resume="auto",
                                **{k: v for k, v in over.items() if k != "lora.share_base"}))
    assert resumed.cfg.lora.share_base is False and not resumed.from_teacher and resumed.config_changes == []
    resumed.run()
    a, b = _state(full), _state(resumed)
    assert not [k for k in a if not torch.equal(a[k], b[k])]
