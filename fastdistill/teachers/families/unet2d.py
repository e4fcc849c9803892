"""A diffusers ``UNet2DModel`` folder with a DDPM-family scheduler, as a pixel denoiser
(:mod:`fastdistill.teachers.diffusers_adapter`, imported when such a folder is loaded)."""
from __future__ import annotations

import importlib

from .base import CheckpointFamily, register_checkpoint_family


@register_checkpoint_family
class DiffusersUNet(CheckpointFamily):
    name = "diffusers UNet2DModel"
    format = "diffusers_model"

    def load(self, spec, device):
        adapter = importlib.import_module("fastdistill.teachers.diffusers_adapter")
        return adapter.load_diffusers_teacher(spec).to(device).eval().requires_grad_(False)
