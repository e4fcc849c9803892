"""SDXL: two CLIP text encoders (hidden states and the second's pooled embedding) and the
size/crop micro-conditions ``time_ids``, at the pipeline's defaults (no crop, both sizes the
resolution)."""
from __future__ import annotations

import torch

from ...conditioning import Conditioning
from .base import PipelineFamily, register


@register
class StableDiffusionXL(PipelineFamily):
    name = "SDXL"
    pipeline = "StableDiffusionXLPipeline"
    components = PipelineFamily.components + ("text_encoder_2", "tokenizer_2")

    def cond_dim(self, network) -> int:
        return int(network.config.cross_attention_dim)

    def encode(self, teacher, pipe, prompts, device) -> Conditioning:
        embeds, _, pooled, _ = pipe.encode_prompt(prompts, device=device, num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
        r = teacher.resolution
        time_ids = torch.tensor([[r, r, 0, 0, r, r]], dtype=torch.float32).repeat(len(prompts), 1)
        return Conditioning(embeds=embeds.float().cpu(), pooled=pooled.float().cpu(), extra={"time_ids": time_ids})

    def network_inputs(self, teacher, cond, batch, device, dtype) -> dict:
        embeds, _ = teacher.text_inputs(cond, batch, device, dtype)
        if cond.pooled is None or "time_ids" not in cond.extra:
            raise ValueError("an SDXL teacher needs pooled embeddings and time ids: cond = teacher.encode_prompt(prompts)")
        return {"encoder_hidden_states": embeds,
                "added_cond_kwargs": {"text_embeds": cond.pooled.to(device=device, dtype=dtype),
                                      "time_ids": cond.extra["time_ids"].to(device=device, dtype=dtype)}}
