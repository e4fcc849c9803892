"""Text-to-image pipeline teachers (docs/algorithms.md section 9) against diffusers' own code.

Tiny random Stable Diffusion pipelines are built in code and saved with ``save_pretrained``
(tests/tiny_pipelines.py), then loaded through the folder path a user takes.
"""
import copy
import errno
import os
import re

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from tests.tiny_pipelines import (PROMPTS, make_sd_pipeline, make_sdxl_pipeline, open_pipeline, run_export_snippet,  # noqa: E402
                                  write_prompt_file)

from fastdistill.conditioning import Conditioning  # noqa: E402
from fastdistill.engine import DistillConfig  # noqa: E402
from fastdistill.engine.build import bf16_is_fast  # noqa: E402
from fastdistill.engine.loop import Distiller  # noqa: E402
from fastdistill.ops import reference as ref  # noqa: E402
from fastdistill.teachers import CheckpointError, guided, load_teacher  # noqa: E402



@pytest.fixture(scope="module", params=["epsilon", "v_prediction", "sdxl"])
def sd_folder(request, tmp_path_factory):
    where = tmp_path_factory.mktemp(request.param) / "pipe"
    if request.param == "sdxl":
        return make_sdxl_pipeline(where, scheduler="ddim")
    return make_sd_pipeline(where, prediction_type=request.param)


def _unet_kwargs(cond):
    """The UNet's conditioning inputs as the pipelines pass them (SDXL: pooled text and time ids)."""
    kw = {"encoder_hidden_states": cond.embeds}
    if cond.pooled is not None:
        kw["added_cond_kwargs"] = {"text_embeds": cond.pooled, "time_ids": cond.extra["time_ids"]}
    return kw


@pytest.fixture(scope="module")
def sd_eps_folder(tmp_path_factory):
    return make_sd_pipeline(tmp_path_factory.mktemp("eps") / "pipe")


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory):
    return make_sdxl_pipeline(tmp_path_factory.mktemp("xl") / "pipe", scheduler="ddim")


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    return write_prompt_file(tmp_path_factory.mktemp("prompts") / "prompts.txt")




def _ddim_step_with(teacher, D, x_vp, t, t_prev):
    """One DDIM (eta 0) step written in the VE form with a denoiser: ``x' = D + sigma' (x - D) / sigma``."""
    s, s_prev = teacher.sigmas[t].float(), teacher.sigmas[t_prev].float() if t_prev >= 0 else None
    x = x_vp * (1 + s**2).sqrt()
    d = D(x, s.expand(x.shape[0]))
    if s_prev is None:  # the last step lands on the final alpha (alphas_cumprod[0] without set_alpha_to_one)
        s_prev = teacher.sigmas[0].float()
    return (d + s_prev * (x - d) / s) / (1 + s_prev**2).sqrt()


@pytest.mark.parametrize("t_index", [0, 3])
def test_denoiser_ddim_step_equals_the_scheduler(sd_folder, t_index):
    """One DDIM step of the pipeline's own scheduler on the UNet's output equals the same step
    taken with the adapter's D, for epsilon and v prediction and for SDXL."""
    pipe = open_pipeline(sd_folder, safety_checker=None, requires_safety_checker=False)
    teacher = load_teacher(str(sd_folder))
    sched = pipe.scheduler
    sched.set_timesteps(5)
    t = int(sched.timesteps[t_index])
    t_prev = t - sched.config.num_train_timesteps // 5
    cond = teacher.encode_prompt(PROMPTS[:2])
    x_vp = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = pipe.unet(x_vp, t, **_unet_kwargs(cond)).sample
        want = sched.step(out, t, x_vp).prev_sample
        got = _ddim_step_with(teacher, lambda x, s: teacher(x, s, cond), x_vp, t, t_prev)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_guided_denoiser_equals_the_pipeline_call(sd_folder):
    """The guided D's DDIM step equals the pipeline's own one-step call at guidance 3 (its
    empty-prompt negative, its doubled batch and its guidance combination)."""
    pipe = open_pipeline(sd_folder, safety_checker=None, requires_safety_checker=False)
    teacher = load_teacher(str(sd_folder))
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = pipe(PROMPTS[:2], num_inference_steps=1, guidance_scale=3.0, latents=latents.clone(),
                    output_type="latent").images
        t = int(pipe.scheduler.timesteps[0])
        cond = teacher.encode_prompt(PROMPTS[:2])
        got = _ddim_step_with(teacher, lambda x, s: guided(teacher, x, s, cond, 3.0), latents, t, -1)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_prompt_encoding_and_decoding(sd_folder, capsys):
    teacher = load_teacher(str(sd_folder))
    cond = teacher.encode_prompt(PROMPTS)
    assert isinstance(cond, Conditioning) and cond.kind == "text" and cond.batch_size == 4
    assert cond.null is not None and cond.null.embeds.shape[1:] == cond.embeds.shape[1:]
    u = cond.unconditional()
    if teacher.family == "SDXL":  # force_zeros_for_empty_prompt: zeros, with the same time ids
        assert u.embeds.abs().max() == 0 and u.pooled.abs().max() == 0
        torch.testing.assert_close(u.extra["time_ids"], cond.extra["time_ids"])
    else:  # the empty prompt's encoding
        torch.testing.assert_close(u.embeds[0], teacher.encode_prompt([""]).embeds[0])
    capsys.readouterr()
    teacher.encode_prompt(["a " * 40])  # one line from fastdistill
    assert "truncated" in capsys.readouterr().err
    images = teacher.decode(torch.randn(3, 4, 8, 8))
    assert images.shape == (3, 3, teacher.resolution, teacher.resolution) and images.abs().max() <= 1
    with pytest.raises(ValueError, match="text conditioning"):
        teacher(torch.randn(1, 4, 8, 8), torch.ones(1))


def test_copies_share_the_frozen_pipeline_parts(sd_folder):
    teacher = load_teacher(str(sd_folder))
    g = copy.deepcopy(teacher)
    assert g.parts is teacher.parts and g.unet is not teacher.unet
    assert set(g.state_dict()) == set(teacher.state_dict()) and all(k.startswith("unet.") for k in g.state_dict())


# ---------------------------------------------------------------------- one distillation step by hand
def _x0(unet, x_vp, t, cond, abar, pred_type):
    """The pipeline's x0 from its raw UNet output (pred_original_sample, written out)."""
    out = unet(x_vp, t, **_unet_kwargs(cond)).sample
    a = abar[t].reshape(-1, 1, 1, 1).float()
    if pred_type == "epsilon":
        return (x_vp - (1 - a).sqrt() * out) / a.sqrt(), out
    return a.sqrt() * x_vp - (1 - a).sqrt() * out, (1 - a).sqrt() * x_vp + a.sqrt() * out  # x0, eps


def _guided_x0_eps(unet, x_vp, t, cond, w, abar, pred_type):
    if w == 1:
        return _x0(unet, x_vp, t, cond, abar, pred_type)
    x0_u, e_u = _x0(unet, x_vp, t, _emptied(cond, torch.ones(cond.batch_size, dtype=torch.bool)), abar, pred_type)
    x0_c, e_c = _x0(unet, x_vp, t, cond, abar, pred_type)
    return x0_u + w * (x0_c - x0_u), e_u + w * (e_c - e_u)


def _emptied(cond, mask):
    """``cond`` with the masked samples' text replaced by the pipeline's unconditional input."""
    null = cond.null

    def pick(t, u):
        return torch.where(mask.reshape(-1, *[1] * (t.ndim - 1)), u.expand_as(t), t)

    return Conditioning(embeds=pick(cond.embeds, null.embeds),
                        pooled=None if cond.pooled is None else pick(cond.pooled, null.pooled),
                        extra=cond.extra, null=null)


def adam_first_step(params, grads, lr=1.0, eps=1.0):
    """Adam's first step (betas (0, 0.999)): ``lr g / (|g| + eps)``; eps 1 keeps it about linear in
    the gradient, so float noise in a tiny gradient is not amplified to a whole step."""
    for p, gr in zip(params, grads):
        p.data -= lr * gr / ((0.001 * gr * gr / 0.001).sqrt() + eps)


@pytest.mark.parametrize("lora", [0, 2])
@pytest.mark.parametrize("method", ["sid", "sim", "dmd"])
def test_guided_step_matches_handwritten_sid_lsg(tmp_path, sd_folder, prompt_file, method, lora):
    """One engine iteration on a pipeline teacher (teacher timesteps, generator at t_init, all
    three guidance scales 1.5, 50% unconditional fake-step prompts, the fake network on the
    teacher's own epsilon / v objective), fully fine-tuned or with LoRA adapters on both trained
    networks, equals SiD-LSG's step written with the raw UNets; with LoRA only the adapters move."""
    cfg = DistillConfig().with_overrides([
        "teacher.kind=checkpoint", f"teacher.path={sd_folder}", f"prompts={prompt_file}", f"method.name={method}",
        "method.guidance_teacher=1.5", "method.guidance_fake=1.5", "method.guidance_fake_train=1.5",
        "method.uncond_fraction=0.5", "method.generator_loss_scale=1", "method.reuse_samples=false",
        f"lora.rank={lora}", "teacher.dtype=fp32", "optim.lr=1", "optim.eps=1", "batch_size=4", "steps=1", "seed=1", f"out_dir={tmp_path}",
        "progress=false", "eval_data=none"])
    d = Distiller(cfg)
    teacher, m = d.teacher, d.method
    pred = teacher.prediction_type
    abar = 1 / (1 + teacher.sigmas**2)
    g = torch.Generator().manual_seed(0)
    g.set_state(d.updates.gen.get_state())
    G0, F0 = copy.deepcopy(d.G), copy.deepcopy(d.fake)
    start = {net: {n: p.detach().clone() for n, p in net.named_parameters()} for net in (d.G, d.fake)}
    g_train = [p for p in G0.parameters() if p.requires_grad]
    f_train = [p for p in F0.parameters() if p.requires_grad]
    assert (len(g_train) < len(list(G0.parameters()))) == bool(lora)
    d.train_step()

    def timestep(sigma):
        return (teacher.sigmas.float()[None] - sigma[:, None]).abs().argmin(1)

    t_init = torch.full((4,), 625)
    a_init = abar[625].float()
    # fake step: SiD-LSG's eps (or SNR-weighted v) loss with the dropped prompts made empty
    fn = m.draw_fake_noise(4, (4, 8, 8), 0, g, "cpu")
    assert fn.drop is not None and 0 < int(fn.drop.sum()) < 4
    cond = _emptied(fn.cond, fn.drop)
    with torch.no_grad():
        x_g, _ = _x0(G0.unet, (1 - a_init).sqrt() * fn.z, t_init, cond, abar, pred)
    t = timestep(fn.sigma)
    a = abar[t].reshape(-1, 1, 1, 1).float()
    x_t = a.sqrt() * x_g + (1 - a).sqrt() * fn.noise
    _, eps_f = _guided_x0_eps(F0.unet, x_t, t, cond, 1.5, abar, pred)
    loss_f = ((eps_f - fn.noise) ** 2).sum() / 4  # = the SNR/(SNR+1)-weighted v loss for v models
    adam_first_step(f_train, torch.autograd.grad(loss_f, f_train))
    # generator step: both score networks guided at 1.5 on the one x_t
    gn = m.draw_generator_noise(4, (4, 8, 8), 0, g, "cpu")
    x_g, _ = _x0(G0.unet, (1 - a_init).sqrt() * gn.z, t_init, gn.cond, abar, pred)
    t = timestep(gn.sigma)
    a = abar[t].reshape(-1, 1, 1, 1).float()
    x_t = a.sqrt() * x_g + (1 - a).sqrt() * gn.eps
    F0.requires_grad_(False)
    if method == "dmd":
        with torch.no_grad():
            y_real, _ = _guided_x0_eps(teacher.unet, x_t.detach(), t, gn.cond, 1.5, abar, pred)
            y_fake, _ = _guided_x0_eps(F0.unet, x_t.detach(), t, gn.cond, 1.5, abar, pred)
        loss_g = ref.dmd(x_g, y_real, y_fake, None, 1.0).mean()
    else:
        y_real, _ = _guided_x0_eps(teacher.unet, x_t, t, gn.cond, 1.5, abar, pred)
        y_fake, _ = _guided_x0_eps(F0.unet, x_t, t, gn.cond, 1.5, abar, pred)
        loss_g = (ref.sid(x_g, y_real, y_fake, None, 1.2, 1.0) if method == "sid"
                  else ref.sim(x_g, y_real, y_fake, torch.ones(4), 1e-3, True, 1.0)).mean()
    adam_first_step(g_train, torch.autograd.grad(loss_g, g_train))

    # the whole update as one vector: float32 through two UNets leaves 1e-6 to 6e-5 of it (single
    # weights whose gradient cancels are off by more); guidance 1.4 for 1.5 in the fake step leaves 3e-2
    for net, want in ((d.fake, F0), (d.G, G0)):
        got, ref_ = dict(net.named_parameters()), dict(want.named_parameters())
        err = sum(float(((got[n] - ref_[n]) ** 2).sum()) for n in got)
        moved = {n: float(((got[n] - start[net][n]) ** 2).sum()) for n in got}
        step = sum(moved.values())
        assert step > 0 and (err / step) ** 0.5 < 1e-3
        if lora:  # only the adapters moved; the base weights are still the teacher's
            assert all(v == 0 for n, v in moved.items() if "lora_" not in n)
    assert d.method.sigma_init == pytest.approx(float(teacher.sigmas[625]))


# ---------------------------------------------------------------------- the user's path
@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_cli_distill_resume_and_sample(tmp_path, request, prompt_file, kind):
    """``distill --teacher PIPELINE --prompts FILE`` (the sid-lsg-sd15 preset), a resumed longer
    run, then ``sample --prompt`` / ``--prompts`` writing decoded grids, one row per prompt."""
    from fastdistill.cli import main
    from fastdistill.student import load_student

    folder = request.getfixturevalue("sd_eps_folder" if kind == "sd" else "sdxl_folder")
    run = tmp_path / "run"
    common = ["distill", "--teacher", str(folder), "--prompts", str(prompt_file), "batch_size=2",
              f"out_dir={run}", "progress=false", "ckpt_every=1", "sample_every=0"]
    assert main(common + ["steps=2"]) == 0
    assert main(common + ["steps=3"]) == 0  # resumes at step 2
    student = load_student(run)
    assert student.info.cond_kind == "text" and student.info.step == 3
    assert student.info.sigma_init == pytest.approx(2.50, abs=0.01)  # sigma_t at t_init 625 on SD's schedule
    assert (run / "samples.png").is_file()
    out = tmp_path / "grid"
    assert main(["sample", str(run), "--prompt", "a cat", "--prompt", "a dog", "-n", "3", "--out", str(out)]) == 0
    x = __import__("numpy").load(out.with_suffix(".npz"))["samples"]
    assert x.shape == (6, 3, 16, 16) and abs(x).max() <= 1
    x1 = student.decode(student.sample(3, seed=0, cond="a cat"))
    torch.testing.assert_close(torch.as_tensor(x[:3]), x1)
    assert main(["sample", str(run), "--prompts", str(prompt_file), "-n", "2", "--out", str(tmp_path / "file")]) == 0
    assert __import__("numpy").load(tmp_path / "file.npz")["samples"].shape == (2 * len(PROMPTS), 3, 16, 16)


def test_bad_input(tmp_path, sd_eps_folder, prompt_file):
    sd_folder = sd_eps_folder
    import json
    import shutil

    from fastdistill.methods import ConfigError
    from fastdistill.teachers.pipelines import load_pipeline_teacher

    with pytest.raises(ValueError, match="multiple of 2"):
        load_teacher(str(sd_folder), resolution=15)
    other = tmp_path / "other"
    shutil.copytree(sd_folder, other)
    index = json.loads((other / "model_index.json").read_text())
    (other / "model_index.json").write_text(json.dumps({**index, "_class_name": "SanaPipeline"}))
    with pytest.raises(ValueError, match="SanaPipeline is not supported as a teacher.*StableDiffusionPipeline"):
        load_teacher(str(other))
    (other / "model_index.json").write_text(json.dumps({**index, "_class_name": "FluxPipeline"}))
    with pytest.raises(ValueError, match="FluxPipeline is not supported with a"):
        load_teacher(str(other))
    (other / "model_index.json").write_text(json.dumps(index))
    shutil.rmtree(other / "vae")
    with pytest.raises(FileNotFoundError, match="lacks vae"):
        load_pipeline_teacher(other)
    base = ["teacher.kind=checkpoint", f"teacher.path={sd_folder}", f"out_dir={tmp_path / 'r'}", "progress=false"]
    with pytest.raises(ConfigError, match="needs training prompts"):
        Distiller(DistillConfig().with_overrides(base))
    with pytest.raises(ConfigError, match="guidance_teacher must be a finite number"):
        DistillConfig().with_overrides(base + [f"prompts={prompt_file}", "method.guidance_teacher=NaN"]).validate()
    with pytest.raises(ConfigError, match="not a text-to-image pipeline"):
        Distiller(DistillConfig().with_overrides([f"prompts={prompt_file}", f"out_dir={tmp_path / 's'}"]))
    assert not (tmp_path / "r").exists() and not (tmp_path / "s").exists()  # nothing half-written


# ---------------------------------------------------------------------- LoRA, the prompt cache, resume
def _lora_config(out, folder, prompts, **over):
    items = {"teacher.kind": "checkpoint", "teacher.path": str(folder), "prompts": str(prompts), "lora.rank": 2,
             "method.guidance_teacher": 1.5, "method.guidance_fake": 1.5, "method.guidance_fake_train": 1.5,
             "optim.lr": 1e-3, "batch_size": 2, "steps": 4, "ckpt_every": 2, "threads": 1, "out_dir": str(out),
             "teacher.dtype": "fp32", "progress": False, "eval_data": "none", **over}
    return DistillConfig().with_overrides([f"{k}={v}" for k, v in items.items()])


def _state(d):
    out = {}
    for name, sd in d.trained.whole_tensors()[0].items():
        out.update({f"{name}.{k}": v.detach().clone() for k, v in sd.items()})
    return out


LORA_KILL_SCRIPT = """
import os, signal, sys
from tests.test_pipelines import _lora_config
from fastdistill.engine.loop import Distiller
def kill_at_3(dist, row):
    if dist.step == 3:
        os.kill(os.getpid(), signal.SIGKILL)
Distiller(_lora_config(sys.argv[1], sys.argv[2], sys.argv[3]), callback=kill_at_3).run()
"""


def test_lora_run_killed_resumes_bit_identical(tmp_path, sd_eps_folder, prompt_file):
    """A LoRA run SIGKILLed in step 3 resumes from its step-2 checkpoint (prompt embeddings from
    the cache) and ends bit-identical to a run that never stopped; the student loads with its
    adapters."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from fastdistill.student import load_student

    threads = torch.get_num_threads()
    full = Distiller(_lora_config(tmp_path / "full", sd_eps_folder, prompt_file))
    full.run()
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", LORA_KILL_SCRIPT, str(out), str(sd_eps_folder), str(prompt_file)],
                          cwd=repo, env=env, timeout=300, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    resumed = Distiller(_lora_config(out, sd_eps_folder, prompt_file, resume="auto"))
    assert resumed.step == 2 and resumed.teacher.text_encoders == []  # released after the cache load
    resumed.run()
    torch.set_num_threads(threads)
    a, b = _state(full), _state(resumed)
    assert a.keys() == b.keys() and any("lora_" in k for k in a)
    assert not [k for k in a if not torch.equal(a[k], b[k])]
    student = load_student(out)
    torch.testing.assert_close(dict(student.net.named_parameters())["unet.conv_in.weight"],
                               dict(full.teacher.named_parameters())["unet.conv_in.weight"])  # base untouched
    x = student.sample(2, seed=0, cond="a cat")
    assert x.shape == (2, 4, 8, 8) and torch.isfinite(x).all()


def test_prompt_cache_is_shared_and_keyed(tmp_path, sd_eps_folder, prompt_file, monkeypatch):
    from fastdistill.teachers.pipelines import PipelineTeacher

    cache = tmp_path / "cache"
    over = {"prompt_cache": str(cache), "steps": 1, "lora.rank": 0}
    Distiller(_lora_config(tmp_path / "a", sd_eps_folder, prompt_file, **over))
    files = list(cache.glob("prompts-*.safetensors"))
    assert len(files) == 1

    def no_encoding(self, prompts, batch_size=64):
        raise AssertionError("encoded again despite the cache")

    monkeypatch.setattr(PipelineTeacher, "encode_prompt", no_encoding)
    d = Distiller(_lora_config(tmp_path / "b", sd_eps_folder, prompt_file, **over))
    assert len(d.conditions) == len(PROMPTS)
    other = tmp_path / "other.txt"
    other.write_text("a cat\n")
    with pytest.raises(AssertionError, match="encoded again"):  # other prompts: another cache entry
        Distiller(_lora_config(tmp_path / "c", sd_eps_folder, other, **over))


def test_the_run_says_what_it_detected(tmp_path, sd_eps_folder, prompt_file, capsys):
    """One line at the start: method, family, objective, teacher dtype, data shape, what trains (LoRA), processes."""
    d = Distiller(_lora_config(tmp_path / "a", sd_eps_folder, prompt_file))
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("fastdistill: sid (1 step) of a"))
    assert "Stable Diffusion 1.x/2.x teacher (epsilon, float32)" in line and f"data {tuple(d.shape)}" in line
    trained, total = re.search(r"generator (\S+) of (\S+) parameters trained", line).groups()
    assert trained != total  # LoRA: the adapters only
    assert "LoRA rank 2 (both)" in line and "1 process on cpu" in line
    d.release()


def test_messages_say_what_a_text_to_image_user_did(tmp_path, sd_eps_folder, prompt_file, capsys):
    """The wording of four refusals: --label on a text student, --prompts given a folder, a
    missing teacher path, a run whose teacher folder was moved."""
    import shutil

    from fastdistill.cli import main
    from tests.test_cli_errors import _one_line_error

    teacher = tmp_path / "teacher"
    shutil.copytree(sd_eps_folder, teacher)
    run = tmp_path / "run"
    Distiller(_lora_config(run, teacher, prompt_file, steps=1, ckpt_every=1)).run()
    capsys.readouterr()
    assert main(["sample", str(run), "--label", "3", "-n", "2", "--out", str(tmp_path / "s")]) == 2
    assert "the student is text-conditioned: give --prompt TEXT or --prompts FILE" in _one_line_error(capsys, "sample")
    assert main(["distill", "--preset", "sid-lsg-sd15", "--teacher", str(teacher), "--prompts", str(tmp_path)]) == 2
    assert "a folder, not a prompt file" in _one_line_error(capsys, "distill")
    assert main(["distill", "--preset", "sid-lsg-sd15", "--prompts", str(prompt_file)]) == 2
    assert "--teacher PATH" in _one_line_error(capsys, "distill")
    teacher.rename(tmp_path / "moved")
    assert main(["sample", str(run), "--prompt", "a cat", "-n", "2", "--out", str(tmp_path / "s")]) == 2
    line = _one_line_error(capsys, "sample")
    assert "is not there any more (moved or deleted)" in line and "analytic" not in line


def test_lora_rank_and_targets_that_do_not_fit(tmp_path, sd_eps_folder, prompt_file):
    from fastdistill.methods import ConfigError

    with pytest.raises(ConfigError, match="lora.rank=64 does not fit .*to_q"):
        Distiller(_lora_config(tmp_path / "a", sd_eps_folder, prompt_file, **{"lora.rank": 64}))
    with pytest.raises(ConfigError, match="matches no module.*to_q"):
        Distiller(_lora_config(tmp_path / "b", sd_eps_folder, prompt_file, **{"lora.targets": "attn_qkv"}))


# ---------------------------------------------------------------------- export
@pytest.mark.parametrize("scheduler", ["ddim", "ddpm", "pndm", "euler", "euler_ancestral", "dpm"])
def test_the_export_runs_with_the_pipelines_own_call_whatever_scheduler_the_teacher_shipped(tmp_path, prompt_file,
                                                                                              scheduler):
    """The export writes its own scheduler (a DDPMScheduler on the teacher's schedule), so the
    README's pipeline call is the student for the scheduler classes SD folders ship (the old
    snippet raised on DDPM, PNDM and Euler), in a process without fastdistill."""
    from fastdistill.cli import main
    from fastdistill.sampling import draw
    from fastdistill.student import load_student

    teacher = make_sd_pipeline(tmp_path / "teacher", prediction_type="v_prediction" if scheduler == "dpm" else "epsilon",
                               scheduler=scheduler)
    run = tmp_path / "run"
    Distiller(_lora_config(run, teacher, prompt_file, **{"lora.rank": 0, "steps": 1, "optim.lr": 1e-2})).run()
    assert main(["export", str(run), str(tmp_path / "exported")]) == 0
    student, prompts = load_student(run), ["a cat", "a dog"]
    (z,), _ = draw(2, student.info.data_shape, 4)
    torch.testing.assert_close(run_export_snippet(tmp_path / "exported", prompts, z, tmp_path),
                               student.sample(2, seed=4, cond=prompts), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("scheduler,prediction", [("pndm", "epsilon"), ("euler_ancestral", "epsilon"),
                                                  ("dpm", "v_prediction")])
def test_few_step_export_runs_with_the_pipelines_own_call(tmp_path, prompt_file, scheduler, prediction):
    """A 2-step student's export generates with the pipeline's own call, in diffusers alone, through
    its LCM scheduler at the student's timesteps: the images ``fastdistill sample --seed`` gives
    (the latents and the re-noising drawn in the same order from the same seed), whatever scheduler
    the teacher shipped; without the re-noising between the steps the result differs."""
    from fastdistill.cli import main
    from fastdistill.student import load_student

    teacher = make_sd_pipeline(tmp_path / "teacher", prediction_type=prediction, scheduler=scheduler)
    run = tmp_path / "run"
    Distiller(_lora_config(run, teacher, prompt_file, **{"lora.rank": 0, "steps": 1, "method.name": "dmd",
                                                          "method.steps": 2, "optim.lr": 1e-2})).run()
    assert main(["export", str(run), str(tmp_path / "exported")]) == 0
    readme = (tmp_path / "exported" / "README.md").read_text()
    assert "2-step student" in readme and "LCMScheduler" in (tmp_path / "exported" / "model_index.json").read_text()
    student, prompts = load_student(run), ["a cat", "a dog"]
    want = student.sample(2, seed=6, cond=prompts)
    got = run_export_snippet(tmp_path / "exported", prompts, torch.zeros(0), tmp_path, seed=6)  # draws its own z
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    one_step = student.sample(2, steps=1, seed=6, cond=prompts)
    assert (got - one_step).abs().max() > 1e-3  # the second step shows


def _student_images(student, prompts, seed):
    x = student.decode(student.sample(len(prompts), seed=seed, cond=prompts))
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)


@pytest.mark.parametrize("kind,lora,mode", [("sd", 2, "merge"), ("sd", 2, "adapter"), ("sd", 0, "merge"),
                                            ("sdxl", 2, "merge")])
def test_export_round_trip(tmp_path, sd_eps_folder, sdxl_folder, prompt_file, kind, lora, mode, monkeypatch, capsys):
    """``fastdistill export`` writes a folder diffusers loads; the README's one-step snippet (the
    pipeline's own call, run inside the folder without fastdistill) gives ``fastdistill sample``'s
    images for the same noise."""
    from fastdistill.cli import main
    from fastdistill.sampling import draw
    from fastdistill.student import Student, load_student

    folder = sd_eps_folder if kind == "sd" else sdxl_folder
    run = tmp_path / "run"
    Distiller(_lora_config(run, folder, prompt_file, **{"lora.rank": lora, "steps": 2, "optim.lr": 1e-2})).run()
    out = tmp_path / "exported"
    assert main(["export", str(run), str(out), "--lora", mode]) == 0
    assert (out / "fastdistill_student.json").is_file() and (out / "README.md").is_file()
    assert str(out) not in (out / "README.md").read_text()  # paths relative to the folder: it can move
    assert (out / "pytorch_lora_weights.safetensors").is_file() == (mode == "adapter" and lora > 0)
    student = load_student(run)
    prompts = ["a cat", "the digit seven"]
    want = student.sample(2, seed=3, cond=prompts)
    (z,), _ = draw(2, student.info.data_shape, 3)
    adapter = mode == "adapter"
    torch.testing.assert_close(run_export_snippet(out, prompts, z, tmp_path, adapter=adapter), want,
                               rtol=1e-4, atol=1e-5)
    unscaled = run_export_snippet(out, prompts, z, tmp_path, adapter=adapter, scale_latents=False)
    assert (unscaled - want).abs().max() > 1e-3  # the comparison can fail: the latents' scale shows
    images = run_export_snippet(out, prompts, z, tmp_path, adapter=adapter, latents=False)
    torch.testing.assert_close(images, _student_images(student, prompts, seed=3), rtol=1e-4, atol=1e-4)
    if mode == "merge":  # fastdistill loads the folder back as the same student, and writes it again the same way
        back = Student.from_pretrained(out)
        torch.testing.assert_close(back.sample(2, seed=3, cond=prompts), student.sample(2, seed=3, cond=prompts),
                                   rtol=1e-4, atol=1e-5)
        again = student.save_pretrained(tmp_path / "again")
        assert sorted(p.name for p in again.iterdir()) == sorted(p.name for p in out.iterdir())
    else:
        with pytest.raises(CheckpointError, match="LoRA adapters .*--lora merge"):
            load_student(out)
    assert main(["export", str(run), str(out)]) == 2  # an existing folder is refused, nothing overwritten
    if kind == "sd" and lora == 0:  # a full disk while exporting: one line, no half-written folder left
        import fastdistill.export as export_module

        def disk_full(*args, **kwargs):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(args[1]))

        monkeypatch.setattr(export_module.shutil, "copytree", disk_full)
        capsys.readouterr()
        assert main(["export", str(run), str(tmp_path / "full")]) == 2
        assert "No space left on device" in capsys.readouterr().err.strip().splitlines()[-1]
        assert not [p.name for p in tmp_path.iterdir() if "full" in p.name]


def test_checkpointing_and_bf16_teacher(tmp_path, sd_eps_folder, prompt_file):
    """Block-wise gradient checkpointing of the three UNets gives the step without it; the frozen
    teacher is bf16 with teacher.dtype=bf16 (and auto where the CPU has native bf16) while the trained copies start
    from its fp32 weights."""
    runs = {}
    for name, over in (("plain", {}), ("ckpt", {"activation_checkpointing": True})):
        d = Distiller(_lora_config(tmp_path / name, sd_eps_folder, prompt_file, **{"lora.rank": 0, **over}))
        d.train_step()
        runs[name] = d
    assert runs["ckpt"].G.unet.is_gradient_checkpointing and runs["ckpt"].teacher.unet.is_gradient_checkpointing
    assert not runs["plain"].G.unet.is_gradient_checkpointing
    a, b = _state(runs["plain"]), _state(runs["ckpt"])
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    auto = Distiller(_lora_config(tmp_path / "auto", sd_eps_folder, prompt_file, **{"teacher.dtype": "auto"}))
    fast = bf16_is_fast("cpu")  # auto: bf16 where the CPU computes it natively (AVX512-BF16 / AMX)
    assert next(auto.teacher.unet.parameters()).dtype == (torch.bfloat16 if fast else torch.float32)
    auto.release()
    # untied LoRA copies (a shared base takes the teacher's dtype: tests/test_shared_base.py)
    d = Distiller(_lora_config(tmp_path / "bf16", sd_eps_folder, prompt_file,
                               **{"teacher.dtype": "bf16", "lora.share_base": False}))
    assert next(d.teacher.unet.parameters()).dtype == torch.bfloat16
    assert next(d.G.unet.parameters()).dtype == torch.float32
    fp32 = load_teacher(str(sd_eps_folder))
    torch.testing.assert_close(dict(d.G.named_parameters())["unet.conv_in.weight"],
                               dict(fp32.named_parameters())["unet.conv_in.weight"], rtol=0, atol=0)
    assert d.teacher.sigmas.dtype == torch.float64  # the schedule is not rounded
    row = d.train_step()
    assert row["skipped"] == 0


# ---------------------------------------------------------------------- evaluation
def test_clip_score_equals_transformers(tmp_path):
    from transformers import CLIPModel, CLIPProcessor

    from fastdistill.metrics import EvalError
    from fastdistill.metrics.clip_score import clip_score
    from tests.tiny_pipelines import make_clip_model

    folder = make_clip_model(tmp_path / "clip")
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    prompts = ["a cat", "a dog", "the digit seven"]
    mean, se = clip_score(images, prompts, folder)
    model, proc = CLIPModel.from_pretrained(folder), CLIPProcessor.from_pretrained(folder)
    with torch.no_grad():
        img = model.get_image_features(**proc(images=list((images + 1) / 2), return_tensors="pt", do_rescale=False))
        txt = model.get_text_features(**proc(text=prompts, return_tensors="pt", padding=True))
    img, txt = getattr(img, "pooler_output", img), getattr(txt, "pooler_output", txt)
    cos = torch.nn.functional.cosine_similarity(img, txt)
    assert mean == pytest.approx(float(cos.mean()), abs=1e-5)
    assert se == pytest.approx(float(cos.double().std() / 3**0.5), abs=1e-5)
    with pytest.raises(EvalError, match="local CLIP model folder.*Nothing is downloaded"):
        clip_score(images, prompts, tmp_path / "openai/clip-vit-large-patch14")


def test_eval_command_on_text_to_image_models(tmp_path, sd_eps_folder, prompt_file, capsys, monkeypatch):
    """``fastdistill eval --prompts`` scores a guided teacher at two scales and a student on the
    same prompts and noise (CLIP score), and refuses what it cannot measure."""
    import json

    from fastdistill.cli import main
    from tests.tiny_pipelines import make_clip_model

    clip = make_clip_model(tmp_path / "clip")
    run = tmp_path / "run"
    Distiller(_lora_config(run, sd_eps_folder, prompt_file, **{"lora.rank": 0, "steps": 1})).run()
    out = tmp_path / "eval.json"
    assert main(["eval", "--prompts", str(prompt_file), "--teacher", str(sd_eps_folder), "--steps", "2",
                 "--guidance", "1,3", "--student", str(run), "--clip", str(clip), "-n", "4", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["model"], r.get("guidance"), r["nfe"], r["passes"]) for r in rows] == [
        ("teacher", 1.0, 3, 3), ("teacher", 3.0, 3, 6), ("student", None, 1, 1)]
    assert all(-1 <= r["clip"] <= 1 for r in rows) and rows[0]["clip"] != rows[1]["clip"]
    assert "CLIP" in capsys.readouterr().out
    assert main(["eval", "--prompts", str(prompt_file), "--student", str(run)]) == 2  # no --clip, no --data
    assert "nothing to measure" in capsys.readouterr().err
    assert main(["eval", "--student", str(run), "--clip", str(clip)]) == 2  # --clip without --prompts
    import fastdistill.evaluation as evaluation

    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded before the measurements' inputs were checked")

    with monkeypatch.context() as m:  # a wrong --clip or --data fails before any model is loaded or sampled
        m.setattr(evaluation, "load_student", loaded)
        capsys.readouterr()
        assert main(["eval", "--prompts", str(prompt_file), "--student", str(run), "--clip", str(tmp_path)]) == 2
        assert "has no config.json" in capsys.readouterr().err
        assert main(["eval", "--prompts", str(prompt_file), "--student", str(run), "--data", str(tmp_path / "no")]) == 2
        assert "no such file or folder of reference images" in capsys.readouterr().err
    refs = tmp_path / "refs"  # FID against reference images: Inception from a local file, never downloaded
    refs.mkdir()
    from PIL import Image

    for i in range(6):
        Image.fromarray((torch.rand(20, 20, 3) * 255).byte().numpy()).save(refs / f"{i}.png")
    monkeypatch.setenv("FASTDISTILL_INCEPTION_WEIGHTS", str(tmp_path / "missing.pth"))
    capsys.readouterr()
    assert main(["eval", "--prompts", str(prompt_file), "--student", str(run), "--data", str(refs), "-n", "2"]) == 2
    assert "Inception-v3 weights file not found" in capsys.readouterr().err
