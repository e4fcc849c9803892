"""Latent text-to-image teachers from diffusers pipeline folders (docs/algorithms.md section 9).

``load_pipeline_teacher(folder)`` turns a Stable Diffusion 1.x/2.x or SDXL pipeline folder into a
:class:`PipelineTeacher`: the Denoiser ``D(x, sigma, cond)`` on VAE latents in the teacher's
training scale, plus the pipeline's own prompt encoding and VAE decoding. diffusers loads the
folder and encodes prompts; only the conversion of the network's epsilon / v output to an
x0-prediction is written here (the VP form of :class:`DiffusersDenoiser`, which this class
extends with text conditioning).

The pipeline parts the denoiser does not train (tokenizer, text encoder, VAE) are shared, not
copied, by every copy of the teacher (the generator, fake network and EMA start as copies), so
a student can encode prompts and decode latents without holding three VAEs.
"""
from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..conditioning import Conditioning
from .diffusers_adapter import DiffusersDenoiser, _alphas_cumprod_from_config, _require_diffusers

__all__ = ["PipelineTeacher", "load_pipeline_teacher", "is_pipeline_folder", "SUPPORTED_PIPELINES"]

#: pipeline class (model_index.json ``_class_name``) -> the family this adapter knows
SUPPORTED_PIPELINES = {"StableDiffusionPipeline": "Stable Diffusion 1.x/2.x", "StableDiffusionXLPipeline": "SDXL"}
_REQUIRED = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_REQUIRED_XL = _REQUIRED + ("text_encoder_2", "tokenizer_2")


class _Shared:
    """Frozen pipeline parts that copies of a teacher share instead of duplicating."""

    def __init__(self, pipe):
        self.pipe = pipe

    def __deepcopy__(self, memo):
        return self


def is_pipeline_folder(path) -> bool:
    """A folder whose ``model_index.json`` names a text-to-image pipeline (any family)."""
    index = Path(path) / "model_index.json"
    if not index.is_file():
        return False
    try:
        name = json.loads(index.read_text()).get("_class_name", "")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False
    return isinstance(name, str) and name.endswith("Pipeline") and name not in ("DDPMPipeline", "DDIMPipeline")


class PipelineTeacher(DiffusersDenoiser):
    """A Stable Diffusion (1.x/2.x or XL) UNet as a latent Denoiser, with ``encode_prompt`` and ``decode``.

    ``cond`` is a :class:`~fastdistill.conditioning.Conditioning` whose ``embeds`` are the text
    encoder's hidden states (B, L, D) and whose ``null`` is classifier-free guidance's
    unconditional input: the empty prompt's encoding, or zeros where the pipeline sets
    ``force_zeros_for_empty_prompt`` (SDXL does). SDXL adds the second encoder's ``pooled``
    embedding and ``extra["time_ids"]`` (original size, crop corner, target size; the pipeline's
    defaults: no crop, both sizes the resolution). ``sigma_data`` is 1: scaled latents have
    about unit std.
    """

    latent = True  # the methods use section 9's recipe (teacher timesteps, the teacher's own objective)

    def __init__(self, pipe, alphas_cumprod, prediction_type: str, family: str, resolution: Optional[int] = None):
        unet = pipe.unet
        self.vae_scale_factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        latent_res = None if resolution is None else _latent_resolution(resolution, self.vae_scale_factor)
        super().__init__(unet, alphas_cumprod, prediction_type=prediction_type, sigma_data=1.0,
                         img_channels=int(unet.config.in_channels), img_resolution=latent_res, label_dim=0)
        self.family = family
        self.parts = _Shared(pipe)
        self.cond_dim = int(unet.config.cross_attention_dim)
        self._null: Optional[Conditioning] = None

    @property
    def resolution(self) -> int:
        """The image resolution (pixels) of the latents this teacher denoises."""
        return self.img_resolution * self.vae_scale_factor

    # -- the network call ----------------------------------------------------------------
    def network_inputs(self, cond, batch: int, device, dtype) -> dict:
        if not isinstance(cond, Conditioning) or cond.embeds is None:
            raise ValueError("a text-to-image teacher needs text conditioning: cond = teacher.encode_prompt(prompts)")
        if cond.batch_size != batch:
            raise ValueError(f"conditioning for {cond.batch_size} samples, the input has {batch}")
        if cond.embeds.shape[-1] != self.cond_dim:
            raise ValueError(f"text embeddings of width {cond.embeds.shape[-1]}, the UNet reads {self.cond_dim}")
        inputs = {"encoder_hidden_states": cond.embeds.to(device=device, dtype=dtype)}
        if self.family == "SDXL":
            if cond.pooled is None or "time_ids" not in cond.extra:
                raise ValueError("an SDXL teacher needs pooled embeddings and time ids: cond = teacher.encode_prompt(prompts)")
            inputs["added_cond_kwargs"] = {"text_embeds": cond.pooled.to(device=device, dtype=dtype),
                                           "time_ids": cond.extra["time_ids"].to(device=device, dtype=dtype)}
        return inputs

    # -- prompts and pictures ------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, prompts: Sequence[str], batch_size: int = 64) -> Conditioning:
        """The conditioning of ``prompts`` (float32, on the CPU), encoded by the pipeline's own
        ``encode_prompt``; prompts longer than the tokenizer's limit are truncated (with a warning)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("encode_prompt needs a non-empty list of strings")
        self._warn_truncation(prompts)
        if self._null is None:
            empty = self._encode([""])
            if getattr(self.parts.pipe.config, "force_zeros_for_empty_prompt", False):
                empty = Conditioning(embeds=torch.zeros_like(empty.embeds), pooled=torch.zeros_like(empty.pooled),
                                     extra=empty.extra)
            self._null = empty
        cond = Conditioning.cat([self._encode(prompts[i:i + batch_size]) for i in range(0, len(prompts), batch_size)])
        return dataclasses.replace(cond, null=self._null)

    @property
    def text_encoders(self) -> list:
        """The pipeline's text encoders (none once :meth:`release_text_encoders` ran)."""
        pipe = self.parts.pipe
        return [m for m in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if m is not None]

    @property
    def tokenizers(self) -> list:
        pipe = self.parts.pipe
        return [t for t in (pipe.tokenizer, getattr(pipe, "tokenizer_2", None)) if t is not None]

    def release_text_encoders(self) -> None:
        """Drop the text encoders (for this teacher and every copy): training needs only the
        encoded prompts. Loading the folder again brings them back."""
        pipe = self.parts.pipe
        pipe.text_encoder = None
        if hasattr(pipe, "text_encoder_2"):
            pipe.text_encoder_2 = None

    def _encode(self, prompts: list) -> Conditioning:
        pipe = self.parts.pipe
        if pipe.text_encoder is None:
            raise RuntimeError("this teacher's text encoders were released after its training prompts were encoded; "
                               "load the pipeline again (load_teacher / load_student) to encode new prompts")
        device = pipe.text_encoder.device
        if self.family != "SDXL":
            embeds, _ = pipe.encode_prompt(prompts, device, 1, False)
            return Conditioning(embeds=embeds.float().cpu())
        embeds, _, pooled, _ = pipe.encode_prompt(prompts, device=device, num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
        r = self.resolution
        time_ids = torch.tensor([[r, r, 0, 0, r, r]], dtype=torch.float32).repeat(len(prompts), 1)
        return Conditioning(embeds=embeds.float().cpu(), pooled=pooled.float().cpu(), extra={"time_ids": time_ids})

    def _warn_truncation(self, prompts: list) -> None:
        tok = self.parts.pipe.tokenizer
        limit = int(tok.model_max_length)
        lengths = [len(ids) for ids in tok(prompts, truncation=False)["input_ids"]]
        long = [i for i, n in enumerate(lengths) if n > limit]
        if long:
            warnings.warn(f"{len(long)} prompt(s) are longer than the text encoder's {limit} tokens and are truncated "
                          f"(the first: prompt {long[0]}, {lengths[long[0]]} tokens)", stacklevel=3)

    @torch.no_grad()
    def decode(self, x: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        """Images in [-1, 1] (float32, CPU) from latents ``x`` in the teacher's training scale."""
        vae = self.parts.pipe.vae
        cfg = vae.config
        shift = getattr(cfg, "shift_factor", None) or 0.0
        out = []
        for i in range(0, x.shape[0], batch_size):
            z = x[i:i + batch_size].to(vae.device, vae.dtype) / cfg.scaling_factor + shift
            out.append(vae.decode(z, return_dict=False)[0].float().clamp(-1, 1).cpu())
        return torch.cat(out) if out else torch.zeros((0, 3, self.resolution, self.resolution))

    def extra_repr(self) -> str:
        return f"family={self.family!r}, resolution={self.resolution}, " + super().extra_repr()


def _latent_resolution(resolution: int, factor: int) -> int:
    if not (isinstance(resolution, int) and resolution > 0 and resolution % factor == 0):
        raise ValueError(f"resolution {resolution!r}: this pipeline's VAE takes images whose side is a positive "
                         f"multiple of {factor} (its downsampling factor)")
    return resolution // factor


def load_pipeline_teacher(path, *, resolution: Optional[int] = None, device="cpu",
                          dtype: torch.dtype = torch.float32) -> PipelineTeacher:
    """A local diffusers pipeline folder (never from the hub) as a frozen :class:`PipelineTeacher`.

    ``resolution``: the image side in pixels (default: the UNet's ``sample_size`` times the
    VAE's factor); ``dtype``: of the frozen networks (the text encoder and VAE too).
    """
    root = Path(os.fspath(path))
    if not (root / "model_index.json").is_file():
        raise FileNotFoundError(f"{root}: not a diffusers pipeline folder (no model_index.json)")
    try:
        index = json.loads((root / "model_index.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{root}/model_index.json is not valid JSON ({exc})") from None
    name = index.get("_class_name", "?")
    if name not in SUPPORTED_PIPELINES:
        known = ", ".join(f"{k} ({v})" for k, v in SUPPORTED_PIPELINES.items())
        raise ValueError(f"{root}: a {name} is not supported as a teacher; supported pipelines: {known}")
    required = _REQUIRED_XL if SUPPORTED_PIPELINES[name] == "SDXL" else _REQUIRED
    missing = [c for c in required if not isinstance(index.get(c), list) or index.get(c)[0] is None
               or not (root / c).is_dir()]
    if missing:
        raise FileNotFoundError(f"{root}: the pipeline lacks {', '.join(missing)} (a {name} needs "
                                f"{', '.join(required)}; each a sub-folder listed in model_index.json)")
    _require_diffusers()
    import diffusers

    scfg = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    abar = _alphas_cumprod_from_config(scfg, str(root / "scheduler"))
    kw = {} if dtype == torch.float32 else {"torch_dtype": dtype}
    if name == "StableDiffusionPipeline":
        kw.update(safety_checker=None, requires_safety_checker=False)
    pipe = getattr(diffusers, name).from_pretrained(str(root), local_files_only=True, **kw)
    pipe.set_progress_bar_config(disable=True)
    teacher = PipelineTeacher(pipe, abar, scfg.get("prediction_type", "epsilon"), SUPPORTED_PIPELINES[name],
                              resolution)
    pipe.to(device)
    for part in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None), pipe.vae):
        if part is not None:
            part.eval().requires_grad_(False)
    return teacher.to(device).eval().requires_grad_(False)
