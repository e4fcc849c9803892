"""The tiny random pipelines of tests/tiny_pipelines.py load offline and run, so other tests can rely on them."""
import hashlib
import socket

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers is an optional dependency")
transformers = pytest.importorskip("transformers", reason="transformers is an optional dependency")

from fastdistill.teachers.tokenizer import write_clip_tokenizer
from tests.tiny_pipelines import MODEL_MAX_LENGTH, WORDS, make_sd_pipeline, make_sdxl_pipeline

PROMPT = "a photo of a cat"
COMMON = ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any connection attempt fails the test: loading must need nothing but the folder.
    (HF_HUB_OFFLINE is read when huggingface_hub is imported, too late to set here.)"""
    def refuse(*args, **kwargs):
        raise AssertionError("a tiny pipeline tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _load(folder):
    return diffusers.DiffusionPipeline.from_pretrained(folder, local_files_only=True)


def _folder_bytes(folder):
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def test_tokenizer_words_and_fallback(tmp_path):
    write_clip_tokenizer(tmp_path, WORDS, MODEL_MAX_LENGTH)
    tok = transformers.CLIPTokenizer.from_pretrained(tmp_path)
    assert tok.model_max_length == MODEL_MAX_LENGTH
    for word in WORDS:
        assert tok.tokenize(word) == [word + "</w>"]
    ids = tok("qux, 42!").input_ids  # unknown words fall back to characters, never to unk
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.eos_token_id not in ids[1:-1]
    assert tok.decode(ids, skip_special_tokens=True) == "qux , 4 2 !"
    with pytest.raises(ValueError, match="lower-case and without spaces"):
        write_clip_tokenizer(tmp_path, ["two words"], MODEL_MAX_LENGTH)


@pytest.mark.parametrize("kind", ["sd", "sd-v", "sdxl"])
def test_pipeline_loads_offline_and_runs(tmp_path, kind):
    if kind == "sdxl":
        folder = make_sdxl_pipeline(tmp_path)
        expected = (*COMMON, "text_encoder_2", "tokenizer_2")
    else:
        folder = make_sd_pipeline(tmp_path, prediction_type="v_prediction" if kind == "sd-v" else "epsilon")
        expected = COMMON
    assert all((folder / name).exists() for name in expected)
    assert _folder_bytes(folder) < 2 * 2**20

    pipe = _load(folder)
    assert type(pipe).__name__ == ("StableDiffusionXLPipeline" if kind == "sdxl" else "StableDiffusionPipeline")
    assert pipe.scheduler.config.prediction_type == ("v_prediction" if kind == "sd-v" else "epsilon")
    ids = pipe.tokenizer(PROMPT).input_ids
    assert pipe.tokenizer.decode(ids, skip_special_tokens=True) == PROMPT

    run = dict(num_inference_steps=2, guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    latents = pipe(PROMPT, output_type="latent", **run).images
    assert latents.shape == (1, 4, 8, 8) and torch.isfinite(latents).all()
    run["generator"] = torch.Generator().manual_seed(0)
    images = pipe(PROMPT, output_type="np", **run).images
    assert images.shape == (1, 16, 16, 3)


def test_encode_prompt_shapes(tmp_path):
    sd = _load(make_sd_pipeline(tmp_path / "sd"))
    cond, uncond = sd.encode_prompt(PROMPT, "cpu", 1, True)
    assert cond.shape == uncond.shape == (1, MODEL_MAX_LENGTH, 16)
    xl = _load(make_sdxl_pipeline(tmp_path / "xl"))
    cond, uncond, pooled, uncond_pooled = xl.encode_prompt(PROMPT, device="cpu")
    assert cond.shape == uncond.shape == (1, MODEL_MAX_LENGTH, 32)
    assert pooled.shape == uncond_pooled.shape == (1, 16)
    assert not uncond.any()  # force_zeros_for_empty_prompt


def test_weights_follow_the_seed(tmp_path):
    def unet_digest(folder):
        return hashlib.sha256((folder / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()).hexdigest()

    a, b, c = (unet_digest(make_sd_pipeline(tmp_path / name, seed=seed)) for name, seed in [("a", 0), ("b", 0), ("c", 1)])
    assert a == b != c
