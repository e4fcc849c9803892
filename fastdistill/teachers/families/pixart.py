"""PixArt-alpha and PixArt-Sigma: T5 states with their attention mask and a DiT on a discrete VP
schedule (the learned-variance half of its output is dropped by the adapter). A transformer
that uses PixArt-alpha's micro-conditions also gets ``extra["resolution"]`` (height, width in
pixels) and ``extra["aspect_ratio"]``."""
from __future__ import annotations

import torch

from ...conditioning import Conditioning
from .base import PipelineFamily, call_default, register


def _cleans_captions(pipe) -> bool:
    """PixArt's caption cleaning as its call does it: on by default, where its two libraries are
    installed (the pipeline itself turns it off, with a warning per call, where they are not)."""
    from diffusers.utils import is_bs4_available, is_ftfy_available

    return bool(call_default(pipe, "clean_caption")) and is_bs4_available() and is_ftfy_available()


@register
class PixArtAlpha(PipelineFamily):
    name = "PixArt-alpha"
    pipeline = "PixArtAlphaPipeline"
    network = "transformer"
    t5_tokenizer = "tokenizer"
    # the call would generate at the nearest size of its aspect-ratio table and resize to the one asked for
    one_step_call = {"use_resolution_binning": False}

    def cond_dim(self, network) -> int:
        return int(network.config.caption_channels)

    def encode(self, teacher, pipe, prompts, device) -> Conditioning:
        embeds, mask, _, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, device=device,
                                                clean_caption=_cleans_captions(pipe),
                                                max_sequence_length=teacher.max_sequence_length)
        extra = {}
        if teacher.unet.use_additional_conditions:
            r = float(teacher.resolution)
            extra = {"resolution": torch.tensor([[r, r]]).repeat(len(prompts), 1),
                     "aspect_ratio": torch.ones(len(prompts), 1)}
        return Conditioning(embeds=embeds.float().cpu(), mask=mask.cpu(), extra=extra)

    def network_inputs(self, teacher, cond, batch, device, dtype) -> dict:
        embeds, _ = teacher.text_inputs(cond, batch, device, dtype)
        if cond.mask is None:
            raise ValueError("a PixArt teacher needs the T5 attention mask: cond = teacher.encode_prompt(prompts)")
        added = {"resolution": None, "aspect_ratio": None}
        if teacher.unet.use_additional_conditions:
            missing = [k for k in added if k not in cond.extra]
            if missing:
                raise ValueError(f"this PixArt-alpha transformer needs the {' and '.join(missing)} micro-conditions: "
                                 f"cond = teacher.encode_prompt(prompts)")
            added = {k: cond.extra[k].to(device=device, dtype=dtype) for k in added}
        return {"encoder_hidden_states": embeds, "encoder_attention_mask": cond.mask.to(device),
                "added_cond_kwargs": added}


@register
class PixArtSigma(PixArtAlpha):
    name = "PixArt-Sigma"
    pipeline = "PixArtSigmaPipeline"
