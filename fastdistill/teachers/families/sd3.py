"""Stable Diffusion 3: CLIP-L and CLIP-G penultimate states (concatenated, padded to T5's width)
followed by T5's states, both CLIP projections pooled, and an MMDiT trained by flow matching
that sees ``1000 t``."""
from __future__ import annotations

from ...conditioning import Conditioning
from .base import PipelineFamily, register


@register
class StableDiffusion3(PipelineFamily):
    name = "SD3"
    pipeline = "StableDiffusion3Pipeline"
    network = "transformer"
    components = PipelineFamily.components + ("text_encoder_2", "tokenizer_2", "text_encoder_3", "tokenizer_3")
    flow = True
    t5_tokenizer = "tokenizer_3"

    def cond_dim(self, network) -> int:
        return int(network.config.joint_attention_dim)

    def default_resolution(self, pipe, vae_scale_factor: int) -> int:
        return int(pipe.transformer.config.sample_size) * vae_scale_factor

    def encode(self, teacher, pipe, prompts, device) -> Conditioning:
        embeds, _, pooled, _ = pipe.encode_prompt(prompts, None, None, device=device, do_classifier_free_guidance=False,
                                                  max_sequence_length=teacher.max_sequence_length)
        return Conditioning(embeds=embeds.float().cpu(), pooled=pooled.float().cpu())

    def velocity(self, teacher, x_t, timestep, cond):
        embeds, pooled = teacher.text_inputs(cond, x_t.shape[0], x_t.device, x_t.dtype, pooled=True)
        return teacher.unet(hidden_states=x_t, timestep=timestep, encoder_hidden_states=embeds,
                            pooled_projections=pooled, return_dict=False)[0]
