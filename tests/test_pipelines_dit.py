"""Transformer (DiT) pipeline teachers, PixArt, SD3 and Flux (docs/algorithms.md section 9),
against diffusers' own schedulers and pipeline calls.

Tiny random pipelines are built in code and saved with ``save_pretrained``
(tests/tiny_pipelines.py), then loaded through the folder path a user takes.
"""
import copy
import json
import shutil

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from tests.tiny_pipelines import (  # noqa: E402
    PROMPTS, make_clip_model, make_flux_pipeline, make_pixart_pipeline, make_sd3_pipeline, open_pipeline,
    run_export_snippet, write_prompt_file)

from fastdistill.conditioning import Conditioning  # noqa: E402
from fastdistill.engine import DistillConfig  # noqa: E402
from fastdistill.engine.loop import Distiller  # noqa: E402
from fastdistill.methods import ConfigError  # noqa: E402
from fastdistill.ops import reference as ref  # noqa: E402
from fastdistill.teachers import guided, load_teacher  # noqa: E402

T5_LENGTH = 16  # the tiny T5 tokenizers' model_max_length: the teachers' (and these calls') sequence length


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("dit")
    return {
        "pixart": make_pixart_pipeline(root / "pixart"),
        "pixart_sigma": make_pixart_pipeline(root / "pixart_sigma", sigma=True),
        "sd3": make_sd3_pipeline(root / "sd3"),
        "flux": make_flux_pipeline(root / "flux"),
    }


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    return write_prompt_file(tmp_path_factory.mktemp("prompts") / "prompts.txt")


def test_tiny_folders_are_small_and_t5_tokenizers_need_no_sentencepiece(folders):
    for kind, folder in folders.items():
        assert sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) < 2_000_000, kind
        assert not list(folder.rglob("*.model")), kind  # no sentencepiece model anywhere
    tok = open_pipeline(folders["sd3"]).tokenizer_3
    ids = tok("a photo of a qux", padding="max_length", max_length=T5_LENGTH).input_ids
    assert ids[:6] == [tok.convert_tokens_to_ids(w) for w in ("a", "photo", "of", "a", "<unk>", "</s>")]
    assert ids[6:] == [tok.pad_token_id] * (T5_LENGTH - 6) and tok.model_max_length == T5_LENGTH




def _randn(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------- the raw networks, called as the pipelines do
def _pixart_eps(net, x_vp, t, cond):
    """PixArt's epsilon (the mean half of its learned-variance output) at integer timesteps ``t``."""
    added = {"resolution": None, "aspect_ratio": None}
    if net.use_additional_conditions:
        added = {k: cond.extra[k] for k in added}
    out = net(x_vp, encoder_hidden_states=cond.embeds, encoder_attention_mask=cond.mask,
              timestep=t.expand(x_vp.shape[0]), added_cond_kwargs=added, return_dict=False)[0]
    return out.chunk(2, dim=1)[0]


def _flux_velocity(pipe_cls, net, x_t, t, cond):
    """Flux's velocity on unpacked latents: packed into 2 x 2 tokens, position ids as the pipeline makes them."""
    B, C, h, w = x_t.shape
    tokens = pipe_cls._pack_latents(x_t, B, C, h, w)
    img_ids = pipe_cls._prepare_latent_image_ids(B, h // 2, w // 2, x_t.device, x_t.dtype)
    txt_ids = torch.zeros(cond.embeds.shape[1], 3)
    v = net(hidden_states=tokens, timestep=t.expand(B), guidance=cond.extra.get("guidance"),
            pooled_projections=cond.pooled, encoder_hidden_states=cond.embeds, txt_ids=txt_ids, img_ids=img_ids,
            return_dict=False)[0]
    return pipe_cls._unpack_latents(v, h * 2, w * 2, 2)


def _velocity(family, pipe_cls, net, x_t, t, cond):
    """A flow network's velocity at flow times ``t`` in [0, 1] (SD3 reads 1000 t, Flux t)."""
    if family == "SD3":
        return net(hidden_states=x_t, timestep=(1000 * t).expand(x_t.shape[0]), encoder_hidden_states=cond.embeds,
                   pooled_projections=cond.pooled, return_dict=False)[0]
    return _flux_velocity(pipe_cls, net, x_t, t, cond)


# ---------------------------------------------------------------------- steps with D, written in the VE form
def _vp_step_with(teacher, D, x_vp, t, t_prev):
    """One DDIM (eta 0) step written with a denoiser: ``x' = D + sigma' (x - D) / sigma`` in the VE form."""
    s = teacher.sigmas[t].float()
    s_prev = teacher.sigmas[max(t_prev, 0)].float()  # the last step lands on alphas_cumprod[0]
    x = x_vp * (1 + s**2).sqrt()
    d = D(x, s.expand(x.shape[0]))
    return (d + s_prev * (x - d) / s) / (1 + s_prev**2).sqrt()


def _flow_step_with(D, x_t, t, t_next):
    """One flow-matching Euler step written with a denoiser: ``v = (x_t - D) / t`` at
    ``x = x_t / (1 - t)``, ``sigma = t / (1 - t)``."""
    t = torch.as_tensor(t, dtype=torch.float32)
    d = D(x_t / (1 - t), (t / (1 - t)).expand(x_t.shape[0]))
    return x_t + (t_next - t) * (x_t - d) / t


# ---------------------------------------------------------------------- (a) one scheduler step
@pytest.mark.parametrize("scheduler", ["ddim", "dpm"])
@pytest.mark.parametrize("kind", ["pixart", "pixart_sigma"])
def test_pixart_step_equals_the_scheduler(folders, kind, scheduler):
    """One DDIM / first-order DPM-Solver step of diffusers' scheduler on PixArt's epsilon equals the
    same step taken with the adapter's D (micro-conditions and learned variance included)."""
    from diffusers import DPMSolverMultistepScheduler

    pipe = open_pipeline(folders[kind])
    teacher = load_teacher(str(folders[kind]))
    assert teacher.family == ("PixArt-Sigma" if kind == "pixart_sigma" else "PixArt-alpha")
    assert teacher.unet.use_additional_conditions == (kind == "pixart")
    sched = pipe.scheduler if scheduler == "ddim" else DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(5)
    t, t_prev = int(sched.timesteps[1]), int(sched.timesteps[2])
    cond = teacher.encode_prompt(PROMPTS[:2])
    x_vp = _randn(2, 4, 8, 8)
    with torch.no_grad():
        eps = _pixart_eps(pipe.transformer, x_vp, torch.tensor([t]), cond)
        want = sched.step(eps, t, x_vp).prev_sample
        got = _vp_step_with(teacher, lambda x, s: teacher(x, s, cond), x_vp, t, t_prev)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["sd3", "flux"])
@pytest.mark.parametrize("step", [0, 2])
def test_flow_step_equals_the_scheduler(folders, kind, step):
    """One flow-matching Euler step of the pipeline's scheduler (SD3's shift; Flux's image-size
    shift) on the raw transformer's velocity equals the same step taken with the adapter's D."""
    pipe = open_pipeline(folders[kind])
    teacher = load_teacher(str(folders[kind]))
    sched = pipe.scheduler
    sched.set_timesteps(4, **({"mu": 0.7} if kind == "flux" else {}))
    i = step + 1  # sigmas[0] is 1: pure noise, no VE form
    t, t_next = sched.sigmas[i], sched.sigmas[i + 1]
    assert 0 < t < 1
    cond = teacher.encode_prompt(PROMPTS[:2])
    x_t = _randn(2, 16, 8, 8)
    with torch.no_grad():
        v = _velocity(teacher.family, type(pipe), pipe.transformer, x_t, t, cond)
        want = sched.step(v, sched.timesteps[i], x_t).prev_sample
        got = _flow_step_with(lambda x, s: teacher(x, s, cond), x_t, t, t_next)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------- (b) guidance
def test_pixart_sigma_guided_equals_the_pipeline_call(folders):
    """The guided D's DDIM step equals PixArtSigmaPipeline's own one-step call at guidance 3 (its
    empty-prompt negative with its mask, its doubled batch, its combination)."""
    pipe = open_pipeline(folders["pixart_sigma"])
    teacher = load_teacher(str(folders["pixart_sigma"]))
    latents = _randn(2, 4, 8, 8, seed=2)
    with torch.no_grad():
        want = pipe(PROMPTS[:2], num_inference_steps=1, guidance_scale=3.0, latents=latents.clone(), output_type="latent",
                    use_resolution_binning=False, max_sequence_length=T5_LENGTH).images
        t = int(pipe.scheduler.timesteps[0])
        cond = teacher.encode_prompt(PROMPTS[:2])
        got = _vp_step_with(teacher, lambda x, s: guided(teacher, x, s, cond, 3.0), latents, t, -1)
        plain = _vp_step_with(teacher, lambda x, s: teacher(x, s, cond), latents, t, -1)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert (plain - want).abs().max() > 1e-3  # guidance matters: the check can fail


def test_pixart_alpha_guided_equals_the_pipeline_combination(folders):
    """With PixArt-alpha's micro-conditions (the pipeline passes them only at 1024 pixels, so its
    call is written out): the doubled batch [empty, prompt], eps_u + w (eps_c - eps_u), the
    scheduler's x0 (what the pipeline returns from a one-step call), here at timestep 601."""
    pipe = open_pipeline(folders["pixart"])
    teacher = load_teacher(str(folders["pixart"]))
    pipe.scheduler.set_timesteps(5)
    t = int(pipe.scheduler.timesteps[1])
    embeds, mask, neg, neg_mask = pipe.encode_prompt(PROMPTS[:2], True, device="cpu", max_sequence_length=T5_LENGTH)
    size = {"resolution": torch.tensor([[16.0, 16.0]] * 4), "aspect_ratio": torch.ones(4, 1)}
    both = Conditioning(embeds=torch.cat([neg, embeds]), mask=torch.cat([neg_mask, mask]), extra=size)
    latents = _randn(2, 4, 8, 8, seed=3)
    with torch.no_grad():
        e_u, e_c = _pixart_eps(pipe.transformer, torch.cat([latents] * 2), torch.tensor([t]), both).chunk(2)
        want = pipe.scheduler.step(e_u + 4.5 * (e_c - e_u), t, latents).pred_original_sample
        cond = teacher.encode_prompt(PROMPTS[:2])
        s = teacher.sigmas[t].float().expand(2)
        got = guided(teacher, latents * (1 + s[0] ** 2).sqrt(), s, cond, 4.5)
    torch.testing.assert_close(cond.extra["resolution"], size["resolution"][:2])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_sd3_guided_equals_the_pipeline_call(folders):
    """The guided D's Euler step equals StableDiffusion3Pipeline's own call (one step from t = the
    shifted 0.6) at guidance 3: CLIP-L + CLIP-G + T5 states, pooled projections, empty negative."""
    pipe = open_pipeline(folders["sd3"])
    teacher = load_teacher(str(folders["sd3"]))
    latents = _randn(2, 16, 8, 8, seed=4)
    with torch.no_grad():
        want = pipe(PROMPTS[:2], num_inference_steps=1, sigmas=[0.6], guidance_scale=3.0, latents=latents.clone(),
                    output_type="latent", max_sequence_length=T5_LENGTH).images
        t = pipe.scheduler.sigmas[0]
        cond = teacher.encode_prompt(PROMPTS[:2])
        got = _flow_step_with(lambda x, s: guided(teacher, x, s, cond, 3.0), latents, t, 0.0)
        plain = _flow_step_with(lambda x, s: teacher(x, s, cond), latents, t, 0.0)
    assert 0.6 < float(t) < 1  # the scheduler's shift 3 moved it
    assert cond.embeds.shape == (2, 16 + T5_LENGTH, 32) and cond.pooled.shape == (2, 32)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert (plain - want).abs().max() > 1e-3


def test_flux_embedded_guidance_is_a_network_input(folders):
    """Flux-dev's guidance is carried in cond.extra["guidance"] (default: the pipeline's 3.5) and
    fed to the network, one pass: D's Euler step equals FluxPipeline's own call at guidance 5 on
    the same (packed) latents; another guidance value gives another output."""
    pipe = open_pipeline(folders["flux"])
    teacher = load_teacher(str(folders["flux"]))
    assert teacher.guidance_distilled and teacher.embedded_guidance == 3.5
    latents = _randn(2, 16, 8, 8, seed=5)
    packed = type(pipe)._pack_latents(latents, 2, 16, 8, 8)
    with torch.no_grad():
        out = pipe(PROMPTS[:2], num_inference_steps=1, sigmas=[0.6], guidance_scale=5.0, latents=packed,
                   output_type="latent", max_sequence_length=T5_LENGTH, height=16, width=16).images
        want = type(pipe)._unpack_latents(out, 16, 16, 2)
        t = pipe.scheduler.sigmas[0]
        cond = teacher.encode_prompt(PROMPTS[:2])
        torch.testing.assert_close(cond.extra["guidance"], torch.full((2,), 3.5))
        at5 = Conditioning(embeds=cond.embeds, pooled=cond.pooled, extra={"guidance": torch.full((2,), 5.0)})
        got = _flow_step_with(lambda x, s: teacher(x, s, at5), latents, t, 0.0)
        default = _flow_step_with(lambda x, s: teacher(x, s, cond), latents, t, 0.0)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert (default - want).abs().max() > 1e-4  # the network reads the value


def test_prompts_decoding_and_copies(folders, capsys):
    """Each family's conditioning, unconditional input, truncation warning, decoding (with the
    VAE's shift factor) and shared frozen parts."""
    for kind, family in (("pixart", "PixArt-alpha"), ("sd3", "SD3"), ("flux", "Flux")):
        teacher = load_teacher(str(folders[kind]))
        assert teacher.family == family and teacher.latent and teacher.resolution == 16
        cond = teacher.encode_prompt(PROMPTS)
        assert cond.kind == "text" and cond.batch_size == 4 and cond.null is not None
        torch.testing.assert_close(cond.unconditional().embeds[0], teacher.encode_prompt([""]).embeds[0])
        if kind == "pixart":
            assert cond.mask.shape == (4, T5_LENGTH) and int(cond.null.mask.sum()) == 1  # "" is its eos alone
        capsys.readouterr()
        teacher.encode_prompt(["a " * 40])  # one line from fastdistill
        assert "truncated" in capsys.readouterr().err
        x = _randn(3, teacher.img_channels, 8, 8)
        images = teacher.decode(x)
        vae = teacher.parts.pipe.vae
        want = vae.decode(x / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)).sample.clamp(-1, 1)
        torch.testing.assert_close(images, want)
        assert (kind == "pixart") == (vae.config.shift_factor is None)
        g = copy.deepcopy(teacher)
        assert g.parts is teacher.parts and g.unet is not teacher.unet
        assert all(k.startswith("unet.") for k in g.state_dict())
        teacher.release_text_encoders()
        assert teacher.text_encoders == [] and g.text_encoders == []


def test_flow_fake_weighting_is_the_velocity_loss():
    """dsm_loss(weighting="flow") on D equals the flow objective |v_hat - (eps - x0)|^2 summed per sample."""
    from fastdistill.losses import dsm_loss

    x0, eps, v_hat = _randn(3, 2, 4, 4, seed=1), _randn(3, 2, 4, 4, seed=2), _randn(3, 2, 4, 4, seed=3)
    t = torch.tensor([0.1, 0.5, 0.97])
    sigma = t / (1 - t)
    tb = t.reshape(-1, 1, 1, 1)
    x_t = (1 - tb) * x0 + tb * eps
    want = ((v_hat - (eps - x0)) ** 2).flatten(1).sum(1).mean()
    got = dsm_loss(x_t - tb * v_hat, x0, sigma, weighting="flow", sigma_data=0.5, backend="reference")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------- (c) one distillation step by hand
def _emptied(cond, drop):
    """``cond`` with the dropped samples' text (and mask) replaced by the pipeline's empty-prompt input."""
    def pick(t, u):
        return torch.where(drop.reshape(-1, *[1] * (t.ndim - 1)), u.expand_as(t).to(t.dtype), t)

    null = cond.null
    return Conditioning(embeds=pick(cond.embeds, null.embeds),
                        pooled=None if cond.pooled is None else pick(cond.pooled, null.pooled),
                        mask=None if cond.mask is None else pick(cond.mask, null.mask), extra=cond.extra, null=null)


def adam_first_step(params, grads, lr=1.0, eps=1.0):
    """Adam's first step (betas (0, 0.999)), ``lr g / (|g| + eps)`` (as tests/test_pipelines.py)."""
    for p, gr in zip(params, grads):
        p.data -= lr * gr / ((0.001 * gr * gr / 0.001).sqrt() + eps)


class _Family:
    """The hand-written forms of one family: x_t from (x0, noise level, noise), and x0 from x_t."""

    def __init__(self, teacher):
        self.teacher = teacher
        self.flow = teacher.family in ("SD3", "Flux")
        self.pipe_cls = type(teacher.parts.pipe)
        self.abar = None if self.flow else (1 / (1 + teacher.sigmas**2)).float()

    def level(self, sigma):
        """The family's own time of the drawn noise level: flow t, or the nearest VP timestep."""
        if self.flow:
            return sigma / (1 + sigma)
        return (self.teacher.sigmas.float()[None] - sigma[:, None]).abs().argmin(1)

    def noised(self, x0, level, noise):
        if self.flow:
            t = level.reshape(-1, 1, 1, 1)
            return (1 - t) * x0 + t * noise
        a = self.abar[level].reshape(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def x0_and_target(self, net, x_t, level, cond, w=1.0):
        """Guided x0 and the network's own output (eps or v), guidance on that output as the pipelines do."""
        def raw(c):
            if self.flow:
                return _velocity(self.teacher.family, self.pipe_cls, net, x_t, level, c)
            return _pixart_eps(net, x_t, level, c)

        out = raw(cond)
        if w != 1:
            u = raw(_emptied(cond, torch.ones(cond.batch_size, dtype=torch.bool)))
            out = u + w * (out - u)
        if self.flow:
            return x_t - level.reshape(-1, 1, 1, 1) * out, out
        a = self.abar[level].reshape(-1, 1, 1, 1)
        return (x_t - (1 - a).sqrt() * out) / a.sqrt(), out

    def generate(self, G, z, cond):
        """The generator at t_init 625: VP input sqrt(1 - abar) z; flow input 0.625 z (x0 = 0)."""
        if self.flow:
            t = torch.full((z.shape[0],), 0.625)
            return self.x0_and_target(G, t.reshape(-1, 1, 1, 1) * z, t, cond)[0]
        t = torch.full((z.shape[0],), 625)
        return self.x0_and_target(G, (1 - self.abar[625]).sqrt() * z, t, cond)[0]


#: the fake network's step: large enough to move it, small enough that the generator step stays in
#: a sane range (lr 1 makes D_fake huge, and float32 noise in its cancellations reaches 1e-3 of the step)
FAKE_LR = 0.01


@pytest.mark.parametrize("method", ["sid", "sim", "dmd"])
@pytest.mark.parametrize("kind", ["pixart", "sd3", "flux"])
def test_step_matches_handwritten(tmp_path, folders, prompt_file, kind, method):
    """One engine iteration (teacher noise levels: VP timesteps / flow t uniform in [0.02, 0.98);
    generator at t_init; PixArt and SD3 with all three guidance scales 1.5 and 50% empty fake-step
    prompts, Flux with its embedded guidance; the fake network on the teacher's own objective:
    epsilon MSE / velocity MSE) equals the step written with the raw transformers, as one vector."""
    w = 1.0 if kind == "flux" else 1.5
    cfg = DistillConfig().with_overrides([
        "teacher.kind=checkpoint", f"teacher.path={folders[kind]}", f"prompts={prompt_file}", f"method.name={method}",
        f"method.guidance_teacher={w}", f"method.guidance_fake={w}", f"method.guidance_fake_train={w}",
        "method.uncond_fraction=0.5", "method.generator_loss_scale=1", "method.reuse_samples=false",
        "teacher.dtype=fp32", "optim.lr=1", f"optim.fake_lr={FAKE_LR}", "optim.eps=1", "batch_size=4", "steps=1", "seed=1", f"out_dir={tmp_path}",
        "progress=false", "eval_data=none"])
    d = Distiller(cfg)
    teacher, m = d.teacher, d.method
    fam = _Family(teacher)
    g = torch.Generator().manual_seed(0)
    g.set_state(d.updates.gen.get_state())
    G0, F0 = copy.deepcopy(d.G), copy.deepcopy(d.fake)
    start = {net: {n: p.detach().clone() for n, p in net.named_parameters()} for net in (d.G, d.fake)}
    g_train, f_train = list(G0.unet.parameters()), list(F0.unet.parameters())
    d.train_step()
    shape = (teacher.img_channels, 8, 8)

    # fake step: the teacher's own objective, dropped prompts made empty
    fn = m.draw_fake_noise(4, shape, 0, g, "cpu")
    assert (fn.drop is None) == (kind == "flux")
    cond = fn.cond if fn.drop is None else _emptied(fn.cond, fn.drop)
    with torch.no_grad():
        x_g = fam.generate(G0.unet, fn.z, cond)
    level = fam.level(fn.sigma)
    if fam.flow:  # continuous t in [t_lo, t_hi) / 1000, not on the integer grid
        assert bool(((level >= 0.02) & (level < 0.98)).all()) and not torch.allclose(level * 1000, (level * 1000).round())
    x_t = fam.noised(x_g, level, fn.noise)
    _, out_f = fam.x0_and_target(F0.unet, x_t, level, cond, w)
    target = fn.noise - x_g if fam.flow else fn.noise  # velocity eps - x0, or epsilon
    loss_f = ((out_f - target) ** 2).sum() / 4
    adam_first_step(f_train, torch.autograd.grad(loss_f, f_train), lr=FAKE_LR)
    # generator step: both score networks on the one x_t
    gn = m.draw_generator_noise(4, shape, 0, g, "cpu")
    x_g = fam.generate(G0.unet, gn.z, gn.cond)
    level = fam.level(gn.sigma)
    x_t = fam.noised(x_g, level, gn.eps)
    F0.requires_grad_(False)
    if method == "dmd":
        with torch.no_grad():
            y_real, _ = fam.x0_and_target(teacher.unet, x_t.detach(), level, gn.cond, w)
            y_fake, _ = fam.x0_and_target(F0.unet, x_t.detach(), level, gn.cond, w)
        loss_g = ref.dmd(x_g, y_real, y_fake, None, 1.0).mean()
    else:
        y_real, _ = fam.x0_and_target(teacher.unet, x_t, level, gn.cond, w)
        y_fake, _ = fam.x0_and_target(F0.unet, x_t, level, gn.cond, w)
        loss_g = (ref.sid(x_g, y_real, y_fake, None, 1.2, 1.0) if method == "sid"
                  else ref.sim(x_g, y_real, y_fake, torch.ones(4), 1e-3, True, 1.0)).mean()
    adam_first_step(g_train, torch.autograd.grad(loss_g, g_train))

    for net, want in ((d.fake, F0), (d.G, G0)):
        got, ref_ = dict(net.named_parameters()), dict(want.named_parameters())
        err = sum(float(((got[n] - ref_[n]).detach() ** 2).sum()) for n in got)
        step = sum(float(((got[n] - start[net][n]).detach() ** 2).sum()) for n in got)
        assert step > 0 and (err / step) ** 0.5 < 1e-5  # measured: below 1e-6
    want_sigma = 0.625 / 0.375 if fam.flow else float(teacher.sigmas[625])
    assert m.sigma_init == pytest.approx(want_sigma, rel=1e-6)


# ---------------------------------------------------------------------- the user's path
@pytest.mark.parametrize("kind", ["pixart", "sd3", "flux"])
def test_cli_distill_and_sample(tmp_path, folders, prompt_file, kind):
    """``distill --teacher PIPELINE --prompts FILE`` (the default text-to-image preset; Flux-dev
    with its guidance scales set to 1), then ``sample --prompt`` writing decoded samples, and
    ``export``: a diffusers folder that loads back as the same student (and not the teacher); ``eval``
    of teacher and student with a CLIP score."""
    from fastdistill.cli import main
    from fastdistill.student import Student, load_student

    run = tmp_path / "run"
    args = ["distill", "--teacher", str(folders[kind]), "--prompts", str(prompt_file), "batch_size=2", "steps=2",
            f"out_dir={run}", "progress=false", "ckpt_every=1", "sample_every=0", "teacher.dtype=fp32"]
    if kind == "flux":
        args += ["method.guidance_teacher=1", "method.guidance_fake=1", "method.guidance_fake_train=1"]
    assert main(args) == 0
    student = load_student(run)
    assert student.info.cond_kind == "text" and student.info.step == 2
    out = tmp_path / "grid"
    assert main(["sample", str(run), "--prompt", "a cat", "-n", "2", "--out", str(out)]) == 0
    x = __import__("numpy").load(out.with_suffix(".npz"))["samples"]
    assert x.shape == (2, 3, 16, 16) and abs(x).max() <= 1
    torch.testing.assert_close(torch.as_tensor(x), student.decode(student.sample(2, seed=0, cond="a cat")))
    exported = tmp_path / "exported"  # the pipeline folder with the student's transformer, loaded back
    assert main(["export", str(run), str(exported)]) == 0
    assert (exported / "transformer").is_dir() and not (exported / "unet").exists()
    again = load_student(exported)
    assert again.info.teacher == str(exported) and again.info.sigma_init == student.info.sigma_init
    torch.testing.assert_close(again.sample(2, seed=1, cond="a cat"), student.sample(2, seed=1, cond="a cat"),
                               rtol=1e-5, atol=1e-6)
    teacher = Student(load_teacher(str(folders[kind])), student.info)
    assert (teacher.sample(2, seed=1, cond="a cat") - again.sample(2, seed=1, cond="a cat")).abs().max() > 1e-4
    clip = make_clip_model(tmp_path / "clip")  # eval: the teacher (2 Heun steps) and the student, CLIP-scored
    table = tmp_path / "eval.json"
    assert main(["eval", "--prompts", str(prompt_file), "--teacher", str(folders[kind]), "--steps", "2",
                 "--student", str(run), "--clip", str(clip), "-n", "4", "--out", str(table)]) == 0
    rows = json.loads(table.read_text())["rows"]
    assert len(rows) == 2 and all(-1 <= r["clip"] <= 1 for r in rows)


# (the tiny PixArt-alpha folder takes micro-conditions at a sample size where the alpha pipeline passes
# none, so its own call cannot run it; the Sigma folder is the PixArt case)
@pytest.mark.parametrize("kind", ["pixart_sigma", "sd3", "flux"])
def test_one_step_export_runs_with_the_pipelines_own_call(tmp_path, folders, prompt_file, kind):
    """A one-step export of every transformer family generates the student with the pipeline's own
    call in diffusers alone (the README's snippet, run inside the folder without fastdistill): the
    export's scheduler (DDPM for PixArt; flow-matching Euler without the teacher's shift for SD3 and
    Flux, whose shift would remap ``sigmas=[t_init]``), the prompt length the student was trained
    with, Flux-dev's guidance input and its 2 x 2 latent tokens."""
    from fastdistill.cli import main
    from fastdistill.sampling import draw
    from fastdistill.student import load_student

    run = tmp_path / "run"
    args = ["distill", "--teacher", str(folders[kind]), "--prompts", str(prompt_file), "batch_size=2", "steps=1",
            f"out_dir={run}", "progress=false", "teacher.dtype=fp32", "optim.lr=1e-2"]
    if kind == "flux":
        args += ["method.guidance_teacher=1", "method.guidance_fake=1", "method.guidance_fake_train=1"]
    assert main(args) == 0
    assert main(["export", str(run), str(tmp_path / "exported")]) == 0
    student, prompts = load_student(run), ["a cat", "a dog"]
    (z,), _ = draw(2, student.info.data_shape, 5)
    want = student.sample(2, seed=5, cond=prompts)
    got = run_export_snippet(tmp_path / "exported", prompts, z, tmp_path)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    unscaled = run_export_snippet(tmp_path / "exported", prompts, z, tmp_path, scale_latents=False)
    assert (unscaled - want).abs().max() > 1e-3  # the comparison can fail: the latents' scale shows


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_few_step_flow_export_runs_with_the_pipelines_own_call(tmp_path, folders, prompt_file, kind):
    """A 2-step flow student's export generates with the pipeline's own call, in diffusers alone:
    an unshifted flow-matching Euler scheduler sampling stochastically at the student's timesteps,
    ``(1 - t') x0 + t' eps`` between the steps. The pipeline re-noises from torch's global
    generator, so the student's own chain is fed those draws here (Flux's in its patch-token layout)."""
    from fastdistill.cli import main
    from fastdistill.student import load_student

    run = tmp_path / "run"
    args = ["distill", "--teacher", str(folders[kind]), "--prompts", str(prompt_file), "batch_size=2", "steps=1",
            f"out_dir={run}", "progress=false", "teacher.dtype=fp32", "optim.lr=1e-2", "method.name=dmd",
            "method.steps=2"]
    if kind == "flux":
        args += ["method.guidance_teacher=1", "method.guidance_fake=1", "method.guidance_fake_train=1"]
    assert main(args) == 0
    assert main(["export", str(run), str(tmp_path / "exported")]) == 0
    student, prompts, seed = load_student(run), ["a cat", "a dog"], 7
    B, (C, h, w) = 2, student.info.data_shape
    z = torch.randn((B, C, h, w), generator=torch.Generator().manual_seed(seed))  # what the snippet draws
    got = run_export_snippet(tmp_path / "exported", prompts, z, tmp_path, seed=seed)
    renoise = torch.Generator().manual_seed(seed + 1)
    if kind == "flux":  # drawn as the pipeline's 2 x 2 patch tokens
        eps = torch.randn((B, h * w // 4, C * 4), generator=renoise)
        eps = eps.view(B, h // 2, w // 2, C, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(B, C, h, w)
    else:
        eps = torch.randn((B, C, h, w), generator=renoise)
    sig = list(student.info.step_sigmas)
    want = student._chain(sig[0] * z, student.conditioning(prompts, B), [sig[1] * eps], 1024, sig)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert (got - student._chain(sig[0] * z, student.conditioning(prompts, B), [], 1024, sig)).abs().max() > 1e-3


def test_bad_conditioning(folders):
    pixart, sd3, flux = (load_teacher(str(folders[k])) for k in ("pixart", "sd3", "flux"))
    x4, x16 = torch.zeros(2, 4, 8, 8), torch.zeros(2, 16, 8, 8)
    s = torch.ones(2)
    with pytest.raises(ValueError, match="needs text conditioning"):
        sd3(x16, s, None)
    c = pixart.encode_prompt(PROMPTS[:2])
    with pytest.raises(ValueError, match="T5 attention mask"):
        pixart(x4, s, Conditioning(embeds=c.embeds, extra=c.extra))
    with pytest.raises(ValueError, match="resolution and aspect_ratio micro-conditions"):
        pixart(x4, s, Conditioning(embeds=c.embeds, mask=c.mask))
    with pytest.raises(ValueError, match="width 16, the SD3 network reads 32"):
        sd3(x16, s, c)
    c3 = sd3.encode_prompt(PROMPTS[:2])
    with pytest.raises(ValueError, match="pooled text embeddings of width 32 .got none"):
        sd3(x16, s, Conditioning(embeds=c3.embeds))
    with pytest.raises(ValueError, match="conditioning for 2 samples, the input has 1"):
        sd3(x16[:1], s[:1], c3)
    with pytest.raises(ValueError, match="pure noise"):
        sd3(x16, torch.tensor([1.0, float("inf")]), c3)
    cf = flux.encode_prompt(PROMPTS[:2])
    with pytest.raises(ValueError, match="guidance-distilled"):
        flux(x16, s, Conditioning(embeds=cf.embeds, pooled=cf.pooled))
    with pytest.raises(ValueError, match="must be even"):
        flux(torch.zeros(2, 16, 7, 7), s, cf)
    with pytest.raises(ValueError, match="multiple of 4"):
        load_teacher(str(folders["flux"]), resolution=18)


def test_bad_settings(tmp_path, folders, prompt_file):
    def distiller(kind, *over):
        return Distiller(DistillConfig().with_overrides([
            "teacher.kind=checkpoint", f"teacher.path={folders[kind]}", f"prompts={prompt_file}", "teacher.dtype=fp32",
            f"out_dir={tmp_path / kind}", "progress=false", *over]))

    with pytest.raises(ConfigError, match="guidance_teacher=1.5.*guidance-distilled.*method.guidance_teacher=1"):
        distiller("flux", "method.guidance_teacher=1.5")
    with pytest.raises(ConfigError, match="t_init=1000.*sigma = inf"):
        distiller("sd3", "method.t_init=1000", "method.t_hi=1000")
    with pytest.raises(ConfigError, match="t = 0 is the clean sample"):
        distiller("sd3", "method.t_lo=0")
    with pytest.raises(ConfigError, match="embedded_guidance=4.*not a guidance-distilled"):
        distiller("sd3", "teacher.embedded_guidance=4")
    flux = distiller("flux", "teacher.embedded_guidance=4", *(f"method.guidance_{k}=1" for k in ("teacher", "fake", "fake_train")))
    assert flux.teacher.embedded_guidance == 4.0  # every encoded prompt carries it
    assert torch.equal(flux.conditions.cond.extra["guidance"], torch.full((len(PROMPTS),), 4.0))


def test_unsupported_or_broken_folders(tmp_path, folders):
    from fastdistill.teachers.pipelines import load_pipeline_teacher

    def copy_of(kind, name):
        other = tmp_path / name
        shutil.copytree(folders[kind], other)
        return other, json.loads((other / "model_index.json").read_text())

    other, index = copy_of("flux", "sana")
    (other / "model_index.json").write_text(json.dumps({**index, "_class_name": "SanaPipeline"}))
    with pytest.raises(ValueError, match="SanaPipeline is not supported.*PixArtSigmaPipeline.*FluxPipeline"):
        load_teacher(str(other))
    other, index = copy_of("sd3", "no_t5")
    shutil.rmtree(other / "text_encoder_3")
    with pytest.raises(FileNotFoundError, match="lacks text_encoder_3"):
        load_pipeline_teacher(other)
    other, index = copy_of("pixart", "unet_pixart")
    (other / "model_index.json").write_text(json.dumps({**{k: v for k, v in index.items() if k != "transformer"},
                                                        "unet": ["diffusers", "UNet2DConditionModel"]}))
    with pytest.raises(ValueError, match="PixArtAlphaPipeline is not supported with a unet .UNet2DConditionModel."):
        load_pipeline_teacher(other)
    other, index = copy_of("sd3", "ddim_sd3")
    (other / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": "DDIMScheduler"}))
    with pytest.raises(ValueError, match="needs a flow-matching scheduler"):
        load_pipeline_teacher(other)


def test_an_sd15_preset_on_another_family_warns(tmp_path, folders, prompt_file, capsys):
    """The SD 1.5 recipes record their family: on SD3 the run says its recipe was not made for it;
    `teacher.family=` (any family) silences it."""
    from fastdistill.engine.config import preset_config

    def distiller(folder, *over):
        cfg = preset_config("sid-lsg-sd15").with_overrides([
            f"teacher.path={folder}", f"prompts={prompt_file}", f"out_dir={tmp_path / str(len(over))}", "batch_size=2",
            "progress=false", "threads=1", *over])
        Distiller(cfg).release()
        return capsys.readouterr().out

    assert "this recipe was made for Stable Diffusion 1.x/2.x teachers" in distiller(folders["sd3"])
    assert "recipe was made" not in distiller(folders["sd3"], "teacher.family=")
