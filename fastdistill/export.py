"""Export a text-to-image student as a diffusers pipeline folder that ``from_pretrained`` loads.

The folder is the teacher's pipeline with the student's denoising network (``unet/``, or
``transformer/`` for PixArt, SD3 and Flux): its LoRA adapters merged into the weights
(``lora="merge"``), or the teacher's network untouched plus the adapters in diffusers' LoRA format
(``lora="adapter"``, loaded with ``pipe.load_lora_weights(folder)``). Its
``fastdistill_student.json`` and ``README.md`` say how to generate in one step, or in the K steps
of a few-step student (docs/algorithms.md sections 9 and 10). One-step Stable Diffusion
1.x/2.x and SDXL students run with the pipeline's own call in diffusers alone: the export's
scheduler is a DDPMScheduler, whose one step at ``timesteps=[t_init]`` ends at the sample, and the
latents are ``sqrt(1 - abar[t_init]) z``; :data:`ONE_STEP_SNIPPET` is that code (the tests run it). Every family,
LoRA merged, loads back with ``fastdistill.load_student(folder)`` (so ``fastdistill sample``). The
folder is written beside its destination and renamed into place, so an interrupted export leaves
nothing half-written.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import torch

from .engine.lora import has_lora
from .teachers.loading import teacher_location
from .teachers.traits import traits

__all__ = ["export_student", "ONE_STEP_SNIPPET", "FASTDISTILL_SNIPPET", "LORA_MODES", "STUDENT_FILE"]

#: the file that marks an exported folder and holds its student record
STUDENT_FILE = "fastdistill_student.json"

LORA_MODES = ("merge", "adapter")

#: one-step generation with an exported Stable Diffusion 1.x/2.x or SDXL folder through the
#: pipeline's own call, in diffusers alone, run from inside the folder (``prompts``; ``z``: (B, 4,
#: h, w) standard normal latents); ``images`` in [0, 1], (B, H, W, 3). The export's scheduler is a
#: DDPMScheduler: its one step at the student's timestep ends at the predicted sample itself.
ONE_STEP_SNIPPET = '''\
import json
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained(".")
student = json.load(open("fastdistill_student.json"))  # t_init and latent_scale = sqrt(1 - alphas_cumprod[t_init])
images = pipe(prompts, timesteps=[student["t_init"]], guidance_scale=1.0, latents=student["latent_scale"] * z,
              output_type="np").images
'''

#: generation (in the student's trained steps) with any exported folder (LoRA merged) through fastdistill; ``images`` in [-1, 1]
FASTDISTILL_SNIPPET = '''\
from fastdistill import load_student
student = load_student(folder)
images = student.decode(student.sample(len(prompts), seed=0, cond=prompts))
'''


def _write_one_step_scheduler(folder: Path) -> None:
    """The export's scheduler: the teacher's schedule as a DDPMScheduler, which takes custom
    timesteps and whose last step ends at the predicted sample (its variance there is 0), so
    ``pipe(prompt, timesteps=[t_init], guidance_scale=1, latents=...)`` is the student, whatever
    scheduler class the teacher's folder shipped (DDIM, PNDM, Euler, DPM-Solver, ...)."""
    from diffusers import DDPMScheduler

    source = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    scheduler = DDPMScheduler.from_config(source, clip_sample=False, thresholding=False)
    shutil.rmtree(folder / "scheduler")
    scheduler.save_pretrained(str(folder / "scheduler"))
    index = json.loads((folder / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "DDPMScheduler"]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def _merged_unet(unet: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``unet`` with every LoRA layer merged into its base layer and replaced by it."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    unet = copy.deepcopy(unet)
    for name, module in list(unet.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(unet.get_submodule(parent_name) if parent_name else unet, child, module.get_base_layer())
    for attr in ("peft_config", "_hf_peft_config_loaded"):
        if attr in unet.__dict__:
            delattr(unet, attr)
    return unet


def export_student(student, out, lora: str = "merge") -> Path:
    """Write ``student`` (a text-to-image :class:`~fastdistill.student.Student`) to the new folder ``out``."""
    if lora not in LORA_MODES:
        raise ValueError(f"lora must be one of {LORA_MODES}, got {lora!r}")
    net = student.net
    if not traits(net).family or student.info.cond_kind != "text":
        raise ValueError("export to a diffusers folder is for text-to-image students; a pixel student's export "
                         "is the run's student.safetensors")
    source = Path(teacher_location(student.info.teacher or ""))
    if not (source / "model_index.json").is_file():
        raise FileNotFoundError(f"the student's teacher pipeline {str(source)!r} is not there any more: the export "
                                f"copies its tokenizer, text encoders, VAE and scheduler")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not empty: export into a new folder")
    tmp = out.with_name(f".tmp-export-{os.getpid()}-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(source, tmp, ignore=shutil.ignore_patterns(".*"))
        component = "transformer" if "transformer" in json.loads((source / "model_index.json").read_text()) else "unet"
        pipe_cls = type(net.parts.pipe)
        adapters = has_lora(net)
        if adapters and lora == "adapter":
            if not hasattr(pipe_cls, "save_lora_weights"):
                raise ValueError(f"{pipe_cls.__name__} has no LoRA format in diffusers: export with lora='merge'")
            from peft.utils import get_peft_model_state_dict

            layers = {k[len("unet."):]: v for k, v in get_peft_model_state_dict(net).items() if k.startswith("unet.")}
            pipe_cls.save_lora_weights(str(tmp), **{f"{component}_lora_layers": layers})
        else:
            shutil.rmtree(tmp / component)
            (_merged_unet(net.unet) if adapters else net.unet).save_pretrained(str(tmp / component))
        flow = traits(net).flow
        sigma, k = student.info.sigma_init, student.info.steps
        sigmas = list(student.info.step_sigmas) or [sigma]
        info = {"sigma_init": sigma, "method": student.info.method, "step": student.info.step,
                "lora": ("adapter" if lora == "adapter" else "merged") if adapters else "none",
                "student": student.info.to_dict()}
        if flow:
            info.update(t_init=sigma / (1 + sigma), timesteps=[s / (1 + s) for s in sigmas],
                        input="latents = t_init * z (the flow x_t = (1 - t) x0 + t z with x0 = 0), at t_init",
                        output="the velocity v; the sample is latents - t_init * v (latents; decode with the VAE)")
        else:
            info.update(t_init=int(round(float(net.timestep_for(torch.tensor(sigma))))),
                        timesteps=[int(round(float(net.timestep_for(torch.tensor(s))))) for s in sigmas],
                        latent_scale=sigma / (1 + sigma * sigma) ** 0.5,
                        input="latents = latent_scale * z = sqrt(1 - alphas_cumprod[t_init]) * z, at the single "
                              "timestep t_init",
                        output="the scheduler's pred_original_sample (latents; decode with the VAE)")
        if k > 1:
            info["steps"] = ("each step after the first re-noises the previous step's sample x0 to its own timestep t "
                             "(diffusers' scheduler.add_noise(x0, fresh standard normal noise, t); flow: (1 - t) x0 + "
                             "t noise) and reads the sample as the first step does")
        (tmp / STUDENT_FILE).write_text(json.dumps(info, indent=2) + "\n")
        diffusers_alone = component == "unet" and k == 1
        if diffusers_alone:
            _write_one_step_scheduler(tmp)
        how = (f"With the pipeline's own call, in diffusers alone, from inside this folder (`prompts` and `z`, "
               f"standard normal latents, are yours; its DDPMScheduler takes the one step at t_init and ends at the "
               f"sample):\n\n```python\n{ONE_STEP_SNIPPET}```\n" if diffusers_alone else
               f"The network input and output are in {STUDENT_FILE}.\n")
        if info["lora"] != "adapter":
            how += f"\nWith fastdistill, from inside this folder:\n\n```python\nfolder = \".\"\n{FASTDISTILL_SNIPPET}```\n"
        else:
            how += ("\nThe adapters are in pytorch_lora_weights.safetensors: call `pipe.load_lora_weights(folder)` "
                    "after loading.\n")
        if k == 1:
            title, intro = "One-step", f"Generate in one step (t_init = {info['t_init']:.6g})."
        else:
            title = f"{k}-step"
            intro = (f"Generate in {k} steps, at the timesteps {', '.join(f'{t:.6g}' for t in info['timesteps'])} "
                     f"({STUDENT_FILE} says how each step is fed).")
        (tmp / "README.md").write_text(f"# {title} student distilled by fastdistill ({student.info.method})\n\n"
                                       f"{intro} {how}")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
