"""Reliability round 3, the text-to-image inputs: a run's identity covers its prompt list (item
4), the prompt-embedding cache is verified before use and encoded again, with one line, when
it is damaged, edited, another list's, another encoder's or not finite (item 5), and a broken
pipeline folder is one line naming what is wrong (items 9, 10)."""
from __future__ import annotations

import json
import pickle
import re
import shutil
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

pytest.importorskip("diffusers")  # the diffusers extra

from fastdistill.engine import Distiller  # noqa: E402
from fastdistill.methods import ConfigError  # noqa: E402
from tests.test_pipelines import _lora_config  # noqa: E402
from tests.test_reliability import _Payload  # noqa: E402  (unpickling it creates a marker file)
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


def _lying_header(folder):
    """A safetensors header whose first tensor claims a terabyte of data."""
    path = folder / "unet" / "diffusion_pytorch_model.safetensors"
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    first = next(k for k in header if k != "__metadata__")
    header[first]["data_offsets"] = [0, 10**12]
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])


def _bin_pickle(folder):
    """Weights only as a pickled .bin whose unpickling would run code."""
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(_Payload(folder / "PWNED")))


BROKEN_FOLDERS = {
    "no weights": (lambda f: (f / "unet" / "diffusion_pytorch_model.safetensors").unlink(), "no file named"),
    "empty tokenizer": (lambda f: [p.unlink() for p in (f / "tokenizer").iterdir()], "tokenizer folder is empty"),
    "broken unet config": (lambda f: (f / "unet" / "config.json").write_text('{"_class_name": '), "not a valid JSON"),
    "lying safetensors header": (_lying_header, "SafetensorError"),
    "pickled .bin weights": (_bin_pickle, "UnpicklingError"),
    "invalid model_index.json": (lambda f: (f / "model_index.json").write_text("{bad"), "model_index.json is not valid JSON"),
    "broken scheduler config": (lambda f: (f / "scheduler" / "scheduler_config.json").write_text("{not json"),
                                "scheduler_config.json is not valid JSON"),
}


@pytest.mark.parametrize("case", list(BROKEN_FOLDERS))
def test_a_broken_pipeline_folder_is_one_line_naming_what_is_wrong(folder, tmp_path, case):
    """Items 9 and 10: what diffusers, transformers and safetensors raise for a broken folder (or an
    empty tokenizer folder, which used to load and then fail at the first prompt) is one user
    error that names the folder or file; an invalid model_index.json is not called an unsupported
    UNet, and the pickled .bin is refused without running."""
    from fastdistill.engine.entry import USER_ERRORS
    from fastdistill.teachers import load_teacher

    broken = tmp_path / "pipe"
    shutil.copytree(folder, broken)
    damage, message = BROKEN_FOLDERS[case]
    damage(broken)
    with pytest.raises(USER_ERRORS, match=re.escape(message)) as info:
        load_teacher(broken)
    assert str(broken) in str(info.value)
    assert not (broken / "PWNED").exists()


def test_a_broken_pipeline_folder_from_the_command_line_is_one_line(folder, tmp_path, capsys, monkeypatch):
    """The same from ``distill``: one line, rc 2, diffusers' loading bars silenced (--verbose keeps them)."""
    from fastdistill.cli import main
    from fastdistill.teachers.pipelines import VERBOSE_ENV
    from tests.test_cli_errors import _one_line_error

    broken = tmp_path / "pipe"
    shutil.copytree(folder, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    prompts = write_prompt_file(tmp_path / "prompts.txt")
    argv = ["distill", "--preset", "sid-lsg-sd15", "--teacher", str(broken), "--prompts", str(prompts),
            f"out_dir={tmp_path / 'run'}", "steps=1", "progress=false"]
    assert main(argv) == 2
    assert "could not be loaded" in _one_line_error(capsys, "distill")
    monkeypatch.setenv(VERBOSE_ENV, "0")  # restored after the test: main(--verbose) sets it for the process
    assert main([*argv, "--verbose"]) == 2
    assert "Loading pipeline components" in capsys.readouterr().err


def test_a_long_prompt_is_one_warning_line_not_a_dump(folder, capsys):
    """diffusers logs the truncated text of every prompt of the batch (a 500-word prompt gave a
    megabyte of <|endoftext|>): now one line from fastdistill per truncated prompt, with its tokens
    and the limit, and nothing from diffusers."""
    from fastdistill.teachers import load_teacher

    teacher = load_teacher(folder)
    capsys.readouterr()
    cond = teacher.encode_prompt(["a cat " * 300, "a dog"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastdistill: warning: prompt 0 ('a cat a cat") and "truncated" in lines[0]
    assert "endoftext" not in err and cond.batch_size == 2
