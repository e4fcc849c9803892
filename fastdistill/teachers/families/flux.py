"""FLUX.1: T5 states and CLIP's pooled embedding, a transformer trained by flow matching that
sees ``t``, on latents packed into 2 x 2 patch tokens with their position ids (image: the patch
grid, text: zeros, as the pipeline makes them). A guidance-distilled transformer
(``guidance_embeds``, FLUX.1-dev) reads its guidance as ``extra["guidance"]`` (default: the
pipeline's ``guidance_scale``), with no two-pass combination."""
from __future__ import annotations

from typing import Optional

import torch

from ...conditioning import Conditioning
from .base import PipelineFamily, call_default, register


@register
class Flux(PipelineFamily):
    name = "Flux"
    pipeline = "FluxPipeline"
    network = "transformer"
    components = PipelineFamily.components + ("text_encoder_2", "tokenizer_2")
    flow = True
    t5_tokenizer = "tokenizer_2"
    patch = 2

    def cond_dim(self, network) -> int:
        return int(network.config.joint_attention_dim)

    def default_resolution(self, pipe, vae_scale_factor: int) -> int:
        return int(pipe.vae.config.sample_size)  # the transformer has no sample_size

    def timestep_scale(self, num_train_timesteps: int) -> float:
        return num_train_timesteps / 1000.0

    def embedded_guidance(self, pipe) -> Optional[float]:
        if not getattr(pipe.transformer.config, "guidance_embeds", False):
            return None
        return float(call_default(pipe, "guidance_scale"))

    def encode(self, teacher, pipe, prompts, device) -> Conditioning:
        embeds, pooled, _ = pipe.encode_prompt(prompts, device=device, max_sequence_length=teacher.max_sequence_length)
        extra = {} if teacher.embedded_guidance is None else {
            "guidance": torch.full((len(prompts),), teacher.embedded_guidance, dtype=torch.float32)}
        return Conditioning(embeds=embeds.float().cpu(), pooled=pooled.float().cpu(), extra=extra)

    def velocity(self, teacher, x_t, timestep, cond):
        B, dev, dtype = x_t.shape[0], x_t.device, x_t.dtype
        embeds, pooled = teacher.text_inputs(cond, B, dev, dtype, pooled=True)
        guidance = None
        if teacher.guidance_distilled:
            if "guidance" not in cond.extra:
                raise ValueError("this Flux transformer is guidance-distilled: cond.extra['guidance'] must hold its "
                                 "guidance value per sample (cond = teacher.encode_prompt(prompts))")
            guidance = cond.extra["guidance"].to(device=dev, dtype=torch.float32).reshape(B)
        pipe_cls = type(teacher.parts.pipe)
        C, h, w = x_t.shape[1:]
        if h % 2 or w % 2:
            raise ValueError(f"Flux packs 2 x 2 latent patches: the latent sides must be even, got {h} x {w}")
        tokens = pipe_cls._pack_latents(x_t, B, C, h, w)
        img_ids = pipe_cls._prepare_latent_image_ids(B, h // 2, w // 2, dev, dtype)
        txt_ids = torch.zeros(embeds.shape[1], 3, device=dev, dtype=dtype)
        v = teacher.unet(hidden_states=tokens, timestep=timestep, guidance=guidance, pooled_projections=pooled,
                         encoder_hidden_states=embeds, txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        f = teacher.vae_scale_factor
        return pipe_cls._unpack_latents(v, h * f, w * f, f)
