"""CLIP score: how well images follow their prompts, with a local CLIP model (transformers ``CLIPModel``).

The score of one image is the cosine between CLIP's image embedding and its prompt's text
embedding (the 0.30-ish figures SiD-LSG reports; torchmetrics' CLIPScore is 100 times this,
clipped at 0); :func:`clip_score` returns the mean and its standard error over the images.
Nothing is downloaded: ``model_dir`` is a folder written by ``save_pretrained`` (model and
processor), e.g. openai/clip-vit-large-patch14 fetched on another machine.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from .quality import EvalError

_MODELS: dict = {}


def load_clip(model_dir):
    """The CLIP model and processor in ``model_dir`` (cached per folder), offline."""
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise EvalError(f"CLIP score needs a local CLIP model folder (transformers CLIPModel and its processor, saved "
                        f"with save_pretrained; e.g. openai/clip-vit-large-patch14 fetched elsewhere): {str(path)!r} "
                        f"has no config.json. Nothing is downloaded")
    key = str(path.resolve())
    if key not in _MODELS:
        try:
            from transformers import CLIPModel, CLIPProcessor
        except ImportError as exc:
            raise EvalError("CLIP score needs transformers: pip install transformers") from exc
        try:
            model = CLIPModel.from_pretrained(str(path), local_files_only=True).eval()
            processor = CLIPProcessor.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise EvalError(f"{path}: not a CLIP model and processor folder ({exc})") from None
        _MODELS[key] = (model, processor)
    return _MODELS[key]


@torch.no_grad()
def clip_score(images: torch.Tensor, prompts: Sequence[str], model_dir, batch_size: int = 64) -> tuple[float, float]:
    """``(mean, standard error)`` of the image-prompt cosine for (N, 3, H, W) images in [-1, 1]."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise EvalError(f"CLIP score takes RGB images (N, 3, H, W), got {tuple(images.shape)}")
    if len(prompts) != images.shape[0]:
        raise EvalError(f"{images.shape[0]} images but {len(prompts)} prompts")
    model, processor = load_clip(model_dir)
    scores = []
    for i in range(0, images.shape[0], batch_size):
        img = ((images[i:i + batch_size].float().cpu() + 1) / 2).clamp(0, 1)
        inputs = processor(text=list(prompts[i:i + batch_size]), images=list(img), return_tensors="pt", padding=True,
                           truncation=True, do_rescale=False)
        out = model(**inputs)
        a = torch.nn.functional.normalize(out.image_embeds, dim=-1)
        b = torch.nn.functional.normalize(out.text_embeds, dim=-1)
        scores.append((a * b).sum(-1))
    s = torch.cat(scores).double()
    return float(s.mean()), float(s.std() / s.numel() ** 0.5) if s.numel() > 1 else 0.0
