"""A latent text-to-image teacher for scikit-learn's digits, shipped as a Stable Diffusion pipeline.

``fastdistill/assets/digits_t2i/`` is a standard ``StableDiffusionPipeline`` folder, loaded by
the same path as a user's SD 1.x model (``load_teacher(folder)``; ``load_teacher("digits-t2i")``
names the shipped one). Its parts, all made here:

- images: the 8x8 digits at 16x16 RGB, each pixel a 2x2 block (:func:`digits_t2i_images`), in [-1, 1];
- VAE: an ``AutoencoderKL`` (blocks 32, 64; factor 2) trained here on those images, latents
  4x8x8, ``scaling_factor`` = 1 / std of the training latents (unit-std latents, as SD's);
- tokenizer: a CLIP BPE written here (``tokenizer.py``) with every template word one token;
- text encoder: a ``CLIPTextModel`` of width 64 with no transformer layers and zero position
  embeddings, left at its seeded random initialisation: each token's state is its own
  (layer-normed) random embedding whatever the sentence around it, so a UNet that learns to
  read the digit word reads it in templates it never saw (the held-out templates test that;
  an encoder with layers mixes the sentence into every token);
- UNet: a ``UNet2DConditionModel`` (blocks 32, 64, cross-attention in both, about 1.1 M
  parameters), epsilon prediction on SD's ``scaled_linear`` schedule (1000 steps), trained on
  prompts from :data:`~fastdistill.data.digit_prompts.TRAIN_TEMPLATES` with the empty prompt in
  place of the text at rate ``uncond_rate`` (so classifier-free guidance works), with an EMA;
- scheduler: ``DDIMScheduler`` on that schedule.

Reproduce the shipped folder (both threads of a 2-core machine; the time is in its
``fastdistill_training.json``)::

    fastdistill train-teacher --preset digits-t2i --out fastdistill/assets/digits_t2i
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Optional, Union

import torch

__all__ = ["DigitsT2IConfig", "train_digits_t2i", "digits_t2i_path", "digits_t2i_images", "write_prompt_files",
           "SHIPPED_NAME", "TRAINING_RECORD", "PROMPT_FILES"]

SHIPPED_NAME = "digits_t2i"
TRAINING_RECORD = "fastdistill_training.json"
#: the prompt lists shipped in the folder (one prompt a line): training and held-out templates
PROMPT_FILES = {"train": "prompts_train.txt", "heldout": "prompts_heldout.txt"}
MODEL_MAX_LENGTH = 16
_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 steps_offset=1)


@dataclass
class DigitsT2IConfig:
    """Settings of ``train-teacher --preset digits-t2i`` (the defaults made the shipped folder)."""

    resolution: int = 16
    vae_steps: int = 1500
    vae_batch_size: int = 64
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    unet_steps: int = 3000
    unet_batch_size: int = 128
    unet_lr: float = 3e-4
    unet_warmup: int = 100
    uncond_rate: float = 0.1
    ema_halflife_fraction: float = 0.05  # of all samples seen, as EDM's
    text_width: int = 64
    seed: int = 0
    weights_dtype: str = "float16"  # storage of the UNet and VAE (diffusers loads them as float32); the text encoder is float32


def digits_t2i_path() -> Path:
    """The shipped pipeline folder."""
    return Path(str(resources.files("fastdistill") / "assets" / SHIPPED_NAME))


def digits_t2i_images(resolution: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """The digits as the teacher's images: (1797, 3, r, r) in [-1, 1], and their labels. Each
    pixel becomes an (r/8)x(r/8) block, so averaging the blocks (what the digits classifier does
    to read an image) gives back the 8x8 digit exactly: FIDs stay comparable to the 8x8 teachers'."""
    from ..data.images import digits

    if resolution % 8 or resolution < 8:
        raise ValueError(f"resolution must be a multiple of 8, got {resolution}")
    data = digits()
    k = resolution // 8
    x = data.data.repeat_interleave(k, -2).repeat_interleave(k, -1)
    return x.repeat(1, 3, 1, 1), data.labels


def write_prompt_files(folder: Union[str, os.PathLike]) -> dict:
    """Write the training and held-out prompts (every template, every digit) into ``folder``."""
    from ..data.digit_prompts import HELDOUT_TEMPLATES, TRAIN_TEMPLATES, digit_prompts

    paths = {}
    for split, templates in (("train", TRAIN_TEMPLATES), ("heldout", HELDOUT_TEMPLATES)):
        paths[split] = Path(folder) / PROMPT_FILES[split]
        paths[split].write_text("".join(p + "\n" for p, _ in digit_prompts(templates)), encoding="utf-8")
    return paths


def _build_parts(cfg: DigitsT2IConfig, tokenizer_dir: Path):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from ..data.digit_prompts import prompt_words
    from .tokenizer import write_clip_tokenizer

    write_clip_tokenizer(tokenizer_dir, prompt_words(), MODEL_MAX_LENGTH)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    w = cfg.text_width
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=w, intermediate_size=2 * w, projection_dim=w, num_hidden_layers=0,
            num_attention_heads=4, max_position_embeddings=MODEL_MAX_LENGTH, pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)).eval()
        text_encoder.embeddings.position_embedding.weight.data.zero_()
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64), layers_per_block=1,
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
            norm_num_groups=8, sample_size=cfg.resolution)
        unet = UNet2DConditionModel(
            sample_size=cfg.resolution // 2, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D",) * 2,
            up_block_types=("CrossAttnUpBlock2D",) * 2, cross_attention_dim=w, norm_num_groups=8,
            attention_head_dim=8)
    scheduler = DDIMScheduler(**_SCHEDULE, prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False)
    return tokenizer, text_encoder.requires_grad_(False), vae, unet, scheduler


class _LossLog:
    """Each step's loss, shown on a progress bar (with ``progress``) as the mean of the last 25."""

    def __init__(self, total: int, desc: str, name: str, fmt: str, progress: bool):
        self.losses, self.name, self.fmt = [], name, fmt
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True)

    def add(self, loss: float) -> None:
        self.losses.append(loss)
        if self.bar is not None:
            self.bar.update()
            if len(self.losses) % 25 == 1:
                recent = self.losses[-25:]
                self.bar.set_postfix({self.name: format(sum(recent) / len(recent), self.fmt)})

    def close(self) -> list:
        if self.bar is not None:
            self.bar.close()
        return self.losses


def _train_vae(vae, images: torch.Tensor, cfg: DigitsT2IConfig, g: torch.Generator, progress: bool) -> list:
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.vae_lr)
    vae.train()
    log = _LossLog(cfg.vae_steps, "train VAE", "mse", ".2e", progress)
    for _ in range(cfg.vae_steps):
        x = images[torch.randint(0, images.shape[0], (cfg.vae_batch_size,), generator=g)]
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        rec = vae.decode(z).sample
        mse = (rec - x).pow(2).mean()
        kl = post.kl().mean()
        loss = mse + cfg.vae_kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log.add(float(mse.detach()))
    return log.close()


def _train_unet(unet, latents, labels, embeds, prompt_digits, null, abar, cfg, g, progress):
    """epsilon-prediction training; returns (EMA UNet, losses)."""
    from .toolkit import ema_beta, ema_update, lr_factor

    by_digit = [torch.nonzero(prompt_digits == d).flatten() for d in range(10)]
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.unet_lr)
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    unet.train()
    B = cfg.unet_batch_size
    halflife = cfg.ema_halflife_fraction * cfg.unet_steps * B
    log = _LossLog(cfg.unet_steps, "train UNet", "loss", ".4f", progress)
    for step in range(cfg.unet_steps):
        for group in opt.param_groups:
            group["lr"] = cfg.unet_lr * lr_factor(step, cfg.unet_steps, cfg.unet_warmup, "cosine")
        idx = torch.randint(0, latents.shape[0], (B,), generator=g)
        z0 = latents[idx]
        which = torch.stack([by_digit[int(d)][torch.randint(0, len(by_digit[int(d)]), (1,), generator=g)]
                             for d in labels[idx]]).flatten()
        text = embeds[which].clone()
        drop = torch.rand(B, generator=g) < cfg.uncond_rate
        text[drop] = null
        t = torch.randint(0, abar.numel(), (B,), generator=g)
        eps = torch.randn(z0.shape, generator=g)
        a = abar[t].reshape(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * eps
        loss = (unet(zt, t, encoder_hidden_states=text).sample - eps).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen = (step + 1) * B
        ema_update(ema, unet, ema_beta(B, seen, halflife, 0.05))
        log.add(float(loss.detach()))
    return ema, log.close()


def _train_into(work: Path, cfg: DigitsT2IConfig, progress: bool) -> None:
    """Everything into the folder ``work``."""
    from diffusers import StableDiffusionPipeline

    from ..data.digit_prompts import TRAIN_TEMPLATES, digit_prompts

    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(cfg.seed)
    tokenizer, text_encoder, vae, unet, scheduler = _build_parts(cfg, work / "tokenizer")
    images, labels = digits_t2i_images(cfg.resolution)

    vae_losses = _train_vae(vae, images, cfg, g, progress)
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        post = vae.encode(images).latent_dist
        raw = post.mean
        recon_mse = float((vae.decode(raw).sample - images).pow(2).mean())
    scaling = float(1.0 / raw.std())
    vae.register_to_config(scaling_factor=scaling)
    latents = raw * scaling
    t_vae = time.perf_counter() - t0

    pairs = digit_prompts(TRAIN_TEMPLATES)
    with torch.no_grad():
        ids = tokenizer([p for p, _ in pairs] + [""], padding="max_length", max_length=MODEL_MAX_LENGTH,
                        truncation=True, return_tensors="pt").input_ids
        states = text_encoder(ids)[0]
    embeds, null = states[:-1], states[-1]
    prompt_digits = torch.tensor([d for _, d in pairs])
    # SD's scaled_linear schedule, computed in float64 (the scheduler's own copy is float32)
    abar = torch.cumprod(1 - torch.linspace(_SCHEDULE["beta_start"] ** 0.5, _SCHEDULE["beta_end"] ** 0.5,
                                            _SCHEDULE["num_train_timesteps"], dtype=torch.float64) ** 2, 0).float()
    ema, unet_losses = _train_unet(unet, latents, labels, embeds, prompt_digits, null, abar, cfg, g, progress)
    seconds = time.perf_counter() - t0

    dtype = torch.float16 if cfg.weights_dtype == "float16" else torch.float32
    # the text encoder stays fp32: transformers loads a model in its stored dtype while diffusers loads the
    # UNet and VAE in fp32 whatever they are stored in, and plain diffusers must run the folder as it is
    pipe = StableDiffusionPipeline(vae=vae.to(dtype), text_encoder=text_encoder.float(), tokenizer=tokenizer,
                                   unet=ema.to(dtype), scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(work, safe_serialization=True)
    tail = max(1, len(unet_losses) // 10)
    record = dict(config=asdict(cfg), train_seconds=round(seconds, 1), vae_seconds=round(t_vae, 1),
                  threads=torch.get_num_threads(), vae_recon_mse=recon_mse, latent_scaling_factor=scaling,
                  vae_final_mse=sum(vae_losses[-tail:]) / tail, unet_final_loss=sum(unet_losses[-tail:]) / tail,
                  unet_parameters=sum(p.numel() for p in ema.parameters()),
                  vae_parameters=sum(p.numel() for p in vae.parameters()),
                  text_encoder_parameters=sum(p.numel() for p in text_encoder.parameters()),
                  command="fastdistill train-teacher --preset digits-t2i")
    (work / TRAINING_RECORD).write_text(json.dumps(record, indent=1) + "\n")
    write_prompt_files(work)


def train_digits_t2i(out_dir: Union[str, os.PathLike], cfg: Optional[DigitsT2IConfig] = None, *,
                     progress: bool = True) -> Path:
    """Train the VAE, then the UNet, and write the pipeline folder ``out_dir`` (replaced whole
    only once everything is trained: an interrupted run leaves the old folder as it was)."""
    try:
        import diffusers  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise ImportError("the digits text-to-image teacher needs diffusers and transformers: "
                          "pip install 'fastdistill[diffusers]'") from exc
    cfg = cfg or DigitsT2IConfig()
    if cfg.resolution % 16:
        raise ValueError(f"resolution must be a multiple of 16 (8x8 digits, VAE factor 2), got {cfg.resolution}")
    if cfg.weights_dtype not in ("float16", "float32"):
        raise ValueError(f"weights_dtype must be float16 or float32, got {cfg.weights_dtype!r}")
    out_dir = Path(out_dir)
    work = out_dir.with_name(f".tmp-{out_dir.name}-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    try:
        _train_into(work, cfg, progress)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if out_dir.exists():
        old = out_dir.with_name(f".old-{out_dir.name}-{os.getpid()}")
        out_dir.rename(old)
        work.rename(out_dir)
        shutil.rmtree(old)
    else:
        work.rename(out_dir)
    return out_dir
