"""Latent text-to-image teachers from diffusers pipeline folders (docs/algorithms.md section 9).

``load_pipeline_teacher(folder)`` turns a Stable Diffusion 1.x/2.x, SDXL, PixArt-alpha/Sigma, SD3
or Flux pipeline folder into a Denoiser ``D(x, sigma, cond)`` on VAE latents in the teacher's
training scale, plus the pipeline's own prompt encoding and VAE decoding. diffusers loads the
folder and encodes prompts; only the conversion of the network's output to an x0-prediction is
written here: the discrete VP form of :class:`DiffusersDenoiser` for the UNet families and
PixArt (:class:`PipelineTeacher`), the flow-matching form of :class:`FlowMatchDenoiser` for SD3
and Flux (:class:`FlowPipelineTeacher`). What differs between families (components, prompt
encoding, the network's inputs) is the family's own file under :mod:`.families`, found by the
pipeline class the folder names.

The pipeline parts the denoiser does not train (tokenizers, text encoders, VAE) are shared, not
copied, by every copy of the teacher (the generator, fake network and EMA start as copies), so
a student can encode prompts and decode latents without holding three VAEs. The denoising
network is the ``unet`` attribute for every family (a transformer for the DiT families): the
engine casts and checkpoints ``teacher.unet``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..conditioning import Conditioning
from .diffusers_adapter import (DiffusersDenoiser, FlowMatchDenoiser, _alphas_cumprod_from_config, _require_diffusers,
                                _sample_of, read_config)
from .families import PipelineFamily, call_default, family_for, registered

__all__ = ["PipelineTeacher", "FlowPipelineTeacher", "load_pipeline_teacher", "is_pipeline_folder", "supported_pipelines"]

_ENCODER_NAMES = ("text_encoder", "text_encoder_2", "text_encoder_3")
_TOKENIZER_NAMES = ("tokenizer", "tokenizer_2", "tokenizer_3")


class _Shared:
    """Frozen pipeline parts that copies of a teacher share instead of duplicating."""

    def __init__(self, pipe):
        self.pipe = pipe

    def __deepcopy__(self, memo):
        return self


#: truncated prompts named one line each, up to this many (then a count)
TRUNCATION_LINES = 5
#: set to 1 (the CLI's --verbose) to keep diffusers' and transformers' loading bars and notices
VERBOSE_ENV = "FASTDISTILL_VERBOSE"


@contextlib.contextmanager
def quiet_libraries():
    """diffusers' and transformers' progress bars and notices off while a folder loads (they print
    for every component), unless ``$FASTDISTILL_VERBOSE`` is set; restored after."""
    if os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no", "off"):
        yield
        return
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    libraries = (diffusers_logging, transformers_logging)
    saved = [(lib, lib.get_verbosity(), lib.is_progress_bar_enabled()) for lib in libraries]
    for lib in libraries:
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, verbosity, bar in saved:
            lib.set_verbosity(verbosity)
            lib.enable_progress_bar() if bar else lib.disable_progress_bar()


def is_pipeline_folder(path) -> bool:
    """A folder whose ``model_index.json`` names a text-to-image pipeline (any family), or does not
    parse: :func:`load_pipeline_teacher` then says what is wrong with it."""
    index = Path(path) / "model_index.json"
    if not index.is_file():
        return False
    try:
        name = read_config(index).get("_class_name", "")
    except ValueError:
        return True
    return isinstance(name, str) and name.endswith("Pipeline") and name not in ("DDPMPipeline", "DDIMPipeline")


def folder_family(path) -> Optional[PipelineFamily]:
    """The family registered for the pipeline class that a folder's ``model_index.json`` names
    (None: no such file, or no family takes that class)."""
    index = Path(path) / "model_index.json"
    if not index.is_file():
        return None
    name = read_config(index).get("_class_name")
    return family_for(name) if isinstance(name, str) else None


def supported_pipelines() -> str:
    """The registered pipeline classes and their families, for messages."""
    return ", ".join(f"{k} ({v.name})" for k, v in registered().items())


class _TextToImage:
    """What every pipeline teacher adds to its denoiser: the pipeline's prompt encoding (with the
    unconditional input for guidance), its VAE decoding, and the shared frozen parts."""

    latent = True  # the methods use section 9's recipe (teacher timesteps, the teacher's own objective)

    def _init_pipeline(self, pipe, spec: PipelineFamily) -> None:
        self.spec = spec
        self.family = spec.name
        self.parts = _Shared(pipe)
        self._null: Optional[Conditioning] = None
        self.cond_dim = spec.cond_dim(self.unet)
        t5 = spec.t5_tokenizer
        #: T5's sequence length: the pipeline call's default, within the tokenizer's own limit
        self.max_sequence_length = None if t5 is None else int(
            min(call_default(pipe, "max_sequence_length"), getattr(pipe, t5).model_max_length))

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
        with quiet_libraries():  # diffusers logs the truncated text of every prompt (the padding too): said above
            return self.spec.encode(self, pipe, prompts, pipe.text_encoder.device)

    def _warn_truncation(self, prompts: list) -> None:
        pipe = self.parts.pipe
        t5 = self.spec.t5_tokenizer
        for name in _TOKENIZER_NAMES:
            tok = getattr(pipe, name, None)
            if tok is None:
                continue
            limit = self.max_sequence_length if name == t5 else int(tok.model_max_length)
            lengths = [len(ids) for ids in tok(prompts, truncation=False)["input_ids"]]
            long = [i for i, n in enumerate(lengths) if n > limit]
            for i in long[:TRUNCATION_LINES]:
                print(f"fastdistill: warning: prompt {i} ({prompts[i][:40]!r}...) has {lengths[i]} tokens, more than "
                      f"the {limit} of {name}: truncated", file=sys.stderr)
            if len(long) > TRUNCATION_LINES:
                print(f"fastdistill: warning: and {len(long) - TRUNCATION_LINES} more prompts longer than {limit} "
                      f"tokens ({name}), truncated", file=sys.stderr)
            if long:
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
    def text_inputs(self, cond, batch: int, device, dtype, *, pooled: bool = False):
        """``cond``'s embeddings (and, with ``pooled``, its pooled embedding, else None) on ``device`` /
        ``dtype``, checked against the network's widths."""
        width, pooled_width = self.cond_dim, self.pooled_dim if pooled else None
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

    def __init__(self, pipe, alphas_cumprod, prediction_type: str, spec: PipelineFamily,
                 resolution: Optional[int] = None):
        network = getattr(pipe, spec.network)
        self.vae_scale_factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        latent_res = None if resolution is None else _latent_resolution(resolution, self.vae_scale_factor)
        super().__init__(network, alphas_cumprod, prediction_type=prediction_type, sigma_data=1.0,
                         img_channels=int(network.config.in_channels), img_resolution=latent_res, label_dim=0)
        self._init_pipeline(pipe, spec)

    # -- the network call ----------------------------------------------------------------
    def network_inputs(self, cond, batch: int, device, dtype) -> dict:
        return self.spec.network_inputs(self, cond, batch, device, dtype)

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

    def __init__(self, pipe, spec: PipelineFamily, num_train_timesteps: int, resolution: Optional[int] = None):
        network = getattr(pipe, spec.network)
        self.vae_scale_factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        if resolution is None:
            resolution = spec.default_resolution(pipe, self.vae_scale_factor)
        latent_res = _latent_resolution(resolution, self.vae_scale_factor * spec.patch) * spec.patch
        T = int(num_train_timesteps)
        super().__init__(network, timestep_scale=spec.timestep_scale(T), img_channels=spec.latent_channels(network),
                         img_resolution=latent_res, num_train_timesteps=T)
        self.pooled_dim = int(network.config.pooled_projection_dim)
        #: the network's own guidance input (FLUX.1-dev; the pipeline's default); None: it has none
        self.embedded_guidance = spec.embedded_guidance(pipe)
        self._init_pipeline(pipe, spec)

    @property
    def guidance_distilled(self) -> bool:
        """Guidance is an input of the network (FLUX.1-dev), not a two-pass combination."""
        return self.embedded_guidance is not None

    def network_output(self, x_t: torch.Tensor, timestep: torch.Tensor, cond) -> torch.Tensor:
        # float32, as the pipelines pass it (1000 t in bf16 would lose its fraction)
        return self.spec.velocity(self, x_t, timestep.to(x_t.device), cond)


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


def _check_components(root: Path, spec: PipelineFamily, index: dict) -> None:
    """Refuse a folder whose denoising network is another family's, or that lacks a component."""
    required, network, name = spec.required, spec.network, spec.pipeline
    other = "transformer" if network == "unet" else "unet"
    if isinstance(index.get(other), list) and index[other][0] is not None and not isinstance(index.get(network), list):
        raise ValueError(f"{root}: a {name} is not supported with a {other} ({index[other][-1]}) in place of its "
                         f"{network}; supported pipelines: {supported_pipelines()}")
    missing = [c for c in required if not isinstance(index.get(c), list) or index.get(c)[0] is None
               or not (root / c).is_dir()]
    if missing:
        raise FileNotFoundError(f"{root}: the pipeline lacks {', '.join(missing)} (a {name} needs "
                                f"{', '.join(required)}; each a sub-folder listed in model_index.json)")
    empty = [c for c in required if not any((root / c).iterdir())]
    if empty:  # diffusers would load an empty tokenizer folder as a tokenizer that breaks on first use
        raise FileNotFoundError(f"{root}: the pipeline's {', '.join(empty)} folder is empty")


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
    index = read_config(root / "model_index.json")
    name = index.get("_class_name", "?")
    spec = family_for(name) if isinstance(name, str) else None  # folder_family, on the index read above
    if spec is None:
        raise ValueError(f"{root}: a {name} is not supported as a teacher; supported pipelines: {supported_pipelines()}")
    _check_components(root, spec, index)
    _require_diffusers()
    import diffusers

    scfg = read_config(root / "scheduler" / "scheduler_config.json")
    if spec.flow:
        if not str(scfg.get("_class_name", "")).startswith("FlowMatch"):
            raise ValueError(f"{root}: a {name} needs a flow-matching scheduler (FlowMatchEulerDiscreteScheduler), "
                             f"got {scfg.get('_class_name', '?')}")
        abar = None
    else:
        abar = _alphas_cumprod_from_config(scfg, str(root / "scheduler"))
    with quiet_libraries():
        pipe = getattr(diffusers, name).from_pretrained(str(root), local_files_only=True, **_dtype_argument(dtype),
                                                        **spec.load_kwargs())
    pipe.set_progress_bar_config(disable=True)
    if spec.flow:
        teacher = FlowPipelineTeacher(pipe, spec, scfg.get("num_train_timesteps", 1000), resolution)
    else:
        teacher = PipelineTeacher(pipe, abar, scfg.get("prediction_type", "epsilon"), spec, resolution)
    pipe.to(device)
    for part in [*teacher.text_encoders, pipe.vae]:
        part.eval().requires_grad_(False)
    return teacher.to(device).eval().requires_grad_(False)
