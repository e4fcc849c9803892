"""Export a text-to-image student as a diffusers pipeline folder that ``from_pretrained`` loads.

The folder is the teacher's pipeline with the student's denoising network (``unet/``, or
``transformer/`` for PixArt, SD3 and Flux): its LoRA adapters merged into the weights
(``lora="merge"``), or the teacher's network untouched plus the adapters in diffusers' LoRA format
(``lora="adapter"``, loaded with ``pipe.load_lora_weights(folder)``). Its
``fastdistill_student.json`` and ``README.md`` say how to generate in one step, or in the K steps
of a few-step student (docs/algorithms.md sections 9 and 10). One-step students of every family
run with the pipeline's own call in diffusers alone: the export's scheduler makes its one step the
student (a DDPMScheduler whose step at ``timesteps=[t_init]`` ends at the sample, from the latents
``sqrt(1 - abar[t_init]) z``; for flow teachers an unshifted flow-matching Euler scheduler at
``sigmas=[t_init]``, from ``t_init z``; K-step students through an LCM or a stochastic flow-matching
scheduler at their timesteps); :func:`pipeline_snippet` is that code (the tests run it). Every family,
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
from .teachers.families import PipelineFamily
from .teachers.pipelines import folder_family
from .teachers.loading import teacher_location
from .teachers.traits import traits

__all__ = ["export_student", "pipeline_snippet", "FASTDISTILL_SNIPPET", "LORA_MODES", "STUDENT_FILE"]

#: the file that marks an exported folder and holds its student record
STUDENT_FILE = "fastdistill_student.json"

LORA_MODES = ("merge", "adapter")

#: generation (in the student's trained steps) with any exported folder (LoRA merged) through fastdistill; ``images`` in [-1, 1]
FASTDISTILL_SNIPPET = '''\
from fastdistill import load_student
student = load_student(folder)
images = student.decode(student.sample(len(prompts), seed=0, cond=prompts))
'''


def pipeline_snippet(family: PipelineFamily, steps: int = 1) -> str:
    """Generation with an exported folder of ``family`` through the pipeline's own call, in diffusers
    alone, run from inside the folder (``prompts``; ``z``: (B, C, h, w) standard normal latents; a
    few-step student: ``seed`` instead, from which ``z`` and the re-noising are drawn); ``images`` in
    [0, 1], (B, H, W, 3). The export's scheduler (:func:`_write_student_scheduler`) makes the call's
    steps the student's; the rest of what the call needs is in the folder's student record.

    A few-step student of a discrete family draws ``z`` and then each step's re-noising from one
    generator, as ``fastdistill sample --seed`` does, so the two give the same images; the flow
    pipelines pass no generator to their scheduler, which re-noises from torch's global one."""
    p = family.patch
    start = 'student["t_init"] * z' if family.flow else 'student["latent_scale"] * z'
    lines = ["import json", "from diffusers import DiffusionPipeline", 'pipe = DiffusionPipeline.from_pretrained(".")',
             'student = json.load(open("fastdistill_student.json"))  # t_init and the inputs the student was trained with']
    if steps > 1:
        lines = ["import torch"] + lines + [
            "generator = torch.Generator().manual_seed(seed)  # z first, then the re-noising of each later step",
            'z = torch.randn((len(prompts), *student["student"]["data_shape"]), generator=generator)']
        if family.flow:
            lines.append("torch.manual_seed(seed + 1)  # the pipeline's scheduler re-noises from torch's global generator")
    if p > 1:
        lines += [f"B, C, h, w = z.shape  # the pipeline takes its latents as {p} x {p} patch tokens",
                  f"latents = ({start}).view(B, C, h // {p}, {p}, w // {p}, {p}).permute(0, 2, 4, 1, 3, 5)"
                  f".reshape(B, h * w // {p * p}, C * {p * p})"]
        start = "latents"
    levels = '[student["t_init"]]' if steps == 1 else 'student["timesteps"]'
    args = [f"sigmas={levels}" if family.flow else f"timesteps={levels}", 'guidance_scale=student["guidance_scale"]',
            f"latents={start}"]
    if steps > 1 and not family.flow:
        args.append("generator=generator")
    if family.t5_tokenizer is not None:
        args.append('max_sequence_length=student["max_sequence_length"]')
    args += ['height=student["height"]', 'width=student["width"]']
    args += [f"{k}={v!r}" for k, v in family.one_step_call.items()] + ['output_type="np"']
    lines.append(f"images = pipe(prompts, {', '.join(args[:3])},\n              {', '.join(args[3:])}).images")
    return "\n".join(lines) + "\n"


#: the LCM scheduler's boundary-condition scale for a few-step export: c_skip = 1 / (1 + 4 (t s)^2)
#: is below 1e-12 for every timestep t >= 1, so its step reads the network's sample as it is
_NO_SKIP = 1e6


def _write_student_scheduler(folder: Path, flow: bool, steps: int) -> None:
    """The export's scheduler, whatever scheduler class the teacher's folder shipped (DDIM, PNDM, Euler,
    DPM-Solver, ...; FlowMatchEuler with a shift), on the teacher's own training schedule.

    One step, discrete: a DDPMScheduler, which takes custom timesteps and whose last step ends at
    the predicted sample (its variance there is 0), so ``timesteps=[t_init]`` is the student. K
    steps, discrete: an LCMScheduler at ``timesteps=[t_1, ..., t_K]``: each step predicts the sample
    and re-noises it to the next timestep with fresh noise, ``sqrt(abar) x0 + sqrt(1 - abar) eps``,
    the student's chain, its boundary condition switched off (:data:`_NO_SKIP`). Flow: a
    FlowMatchEulerDiscreteScheduler without any shift of the sigmas it is given; one step from
    ``t_init`` to 0 along the velocity is the student's ``x_t - t v``, and K steps sample
    stochastically, ``(1 - t') x0 + t' eps``, the student's re-noising."""
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler, LCMScheduler

    source = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    if flow:
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(
            source, shift=1.0, use_dynamic_shifting=False, shift_terminal=None, invert_sigmas=False,
            use_karras_sigmas=False, use_exponential_sigmas=False, use_beta_sigmas=False,
            stochastic_sampling=steps > 1)
    elif steps > 1:
        scheduler = LCMScheduler.from_config(source, clip_sample=False, thresholding=False, timestep_scaling=_NO_SKIP,
                                             original_inference_steps=source.get("num_train_timesteps", 1000))
    else:
        scheduler = DDPMScheduler.from_config(source, clip_sample=False, thresholding=False)
    shutil.rmtree(folder / "scheduler")
    scheduler.save_pretrained(str(folder / "scheduler"))
    index = json.loads((folder / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", type(scheduler).__name__]
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
        family = folder_family(source)
        component = family.network
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
        t = traits(net)
        schedule = t.schedule
        flow = schedule.kind == "flow"
        sigma, k = student.info.sigma_init, student.info.steps
        sigmas = list(student.info.step_sigmas) or [sigma]
        info = {"sigma_init": sigma, "method": student.info.method, "step": student.info.step,
                "lora": ("adapter" if lora == "adapter" else "merged") if adapters else "none",
                "student": student.info.to_dict()}
        if flow:
            T = schedule.num_timesteps  # the pipeline's flow time is t = timestep / T
            info.update(t_init=float(schedule.timestep_at(sigma)) / T, timesteps=[float(schedule.timestep_at(s)) / T
                                                                                 for s in sigmas],
                        input="latents = t_init * z (the flow x_t = (1 - t) x0 + t z with x0 = 0), at t_init",
                        output="the velocity v; the sample is latents - t_init * v (latents; decode with the VAE)")
        else:
            info.update(t_init=int(round(float(schedule.timestep_at(sigma)))),
                        timesteps=[int(round(float(schedule.timestep_at(s)))) for s in sigmas],
                        latent_scale=sigma / (1 + sigma * sigma) ** 0.5,
                        input="latents = latent_scale * z = sqrt(1 - alphas_cumprod[t_init]) * z, at the single "
                              "timestep t_init",
                        output="the scheduler's pred_original_sample (latents; decode with the VAE)")
        info.update(guidance_scale=t.embedded_guidance if t.embedded_guidance is not None else 1.0,
                    height=t.resolution, width=t.resolution)
        if family.t5_tokenizer is not None:
            info["max_sequence_length"] = t.text_length
        if k > 1:
            info["steps"] = ("each step after the first re-noises the previous step's sample x0 to its own timestep t "
                             "(diffusers' scheduler.add_noise(x0, fresh standard normal noise, t); flow: (1 - t) x0 + "
                             "t noise) and reads the sample as the first step does")
        (tmp / STUDENT_FILE).write_text(json.dumps(info, indent=2) + "\n")
        _write_student_scheduler(tmp, flow, k)
        shape = ", ".join(str(d) for d in student.info.data_shape)
        if k == 1:
            yours = (f"`prompts` and `z`, standard normal latents of shape (B, {shape}), are yours; its scheduler "
                     f"takes the one step at t_init and ends at the sample")
        else:
            yours = (f"`prompts` and `seed` are yours; its scheduler takes the student's {k} steps, re-noising the "
                     f"sample to each next timestep" + ("" if flow else "; the images are `fastdistill sample "
                                                                         "--seed`'s"))
        how = (f"With the pipeline's own call, in diffusers alone, from inside this folder ({yours}):\n\n"
               f"```python\n{pipeline_snippet(family, k)}```\n")
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
