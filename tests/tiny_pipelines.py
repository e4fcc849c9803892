"""Tiny random diffusers pipelines built in code and saved to a folder, for offline tests.

Tests load them back through `DiffusionPipeline.from_pretrained(folder, local_files_only=True)`,
the same path a user takes with a real model, without any hub download.

Sizes: UNet latents are 4 x `sample_size` x `sample_size` (8 x 8 by default); the VAE has two
blocks, so vae_scale_factor = 2 and images are (2 * sample_size) pixels square (16 x 16).
Tokenizers keep prompts to `MODEL_MAX_LENGTH` (16) tokens, bos and eos included.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import torch

from fastdistill.teachers.tokenizer import write_clip_tokenizer

__all__ = [
    "MODEL_MAX_LENGTH",
    "VAE_SCALE_FACTOR",
    "SCALING_FACTOR",
    "WORDS",
    "make_sd_pipeline",
    "make_sdxl_pipeline",
    "make_pixart_pipeline",
    "make_sd3_pipeline",
    "make_flux_pipeline",
    "PROMPTS",
    "write_prompt_file",
    "open_pipeline",
    "run_export_snippet",
]

PathLike = Union[str, os.PathLike]

MODEL_MAX_LENGTH = 16
VAE_SCALE_FACTOR = 2  # 2 ** (len(vae block_out_channels) - 1)
SCALING_FACTOR = 0.18215  # SD 1.x's latent scaling
WORDS = (
    "a", "the", "of", "photo", "cat", "dog", "digit", "handwritten",
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
)
# SD 1.x / SDXL training schedule shared by every scheduler built here.
#: prompts within WORDS: every tiny pipeline's tokenizer reads them without unknown words
PROMPTS = ["a photo of a cat", "the digit seven", "a dog", "a handwritten three"]


def write_prompt_file(path: PathLike) -> Path:
    """:data:`PROMPTS`, one per line, as ``--prompts`` reads them."""
    path = Path(path)
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


def open_pipeline(folder: PathLike, **kwargs):
    """The folder as diffusers itself loads it (local files only, no progress bars)."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(folder), local_files_only=True, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


_SCHEDULE = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
)


def _tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    write_clip_tokenizer(folder, WORDS, MODEL_MAX_LENGTH)
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


#: UNet shapes: "tiny" (212k parameters, the tests), "mid" (SD 1.5's block layout at a fifth of
#: its width: 4 levels, 2 layers a level, cross-attention in the first 3; about 36M parameters) and
#: "large" (the same at a fifth less than SD 1.5's 320-1280 widths; about 140M parameters)
UNET_SIZES = {
    "tiny": dict(layers_per_block=1, block_out_channels=(16, 32), attention_head_dim=2,
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
    "mid": dict(layers_per_block=2, block_out_channels=(64, 128, 256, 256), attention_head_dim=8,
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
    "large": dict(layers_per_block=2, block_out_channels=(128, 256, 512, 512), attention_head_dim=8,
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
        "euler_ancestral": diffusers.EulerAncestralDiscreteScheduler, "dpm": diffusers.DPMSolverMultistepScheduler,
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
    elif name == "euler_ancestral":
        kwargs.update(timestep_spacing="leading")
    return classes[name](**kwargs)


def make_sd_pipeline(
    folder: PathLike, prediction_type: str = "epsilon", seed: int = 0, sample_size: int = 8, scheduler: str = "ddim",
    size: str = "tiny",
) -> Path:
    """Save a random StableDiffusionPipeline to `folder` and return its path.

    Latents (4, sample_size, sample_size), images 2 * sample_size pixels square (16 x 16 by default);
    scheduler is "ddim", "pndm", "ddpm", "euler", "euler_ancestral" or "dpm", all on SD's schedule; `size`: the UNet's
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


# ---------------------------------------------------------------------- transformer (DiT) families
def _t5_tokenizer(folder: Path):
    """A word-level T5-style tokenizer (pad 0, eos 1, unk 2; eos appended, as T5's is) built with the
    `tokenizers` library and wrapped as a transformers fast tokenizer: no sentencepiece model needed."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(("<pad>", "</s>", "<unk>") + WORDS))}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                                      model_max_length=MODEL_MAX_LENGTH)
    wrapped.save_pretrained(folder)
    return PreTrainedTokenizerFast.from_pretrained(folder)


def _t5_encoder(tokenizer, seed: int, width: int):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(vocab_size=len(tokenizer), d_model=width, d_kv=8, d_ff=2 * width, num_layers=2, num_heads=2,
                      relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id)
    return T5EncoderModel(config).eval()


def _latent_vae(seed: int, sample_size: int, latent_channels: int, scaling_factor: float, shift_factor=None):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(8, 16),
        layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8, sample_size=sample_size * VAE_SCALE_FACTOR, scaling_factor=scaling_factor,
        shift_factor=shift_factor,
    ).eval()


def make_pixart_pipeline(folder: PathLike, sigma: bool = False, additional_conditions: bool = True, seed: int = 0,
                         sample_size: int = 8) -> Path:
    """Save a random PixArtAlphaPipeline (``sigma``: PixArtSigmaPipeline) to `folder` and return its path.

    A 2-layer, 24-wide (a multiple of 3, for the micro-condition embeddings) PixArtTransformer2DModel
    on 4 x `sample_size` x `sample_size` latents with a
    learned-variance output (8 channels), a 16-wide T5 encoder and a DDIM scheduler on SD's
    schedule; `additional_conditions`: PixArt-alpha's resolution / aspect-ratio inputs (the
    1024-pixel models have them; the Sigma pipeline never passes them).
    """
    import diffusers

    folder = Path(folder)
    tokenizer = _t5_tokenizer(folder / "tokenizer")
    torch.manual_seed(seed)
    transformer = diffusers.PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=8, num_layers=2,
        cross_attention_dim=24, caption_channels=16, sample_size=sample_size, patch_size=2,
        use_additional_conditions=additional_conditions and not sigma,
    ).eval()
    cls = diffusers.PixArtSigmaPipeline if sigma else diffusers.PixArtAlphaPipeline
    pipe = cls(tokenizer=tokenizer, text_encoder=_t5_encoder(tokenizer, seed, 16), vae=_vae(seed, sample_size),
               transformer=transformer, scheduler=_scheduler("ddim", "epsilon"))
    pipe.save_pretrained(folder)
    return folder


def _flow_scheduler(**kwargs):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, **kwargs)


def make_sd3_pipeline(folder: PathLike, seed: int = 0, sample_size: int = 8) -> Path:
    """Save a random StableDiffusion3Pipeline to `folder` and return its path.

    Two 16-wide CLIP encoders with projections (pooled 16 + 16 = 32), a 32-wide T5 encoder, a
    1-layer SD3Transformer2DModel on 16 x `sample_size` x `sample_size` latents, a VAE with SD3's
    scaling and shift factors and a flow-matching Euler scheduler (shift 3).
    """
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    folder = Path(folder)
    tokenizer, tokenizer_2 = _tokenizer(folder / "tokenizer"), _tokenizer(folder / "tokenizer_2")
    tokenizer_3 = _t5_tokenizer(folder / "tokenizer_3")
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=sample_size, patch_size=2, in_channels=16, num_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=32,
        out_channels=16, pos_embed_max_size=sample_size,
    ).eval()
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=_flow_scheduler(),
        vae=_latent_vae(seed, sample_size, 16, scaling_factor=1.5305, shift_factor=0.0609),
        text_encoder=_text_encoder(tokenizer, seed, with_projection=True), tokenizer=tokenizer,
        text_encoder_2=_text_encoder(tokenizer_2, seed + 1, with_projection=True), tokenizer_2=tokenizer_2,
        text_encoder_3=_t5_encoder(tokenizer_3, seed + 2, 32), tokenizer_3=tokenizer_3,
    )
    pipe.save_pretrained(folder)
    return folder


def make_flux_pipeline(folder: PathLike, guidance_embeds: bool = True, seed: int = 0, sample_size: int = 8) -> Path:
    """Save a random FluxPipeline to `folder` and return its path.

    A 16-wide CLIP encoder (its pooled output), a 32-wide T5 encoder, a one double- and one
    single-stream FluxTransformer2DModel reading 2 x 2 patches of 16-channel latents (64 inputs);
    `guidance_embeds`: FLUX.1-dev's embedded guidance input (False: schnell-style). The scheduler
    shifts its timesteps with the image size, as FLUX.1's does. Images are 2 * `sample_size`
    pixels square, the VAE's sample_size (the adapter's default resolution for Flux).
    """
    from diffusers import FluxPipeline, FluxTransformer2DModel

    folder = Path(folder)
    tokenizer, tokenizer_2 = _tokenizer(folder / "tokenizer"), _t5_tokenizer(folder / "tokenizer_2")
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 6, 6),
    ).eval()
    scheduler = _flow_scheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=16,
                                max_image_seq_len=256)
    pipe = FluxPipeline(
        transformer=transformer, scheduler=scheduler,
        vae=_latent_vae(seed, sample_size, 16, scaling_factor=0.3611, shift_factor=0.1159),
        text_encoder=_text_encoder(tokenizer, seed), tokenizer=tokenizer,
        text_encoder_2=_t5_encoder(tokenizer_2, seed + 1, 32), tokenizer_2=tokenizer_2,
    )
    pipe.save_pretrained(folder)
    return folder


#: runs an export's one-step snippet from inside the folder in a process without fastdistill
#: (argv: z.pt, prompts.json, images.npy)
_SNIPPET_RUNNER = """
import json, sys
import numpy as np, torch
z, prompts, seed = torch.load(sys.argv[1]), json.load(open(sys.argv[2])), int(sys.argv[4])
CODE
np.save(sys.argv[3], images)
assert "fastdistill" not in sys.modules
"""


def run_export_snippet(folder: PathLike, prompts: list, z: torch.Tensor, tmp_path: PathLike, adapter: bool = False,
                       scale_latents: bool = True, latents: bool = True, seed: int = 0) -> torch.Tensor:
    """What the snippet of an exported folder's README.md makes (``z``, or for a few-step student
    ``seed``), run as a user would, inside
    ``folder``: with ``latents`` the sample before the VAE (``output_type="latent"``: a tiny random VAE
    hardly depends on its input; unpacked from patch tokens where the pipeline packs them), else the
    images. ``adapter``: the LoRA adapters loaded first; ``scale_latents=False``: ``z`` as the
    latents, unscaled (a wrong input, to show the comparison can fail)."""
    import json
    import re
    import subprocess
    import sys

    import numpy as np

    readme = (Path(folder) / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    if adapter:
        code = code.replace('from_pretrained(".")\n', 'from_pretrained(".")\npipe.load_lora_weights(".")\n')
    if not scale_latents:
        code = re.sub(r'\(?student\["(latent_scale|t_init)"\] \* z\)?', "z", code, count=1)
    if latents:
        code = code.replace('output_type="np"', 'output_type="latent"')
    tmp_path = Path(tmp_path)
    torch.save(z, tmp_path / "z.pt")
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    proc = subprocess.run([sys.executable, "-c", _SNIPPET_RUNNER.replace("CODE", code), str(tmp_path / "z.pt"),
                           str(tmp_path / "prompts.json"), str(tmp_path / "images.npy"), str(seed)],
                          cwd=folder, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = torch.from_numpy(np.load(tmp_path / "images.npy"))
    if latents and out.ndim == 3:  # patch tokens (B, h w / p^2, C p^2) back to (B, C, h, w)
        B, C, h, w = z.shape
        p = int(round((out.shape[-1] / C) ** 0.5))
        out = out.view(B, h // p, w // p, C, p, p).permute(0, 3, 1, 4, 2, 5).reshape(B, C, h, w)
    return out
