"""Tiny random diffusers pipelines built in code and saved to a folder, for offline tests.

Tests load them back through `DiffusionPipeline.from_pretrained(folder, local_files_only=True)`,
the same path a user takes with a real model, without any hub download.

Sizes: UNet latents are 4 x `sample_size` x `sample_size` (8 x 8 by default); the VAE has two
blocks, so vae_scale_factor = 2 and images are (2 * sample_size) pixels square (16 x 16).
Tokenizers keep prompts to `MODEL_MAX_LENGTH` (16) tokens, bos and eos included.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Union

import torch

__all__ = [
    "MODEL_MAX_LENGTH",
    "VAE_SCALE_FACTOR",
    "SCALING_FACTOR",
    "WORDS",
    "clip_vocab",
    "write_clip_tokenizer",
    "make_sd_pipeline",
    "make_sdxl_pipeline",
]

PathLike = Union[str, os.PathLike]

MODEL_MAX_LENGTH = 16
VAE_SCALE_FACTOR = 2  # 2 ** (len(vae block_out_channels) - 1)
SCALING_FACTOR = 0.18215  # SD 1.x's latent scaling
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
WORDS = (
    "a", "the", "of", "photo", "cat", "dog", "digit", "handwritten",
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
)
# SD 1.x / SDXL training schedule shared by every scheduler built here.
_SCHEDULE = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
)


def _byte_chars() -> list[str]:
    """The byte-level alphabet CLIP's pre-tokenizer maps bytes to (GPT-2's): printable Latin-1 bytes
    stand for themselves, the other bytes for the characters from U+0100 on, in byte order."""
    kept = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    shifted = iter(range(0x100, 0x200))
    return [chr(b) if b in kept else chr(next(shifted)) for b in range(256)]


def clip_vocab() -> tuple[dict[str, int], list[str]]:
    """(vocab, merges) for a small CLIP BPE: CLIP's 256 byte-level characters alone and as word ends,
    so any text tokenizes (byte by byte at worst) without unknown tokens, plus `WORDS` as single tokens.

    Each word is built by a chain of merges over its prefixes (c a -> ca, ca t</w> -> cat</w>);
    bos/eos come last, as in CLIP, so pooling at the largest id and at the first eos agree.
    """
    chars = _byte_chars()
    tokens = chars + [c + "</w>" for c in chars]
    merges: list[str] = []
    for word in WORDS:
        for i in range(2, len(word) + 1):
            left, right = word[: i - 1], word[i - 1]
            if i == len(word):
                right += "</w>"
            merge, merged = f"{left} {right}", left + right
            if merge not in merges:
                merges.append(merge)
                tokens.append(merged)
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens + [BOS, EOS]))}
    return vocab, merges


def write_clip_tokenizer(folder: PathLike) -> None:
    """Write vocab.json, merges.txt and a tokenizer_config.json (model_max_length 16) to `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    config = dict(
        tokenizer_class="CLIPTokenizer", model_max_length=MODEL_MAX_LENGTH,
        bos_token=BOS, eos_token=EOS, unk_token=EOS, pad_token=EOS, do_lower_case=True,
    )
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def _tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    write_clip_tokenizer(folder)
    return CLIPTokenizer.from_pretrained(folder)


def _text_encoder(tokenizer, seed: int, with_projection: bool = False, hidden_size: int = 16):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        projection_dim=hidden_size, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=tokenizer.model_max_length, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(config).eval()


def _vae(seed: int, sample_size: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8, sample_size=sample_size * VAE_SCALE_FACTOR, scaling_factor=SCALING_FACTOR,
    ).eval()


#: UNet shapes: "tiny" (212k parameters, the tests) and "mid" (SD 1.5's block layout at a fifth of
#: its width: 4 levels, 2 layers a level, cross-attention in the first 3; about 36M parameters)
UNET_SIZES = {
    "tiny": dict(layers_per_block=1, block_out_channels=(16, 32), attention_head_dim=2,
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
    "mid": dict(layers_per_block=2, block_out_channels=(64, 128, 256, 256), attention_head_dim=8,
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
}


def _unet(seed: int, sample_size: int, cross_attention_dim: int, size: str = "tiny", **extra):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, norm_num_groups=8,
        cross_attention_dim=cross_attention_dim, **UNET_SIZES[size], **extra,
    ).eval()


def _scheduler(name: str, prediction_type: str):
    import diffusers

    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")
    classes = {
        "ddim": diffusers.DDIMScheduler, "pndm": diffusers.PNDMScheduler,
        "ddpm": diffusers.DDPMScheduler, "euler": diffusers.EulerDiscreteScheduler,
    }
    if name not in classes:
        raise ValueError(f"scheduler must be one of {sorted(classes)}, got {name!r}")
    kwargs = dict(_SCHEDULE, prediction_type=prediction_type)
    if name == "ddim":
        kwargs.update(clip_sample=False, set_alpha_to_one=False)
    elif name == "ddpm":
        kwargs.update(clip_sample=False)
    elif name == "pndm":
        kwargs.update(skip_prk_steps=True, set_alpha_to_one=False)
    elif name == "euler":
        kwargs.update(timestep_spacing="leading", interpolation_type="linear")
    return classes[name](**kwargs)


def make_sd_pipeline(
    folder: PathLike, prediction_type: str = "epsilon", seed: int = 0, sample_size: int = 8, scheduler: str = "ddim",
    size: str = "tiny",
) -> Path:
    """Save a random StableDiffusionPipeline to `folder` and return its path.

    Latents (4, sample_size, sample_size), images 2 * sample_size pixels square (16 x 16 by default);
    scheduler is "ddim", "pndm", "ddpm" or "euler", all on SD's schedule; `size`: the UNet's
    shape (:data:`UNET_SIZES`; "mid" has a 256-wide text encoder).
    """
    from diffusers import StableDiffusionPipeline

    folder = Path(folder)
    tokenizer = _tokenizer(folder / "tokenizer")
    width = 16 if size == "tiny" else 256
    pipe = StableDiffusionPipeline(
        vae=_vae(seed, sample_size), text_encoder=_text_encoder(tokenizer, seed, hidden_size=width), tokenizer=tokenizer,
        unet=_unet(seed, sample_size, cross_attention_dim=width, size=size),
        scheduler=_scheduler(scheduler, prediction_type),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def make_sdxl_pipeline(
    folder: PathLike, seed: int = 0, sample_size: int = 8, prediction_type: str = "epsilon", scheduler: str = "euler",
) -> Path:
    """Save a random StableDiffusionXLPipeline to `folder` and return its path.

    Two 16-wide text encoders (the second with a 16-d pooled projection), so the UNet's
    cross_attention_dim is 32 and its text_time embedding reads 16 + 6 * 8 = 64 inputs.
    """
    from diffusers import StableDiffusionXLPipeline

    folder = Path(folder)
    tokenizer = _tokenizer(folder / "tokenizer")
    tokenizer_2 = _tokenizer(folder / "tokenizer_2")
    text_encoder = _text_encoder(tokenizer, seed)
    text_encoder_2 = _text_encoder(tokenizer_2, seed + 1, with_projection=True)
    time_dim = 8
    unet = _unet(
        seed, sample_size,
        cross_attention_dim=text_encoder.config.hidden_size + text_encoder_2.config.hidden_size,
        addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=text_encoder_2.config.projection_dim + 6 * time_dim,
        transformer_layers_per_block=1,
    )
    pipe = StableDiffusionXLPipeline(
        vae=_vae(seed, sample_size), text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet,
        scheduler=_scheduler(scheduler, prediction_type), force_zeros_for_empty_prompt=True,
    )
    pipe.save_pretrained(folder)
    return folder


def make_clip_model(folder: PathLike, seed: int = 0, image_size: int = 16) -> Path:
    """Save a tiny random transformers CLIPModel with its processor (the tokenizer above and a
    CLIPImageProcessor for `image_size` pixels) to `folder` and return its path."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    folder = Path(folder)
    tokenizer = _tokenizer(folder / "_tokenizer")
    text = dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                  image_size=image_size, patch_size=4)
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    images = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    model.save_pretrained(folder)
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return folder
