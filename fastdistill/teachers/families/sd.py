"""Stable Diffusion 1.x/2.x: one CLIP text encoder and a UNet on a discrete VP schedule."""
from __future__ import annotations

from ...conditioning import Conditioning
from .base import PipelineFamily, register


@register
class StableDiffusion(PipelineFamily):
    name = "Stable Diffusion 1.x/2.x"
    pipeline = "StableDiffusionPipeline"
    preset = "sid-lsg-sd15"

    def load_kwargs(self) -> dict:
        return {"safety_checker": None, "requires_safety_checker": False}

    def cond_dim(self, network) -> int:
        return int(network.config.cross_attention_dim)

    def encode(self, teacher, pipe, prompts, device) -> Conditioning:
        embeds, _ = pipe.encode_prompt(prompts, device, 1, False)
        return Conditioning(embeds=embeds.float().cpu())

    def network_inputs(self, teacher, cond, batch, device, dtype) -> dict:
        embeds, _ = teacher.text_inputs(cond, batch, device, dtype)
        return {"encoder_hidden_states": embeds}
