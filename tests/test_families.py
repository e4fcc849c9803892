"""Every registered teacher family meets the family protocol: its own file, the attributes and
methods its kind needs, and a tiny pipeline of it that loads as a teacher and denoises. A family
added without a builder here fails the last test, so none is registered untested."""
from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")  # the diffusers extra

from fastdistill.teachers import load_teacher  # noqa: E402
from fastdistill.teachers.families import PipelineFamily, family_for, registered  # noqa: E402
from fastdistill.teachers.traits import traits  # noqa: E402
from tests import tiny_pipelines as tp  # noqa: E402

BUILDERS = {
    "StableDiffusionPipeline": tp.make_sd_pipeline,
    "StableDiffusionXLPipeline": tp.make_sdxl_pipeline,
    "PixArtAlphaPipeline": tp.make_pixart_pipeline,
    "PixArtSigmaPipeline": lambda folder: tp.make_pixart_pipeline(folder, sigma=True),
    "StableDiffusion3Pipeline": tp.make_sd3_pipeline,
    "FluxPipeline": tp.make_flux_pipeline,
}


def _overrides(family: PipelineFamily, method: str) -> bool:
    return getattr(type(family), method) is not getattr(PipelineFamily, method)


@pytest.mark.parametrize("pipeline", list(registered()))
def test_family_declares_what_its_kind_needs(pipeline):
    import diffusers

    family = family_for(pipeline)
    assert family.pipeline == pipeline and family.name and hasattr(diffusers, pipeline)
    assert family.network in ("unet", "transformer") and family.network not in family.components
    assert {"vae", "scheduler", "text_encoder", "tokenizer"} <= set(family.components)
    if family.t5_tokenizer is not None:
        assert family.t5_tokenizer in family.components
    needs = ["cond_dim", "encode"] + (["velocity", "default_resolution"] if family.flow else ["network_inputs"])
    missing = [m for m in needs if not _overrides(family, m)]
    assert not missing, f"{type(family).__name__} does not implement {missing}"
    assert Path(inspect.getfile(type(family))).parent.name == "families"


@pytest.mark.parametrize("pipeline", list(registered()))
def test_a_familys_preset_is_a_registered_recipe_for_it(pipeline):
    from fastdistill.engine import preset_config

    family = family_for(pipeline)
    if family.preset is not None:
        assert preset_config(family.preset).teacher.family == family.name


def test_distill_with_prompts_starts_from_the_folders_family_preset(tmp_path, monkeypatch):
    from fastdistill.cli.common import TEXT_TO_IMAGE_PRESET, text_to_image_preset

    sd, sdxl = (tmp_path / name for name in ("sd", "sdxl"))
    for folder, cls in ((sd, "StableDiffusionPipeline"), (sdxl, "StableDiffusionXLPipeline")):
        folder.mkdir()
        (folder / "model_index.json").write_text(f'{{"_class_name": "{cls}"}}')
    assert text_to_image_preset(str(sd)) == family_for("StableDiffusionPipeline").preset == "sid-lsg-sd15"
    assert text_to_image_preset(str(sdxl)) == TEXT_TO_IMAGE_PRESET  # no recipe of its own yet
    monkeypatch.setattr(family_for("StableDiffusionXLPipeline"), "preset", "digits-t2i-sid")
    assert text_to_image_preset(str(sdxl)) == "digits-t2i-sid"
    assert text_to_image_preset(None) == TEXT_TO_IMAGE_PRESET


def test_each_family_lives_in_its_own_file():
    files: dict[str, set] = {}
    for family in registered().values():
        files.setdefault(inspect.getfile(type(family)), set()).add(family.name.split("-")[0])
    assert all(len(names) == 1 for names in files.values()), files  # variants of one family may share a file


@pytest.mark.parametrize("pipeline", list(registered()))
def test_a_tiny_pipeline_of_each_family_loads_and_denoises(pipeline, tmp_path):
    assert pipeline in BUILDERS, f"no tiny {pipeline} to test its family with: add a builder to tests/tiny_pipelines.py"
    teacher = load_teacher(str(BUILDERS[pipeline](tmp_path / "pipe")))
    assert teacher.spec is family_for(pipeline) and teacher.family == teacher.spec.name
    t = traits(teacher)  # what the engine and the methods may know of it
    assert t.text and t.decodes and t.latent and t.network is teacher.unet and t.text_width == teacher.cond_dim
    assert t.schedule.kind == ("flow" if family_for(pipeline).flow else "discrete") and t.schedule.num_timesteps == 1000
    assert t.family == teacher.family and t.data_shape == (teacher.img_channels,) + (teacher.img_resolution,) * 2
    cond = teacher.encode_prompt(["a cat", "a dog"])
    x = torch.randn(2, teacher.img_channels, teacher.img_resolution, teacher.img_resolution)
    out = teacher(x, torch.tensor([0.5, 3.0]), cond)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_a_users_module_needs_only_the_required_part():
    """README's bring-your-own teacher: sigma_data, the sample shape, label_dim and D(x, sigma, cond);
    every optional capability is off."""
    from tests._engine_helpers import tiny_teacher

    t = traits(tiny_teacher(0))
    assert (t.data_shape, t.sigma_data, t.label_dim) == ((2,), 0.5, 0)
    assert not (t.text or t.decodes or t.latent or t.guidance_distilled or t.exact_samples)
    assert t.schedule.kind == "edm" and t.schedule.num_timesteps is None and t.network is None and t.text_width is None and t.family == ""
