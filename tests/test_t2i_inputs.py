"""Reliability round 3, the text-to-image inputs: a run's identity covers its prompt list (item
4), and the prompt-embedding cache is verified before use and encoded again, with one line, when
it is damaged, edited, another list's, another encoder's or not finite (item 5)."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

pytest.importorskip("diffusers")  # the diffusers extra

from fastdistill.engine import Distiller  # noqa: E402
from fastdistill.methods import ConfigError  # noqa: E402
from tests.test_pipelines import _lora_config  # noqa: E402
from tests.tiny_pipelines import PROMPTS, make_sd_pipeline, write_prompt_file  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_sd_pipeline(tmp_path_factory.mktemp("sd") / "pipe")


def test_editing_the_prompt_file_between_resumes_is_another_run(tmp_path, folder):
    prompts = write_prompt_file(tmp_path / "prompts.txt")
    over = {"steps": 2, "ckpt_every": 2, "lora.rank": 0, "prompt_cache": "none"}
    Distiller(_lora_config(tmp_path / "run", folder, prompts, **over)).run()
    prompts.write_text("".join(p + "\n" for p in PROMPTS[::-1]))  # the same prompts, another order
    with pytest.raises(ConfigError, match="different run.*prompts_sha256"):
        Distiller(_lora_config(tmp_path / "run", folder, prompts, **{**over, "resume": "auto", "steps": 4}))
    prompts.write_text("".join(p + "\n" for p in PROMPTS))  # put back: the same run again
    d = Distiller(_lora_config(tmp_path / "run", folder, prompts, **{**over, "resume": "auto", "steps": 4}))
    assert d.step == 2


def _cache_file(cache):
    files = list(cache.glob("prompts-*.safetensors"))
    assert len(files) == 1
    return files[0]


def _damage(kind, path, other):
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "edited":
        t = load_file(str(path))
        t["embeds"] = t["embeds"] + 1.0
        save_file(t, str(path))  # a valid file, without the record of its checksum
    elif kind == "non-finite":
        t = load_file(str(path))
        t["embeds"][0, 0, 0] = float("nan")
        save_file(t, str(path))
    elif kind == "another list":  # another list's embeddings of the same count, under this list's name
        path.write_bytes(other.read_bytes())
    elif kind == "another width":
        t = load_file(str(path))
        t = {k: torch.cat([v, v], -1) if k.endswith("embeds") else v for k, v in t.items()}
        save_file(t, str(path))


@pytest.mark.parametrize("kind", ["truncated", "edited", "non-finite", "another list", "another width"])
def test_a_bad_prompt_cache_is_encoded_again_with_one_line(tmp_path, folder, kind, capsys):
    prompts = write_prompt_file(tmp_path / "prompts.txt")
    cache = tmp_path / "cache"
    over = {"steps": 1, "lora.rank": 0}
    reference = Distiller(_lora_config(tmp_path / "a", folder, prompts, prompt_cache=str(cache), **over))
    path = _cache_file(cache)
    other_prompts = tmp_path / "other.txt"
    other_prompts.write_text("".join(f"{p}, again\n" for p in PROMPTS))
    other_cache = tmp_path / "other-cache"
    Distiller(_lora_config(tmp_path / "o", folder, other_prompts, prompt_cache=str(other_cache), **over))
    _damage(kind, path, _cache_file(other_cache))
    capsys.readouterr()
    d = Distiller(_lora_config(tmp_path / "b", folder, prompts, prompt_cache=str(cache), **over))
    out = capsys.readouterr().out
    assert f"the prompt cache {path} is " in out and "encoding the prompts again" in out, out
    assert torch.equal(d.conditions.cond.embeds, reference.conditions.cond.embeds)
    capsys.readouterr()
    Distiller(_lora_config(tmp_path / "c", folder, prompts, prompt_cache=str(cache), **over))  # repaired
    assert "prompt embeddings from the cache" in capsys.readouterr().out
