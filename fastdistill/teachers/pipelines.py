"""Latent text-to-image teachers from diffusers pipeline folders (docs/algorithms.md section 9).

``load_pipeline_teacher(folder)`` turns a Stable Diffusion 1.x/2.x, SDXL, PixArt-alpha/Sigma, SD3
or Flux pipeline folder into a Denoiser ``D(x, sigma, cond)`` on VAE latents in the teacher's
training scale, plus the pipeline's own prompt encoding and VAE decoding. diffusers loads the
folder and encodes prompts; only the conversion of the network's output to an x0-prediction is
written here: the discrete VP form of :class:`DiffusersDenoiser` for the UNet families and
PixArt (:class:`PipelineTeacher`), the flow-matching form of :class:`FlowMatchDenoiser` for SD3
and Flux (:class:`FlowPipelineTeacher`).

The pipeline parts the denoiser does not train (tokenizers, text encoders, VAE) are shared, not
copied, by every copy of the teacher (the generator, fake network and EMA start as copies), so
a student can encode prompts and decode latents without holding three VAEs. The denoising
network is the ``unet`` attribute for every family (a transformer for the DiT families): the
engine casts and checkpoints ``teacher.unet``.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import os
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..conditioning import Conditioning
from .diffusers_adapter import (DiffusersDenoiser, FlowMatchDenoiser, _alphas_cumprod_from_config, _require_diffusers,
                                _sample_of)

__all__ = ["PipelineTeacher", "FlowPipelineTeacher", "load_pipeline_teacher", "is_pipeline_folder",
           "SUPPORTED_PIPELINES"]

#: pipeline class (model_index.json ``_class_name``) -> the family this adapter knows
SUPPORTED_PIPELINES = {
    "StableDiffusionPipeline": "Stable Diffusion 1.x/2.x",
    "StableDiffusionXLPipeline": "SDXL",
    "PixArtAlphaPipeline": "PixArt-alpha",
    "PixArtSigmaPipeline": "PixArt-Sigma",
    "StableDiffusion3Pipeline": "SD3",
    "FluxPipeline": "Flux",
}
_UNET_FAMILIES = ("Stable Diffusion 1.x/2.x", "SDXL")
_PIXART = ("PixArt-alpha", "PixArt-Sigma")
_FLOW_FAMILIES = ("SD3", "Flux")
_COMMON = ("vae", "text_encoder", "tokenizer", "scheduler")
#: family -> the components its folder must hold (each a sub-folder listed in model_index.json)
_REQUIRED = {
    "Stable Diffusion 1.x/2.x": ("unet",) + _COMMON,
    "SDXL": ("unet",) + _COMMON + ("text_encoder_2", "tokenizer_2"),
    "PixArt-alpha": ("transformer",) + _COMMON,
    "PixArt-Sigma": ("transformer",) + _COMMON,
    "SD3": ("transformer",) + _COMMON + ("text_encoder_2", "tokenizer_2", "text_encoder_3", "tokenizer_3"),
    "Flux": ("transformer",) + _COMMON + ("text_encoder_2", "tokenizer_2"),
}
#: family -> the pipeline attribute holding its T5 tokenizer (its limit is the call's max_sequence_length)
_T5_TOKENIZER = {"PixArt-alpha": "tokenizer", "PixArt-Sigma": "tokenizer", "SD3": "tokenizer_3", "Flux": "tokenizer_2"}
_ENCODER_NAMES = ("text_encoder", "text_encoder_2", "text_encoder_3")
_TOKENIZER_NAMES = ("tokenizer", "tokenizer_2", "tokenizer_3")


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


def _call_default(pipe, name: str):
    """A default of the pipeline's own ``__call__`` (what a user of the pipeline gets)."""
    return inspect.signature(type(pipe).__call__).parameters[name].default


def _cleans_captions(pipe) -> bool:
    """PixArt's caption cleaning as its call does it: on by default, where its two libraries are
    installed (the pipeline itself turns it off, with a warning per call, where they are not)."""
    from diffusers.utils import is_bs4_available, is_ftfy_available

    return bool(_call_default(pipe, "clean_caption")) and is_bs4_available() and is_ftfy_available()


class _TextToImage:
    """What every pipeline teacher adds to its denoiser: the pipeline's prompt encoding (with the
    unconditional input for guidance), its VAE decoding, and the shared frozen parts."""

    latent = True  # the methods use section 9's recipe (teacher timesteps, the teacher's own objective)

    def _init_pipeline(self, pipe, family: str) -> None:
        self.family = family
        self.parts = _Shared(pipe)
        self._null: Optional[Conditioning] = None
        t5 = _T5_TOKENIZER.get(family)
        #: T5's sequence length: the pipeline call's default, within the tokenizer's own limit
        self.max_sequence_length = None if t5 is None else int(
            min(_call_default(pipe, "max_sequence_length"), getattr(pipe, t5).model_max_length))

    @property
    def resolution(self) -> int:
        """The image resolution (pixels) of the latents this teacher denoises."""
        return self.img_resolution * self.vae_scale_factor

    # -- prompts and pictures ------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, prompts: Sequence[str], batch_size: int = 64) -> Conditioning:
        """The conditioning of ``prompts`` (float32, on the CPU), encoded by the pipeline's own
        ``encode_prompt``; prompts longer than a tokenizer's limit are truncated (with a warning)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("encode_prompt needs a non-empty list of strings")
        self._warn_truncation(prompts)
        if self._null is None:
            empty = self._encode([""])
            if getattr(self.parts.pipe.config, "force_zeros_for_empty_prompt", False):
                empty = dataclasses.replace(empty, embeds=torch.zeros_like(empty.embeds),
                                            pooled=torch.zeros_like(empty.pooled))
            self._null = empty
        cond = Conditioning.cat([self._encode(prompts[i:i + batch_size]) for i in range(0, len(prompts), batch_size)])
        return dataclasses.replace(cond, null=self._null)

    @property
    def text_encoders(self) -> list:
        """The pipeline's text encoders (none once :meth:`release_text_encoders` ran)."""
        pipe = self.parts.pipe
        return [m for m in (getattr(pipe, n, None) for n in _ENCODER_NAMES) if m is not None]

    @property
    def tokenizers(self) -> list:
        pipe = self.parts.pipe
        return [t for t in (getattr(pipe, n, None) for n in _TOKENIZER_NAMES) if t is not None]

    def release_text_encoders(self) -> None:
        """Drop the text encoders (for this teacher and every copy): training needs only the
        encoded prompts. Loading the folder again brings them back."""
        pipe = self.parts.pipe
        for name in _ENCODER_NAMES:
            if hasattr(pipe, name):
                setattr(pipe, name, None)

    def _encode(self, prompts: list) -> Conditioning:
        pipe = self.parts.pipe
        if pipe.text_encoder is None:
            raise RuntimeError("this teacher's text encoders were released after its training prompts were encoded; "
                               "load the pipeline again (load_teacher / load_student) to encode new prompts")
        device, family = pipe.text_encoder.device, self.family
        if family == "Stable Diffusion 1.x/2.x":
            embeds, _ = pipe.encode_prompt(prompts, device, 1, False)
            return Conditioning(embeds=embeds.float().cpu())
        if family == "SDXL":
            embeds, _, pooled, _ = pipe.encode_prompt(prompts, device=device, num_images_per_prompt=1,
                                                      do_classifier_free_guidance=False)
            r = self.resolution
            time_ids = torch.tensor([[r, r, 0, 0, r, r]], dtype=torch.float32).repeat(len(prompts), 1)
            return Conditioning(embeds=embeds.float().cpu(), pooled=pooled.float().cpu(), extra={"time_ids": time_ids})
        if family in _PIXART:
            embeds, mask, _, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, device=device,
                                                    clean_caption=_cleans_captions(pipe),
                                                    max_sequence_length=self.max_sequence_length)
            extra = {}
            if self.unet.use_additional_conditions:  # PixArt-alpha's micro-conditions: (height, width), height / width
                r = float(self.resolution)
                extra = {"resolution": torch.tensor([[r, r]]).repeat(len(prompts), 1),
                         "aspect_ratio": torch.ones(len(prompts), 1)}
            return Conditioning(embeds=embeds.float().cpu(), mask=mask.cpu(), extra=extra)
        if family == "SD3":
            embeds, _, pooled, _ = pipe.encode_prompt(prompts, None, None, device=device, do_classifier_free_guidance=False,
                                                      max_sequence_length=self.max_sequence_length)
            return Conditioning(embeds=embeds.float().cpu(), pooled=pooled.float().cpu())
        embeds, pooled, _ = pipe.encode_prompt(prompts, device=device, max_sequence_length=self.max_sequence_length)
        extra = {} if self.embedded_guidance is None else {
            "guidance": torch.full((len(prompts),), self.embedded_guidance, dtype=torch.float32)}
        return Conditioning(embeds=embeds.float().cpu(), pooled=pooled.float().cpu(), extra=extra)

    def _warn_truncation(self, prompts: list) -> None:
        pipe = self.parts.pipe
        t5 = _T5_TOKENIZER.get(self.family)
        for name in _TOKENIZER_NAMES:
            tok = getattr(pipe, name, None)
            if tok is None:
                continue
            limit = self.max_sequence_length if name == t5 else int(tok.model_max_length)
            lengths = [len(ids) for ids in tok(prompts, truncation=False)["input_ids"]]
            long = [i for i, n in enumerate(lengths) if n > limit]
            if long:
                warnings.warn(f"{len(long)} prompt(s) are longer than the text encoder's {limit} tokens ({name}) and "
                              f"are truncated (the first: prompt {long[0]}, {lengths[long[0]]} tokens)", stacklevel=3)
                return

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

    # -- conditioning checks ---------------------------------------------------------------
    def _text(self, cond, batch: int, device, dtype, width: int, *, pooled_width: Optional[int] = None):
        """``cond``'s embeddings (and pooled embedding) on ``device`` / ``dtype``, checked against the network."""
        if not isinstance(cond, Conditioning) or cond.embeds is None:
            raise ValueError("a text-to-image teacher needs text conditioning: cond = teacher.encode_prompt(prompts)")
        if cond.batch_size != batch:
            raise ValueError(f"conditioning for {cond.batch_size} samples, the input has {batch}")
        if cond.embeds.shape[-1] != width:
            raise ValueError(f"text embeddings of width {cond.embeds.shape[-1]}, the {self.family} network reads {width}")
        embeds = cond.embeds.to(device=device, dtype=dtype)
        if pooled_width is None:
            return embeds, None
        if cond.pooled is None or cond.pooled.shape[-1] != pooled_width:
            got = "none" if cond.pooled is None else f"width {cond.pooled.shape[-1]}"
            raise ValueError(f"a {self.family} teacher needs pooled text embeddings of width {pooled_width} (got {got}): "
                             f"cond = teacher.encode_prompt(prompts)")
        return embeds, cond.pooled.to(device=device, dtype=dtype)

    def extra_repr(self) -> str:
        return f"family={self.family!r}, resolution={self.resolution}, " + super().extra_repr()


class PipelineTeacher(_TextToImage, DiffusersDenoiser):
    """A discrete-VP pipeline network (SD 1.x/2.x or SDXL UNet, PixArt transformer) as a latent
    Denoiser, with ``encode_prompt`` and ``decode``.

    ``cond`` is a :class:`~fastdistill.conditioning.Conditioning` whose ``embeds`` are the text
    encoder's hidden states (B, L, D) and whose ``null`` is classifier-free guidance's
    unconditional input: the empty prompt's encoding, or zeros where the pipeline sets
    ``force_zeros_for_empty_prompt`` (SDXL does). SDXL adds the second encoder's ``pooled``
    embedding and ``extra["time_ids"]`` (original size, crop corner, target size; the pipeline's
    defaults: no crop, both sizes the resolution). PixArt: T5 states with their attention
    ``mask``; a transformer that uses PixArt-alpha's micro-conditions also gets
    ``extra["resolution"]`` (height, width in pixels) and ``extra["aspect_ratio"]``. The
    learned-variance half of PixArt's output is dropped. ``sigma_data`` is 1: scaled latents have
    about unit std.
    """

    def __init__(self, pipe, alphas_cumprod, prediction_type: str, family: str, resolution: Optional[int] = None):
        network = pipe.unet if family in _UNET_FAMILIES else pipe.transformer
        self.vae_scale_factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        latent_res = None if resolution is None else _latent_resolution(resolution, self.vae_scale_factor)
        super().__init__(network, alphas_cumprod, prediction_type=prediction_type, sigma_data=1.0,
                         img_channels=int(network.config.in_channels), img_resolution=latent_res, label_dim=0)
        self._init_pipeline(pipe, family)
        self.cond_dim = int(network.config.cross_attention_dim if family in _UNET_FAMILIES
                            else network.config.caption_channels)

    # -- the network call ----------------------------------------------------------------
    def network_inputs(self, cond, batch: int, device, dtype) -> dict:
        embeds, _ = self._text(cond, batch, device, dtype, self.cond_dim)
        inputs = {"encoder_hidden_states": embeds}
        if self.family == "SDXL":
            if cond.pooled is None or "time_ids" not in cond.extra:
                raise ValueError("an SDXL teacher needs pooled embeddings and time ids: cond = teacher.encode_prompt(prompts)")
            inputs["added_cond_kwargs"] = {"text_embeds": cond.pooled.to(device=device, dtype=dtype),
                                           "time_ids": cond.extra["time_ids"].to(device=device, dtype=dtype)}
        elif self.family in _PIXART:
            if cond.mask is None:
                raise ValueError("a PixArt teacher needs the T5 attention mask: cond = teacher.encode_prompt(prompts)")
            inputs["encoder_attention_mask"] = cond.mask.to(device)
            added = {"resolution": None, "aspect_ratio": None}
            if self.unet.use_additional_conditions:
                missing = [k for k in added if k not in cond.extra]
                if missing:
                    raise ValueError(f"this PixArt-alpha transformer needs the {' and '.join(missing)} micro-conditions: "
                                     f"cond = teacher.encode_prompt(prompts)")
                added = {k: cond.extra[k].to(device=device, dtype=dtype) for k in added}
            inputs["added_cond_kwargs"] = added
        return inputs

    def network_output(self, x_vp: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        inputs = self.network_inputs(cond, x_vp.shape[0], x_vp.device, x_vp.dtype)
        return _sample_of(self.unet(x_vp, timestep=t, **inputs))


class FlowPipelineTeacher(_TextToImage, FlowMatchDenoiser):
    """An SD3 or Flux transformer (flow matching) as a latent Denoiser, with ``encode_prompt`` and ``decode``.

    SD3: ``cond.embeds`` are the CLIP-L and CLIP-G penultimate states (concatenated, padded to
    T5's width) followed by T5's states, ``cond.pooled`` both CLIP projections; the network sees
    ``1000 t``; ``null`` is the empty prompt's encoding (two-pass guidance as for SD).
    Flux: ``cond.embeds`` are T5's states, ``cond.pooled`` CLIP's pooled embedding, and, for a
    guidance-distilled transformer (``guidance_embeds``, FLUX.1-dev), ``extra["guidance"]`` is the
    network's guidance input (default: the pipeline's ``guidance_scale``, 3.5; no two-pass
    combination). The network sees ``t``. The methods see unpacked (B, 16, h, w) latents; this
    class packs them into 2 x 2 patch tokens with their position ids (image: the patch grid,
    text: zeros, as the pipeline makes them) and unpacks the velocity.
    """

    def __init__(self, pipe, family: str, num_train_timesteps: int, resolution: Optional[int] = None):
        network = pipe.transformer
        self.vae_scale_factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        cfg = network.config
        if resolution is None:  # SD3: the transformer's sample_size; Flux's transformer has none: the VAE's
            resolution = (int(cfg.sample_size) * self.vae_scale_factor if family == "SD3"
                          else int(pipe.vae.config.sample_size))
        latent_res = _latent_resolution(resolution, self.vae_scale_factor * (2 if family == "Flux" else 1))
        if family == "Flux":
            latent_res *= 2  # Flux packs 2 x 2 latent patches: the latent side must be even
        T = int(num_train_timesteps)
        super().__init__(network, timestep_scale=T if family == "SD3" else T / 1000.0,
                         img_channels=int(cfg.in_channels) // (4 if family == "Flux" else 1),
                         img_resolution=latent_res, num_train_timesteps=T)
        self._init_pipeline(pipe, family)
        self.cond_dim = int(cfg.joint_attention_dim)
        self.pooled_dim = int(cfg.pooled_projection_dim)
        guidance = family == "Flux" and bool(getattr(cfg, "guidance_embeds", False))
        #: Flux-dev's guidance input (the pipeline's default); None: the network has none
        self.embedded_guidance = float(_call_default(pipe, "guidance_scale")) if guidance else None

    @property
    def guidance_distilled(self) -> bool:
        """Guidance is an input of the network (FLUX.1-dev), not a two-pass combination."""
        return self.embedded_guidance is not None

    def network_output(self, x_t: torch.Tensor, timestep: torch.Tensor, cond) -> torch.Tensor:
        B, dev, dtype = x_t.shape[0], x_t.device, x_t.dtype
        embeds, pooled = self._text(cond, B, dev, dtype, self.cond_dim, pooled_width=self.pooled_dim)
        timestep = timestep.to(dev)  # float32, as the pipelines pass it (1000 t in bf16 would lose its fraction)
        if self.family == "SD3":
            return _sample_of(self.unet(hidden_states=x_t, timestep=timestep, encoder_hidden_states=embeds,
                                        pooled_projections=pooled, return_dict=False))
        guidance = None
        if self.guidance_distilled:
            if "guidance" not in cond.extra:
                raise ValueError("this Flux transformer is guidance-distilled: cond.extra['guidance'] must hold its "
                                 "guidance value per sample (cond = teacher.encode_prompt(prompts))")
            guidance = cond.extra["guidance"].to(device=dev, dtype=torch.float32).reshape(B)
        pipe_cls = type(self.parts.pipe)
        C, h, w = x_t.shape[1:]
        if h % 2 or w % 2:
            raise ValueError(f"Flux packs 2 x 2 latent patches: the latent sides must be even, got {h} x {w}")
        tokens = pipe_cls._pack_latents(x_t, B, C, h, w)
        img_ids = pipe_cls._prepare_latent_image_ids(B, h // 2, w // 2, dev, dtype)
        txt_ids = torch.zeros(embeds.shape[1], 3, device=dev, dtype=dtype)
        v = _sample_of(self.unet(hidden_states=tokens, timestep=timestep, guidance=guidance, pooled_projections=pooled,
                                 encoder_hidden_states=embeds, txt_ids=txt_ids, img_ids=img_ids, return_dict=False))
        f = self.vae_scale_factor
        return pipe_cls._unpack_latents(v, h * f, w * f, f)


def _latent_resolution(resolution: int, factor: int) -> int:
    if not (isinstance(resolution, int) and resolution > 0 and resolution % factor == 0):
        raise ValueError(f"resolution {resolution!r}: this pipeline's VAE takes images whose side is a positive "
                         f"multiple of {factor} (its downsampling factor)")
    return resolution // factor


def _dtype_argument(dtype: torch.dtype) -> dict:
    """``from_pretrained``'s dtype, always given: transformers otherwise keeps a checkpoint's own
    (e.g. float16) dtype. diffusers renamed the argument ``torch_dtype`` to ``dtype`` (the old
    name warns where the new one exists)."""
    from diffusers.utils import deprecation_utils

    new = hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE")
    return {"dtype" if new else "torch_dtype": dtype}


def _check_components(root: Path, name: str, family: str, index: dict) -> None:
    """Refuse a folder whose denoising network is another family's, or that lacks a component."""
    required = _REQUIRED[family]
    network = required[0]
    other = "transformer" if network == "unet" else "unet"
    if isinstance(index.get(other), list) and index[other][0] is not None and not isinstance(index.get(network), list):
        known = ", ".join(f"{k} ({v})" for k, v in SUPPORTED_PIPELINES.items())
        raise ValueError(f"{root}: a {name} is not supported with a {other} ({index[other][-1]}) in place of its "
                         f"{network}; supported pipelines: {known}")
    missing = [c for c in required if not isinstance(index.get(c), list) or index.get(c)[0] is None
               or not (root / c).is_dir()]
    if missing:
        raise FileNotFoundError(f"{root}: the pipeline lacks {', '.join(missing)} (a {name} needs "
                                f"{', '.join(required)}; each a sub-folder listed in model_index.json)")


def load_pipeline_teacher(path, *, resolution: Optional[int] = None, device="cpu",
                          dtype: torch.dtype = torch.float32):
    """A local diffusers pipeline folder (never from the hub) as a frozen :class:`PipelineTeacher`
    (discrete VP families) or :class:`FlowPipelineTeacher` (SD3, Flux).

    ``resolution``: the image side in pixels (default: the network's ``sample_size`` times the
    VAE's factor; Flux: the VAE's ``sample_size``); ``dtype``: of the frozen networks (the text
    encoders and VAE too).
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
    family = SUPPORTED_PIPELINES[name]
    _check_components(root, name, family, index)
    _require_diffusers()
    import diffusers

    scfg = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    if family in _FLOW_FAMILIES:
        if not str(scfg.get("_class_name", "")).startswith("FlowMatch"):
            raise ValueError(f"{root}: a {name} needs a flow-matching scheduler (FlowMatchEulerDiscreteScheduler), "
                             f"got {scfg.get('_class_name', '?')}")
        abar = None
    else:
        abar = _alphas_cumprod_from_config(scfg, str(root / "scheduler"))
    kw = _dtype_argument(dtype)
    if name == "StableDiffusionPipeline":
        kw.update(safety_checker=None, requires_safety_checker=False)
    pipe = getattr(diffusers, name).from_pretrained(str(root), local_files_only=True, **kw)
    pipe.set_progress_bar_config(disable=True)
    if abar is None:
        teacher = FlowPipelineTeacher(pipe, family, scfg.get("num_train_timesteps", 1000), resolution)
    else:
        teacher = PipelineTeacher(pipe, abar, scfg.get("prediction_type", "epsilon"), family, resolution)
    pipe.to(device)
    for part in [*teacher.text_encoders, pipe.vae]:
        part.eval().requires_grad_(False)
    return teacher.to(device).eval().requires_grad_(False)
