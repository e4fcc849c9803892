"""What the iteration benchmark runs: the architectures, the authors'-style eager loops, and the
measurements (share of time in matmul/conv, peak memory; FLOPs and the dense-matmul yardstick
are fastdistill.engine.throughput's).

Shared by ``test_iteration_benchmark.py`` and ``scripts/gpu_check.sh``. The eager loops are
written the way each method's own code is, in fp32:

- SiD (the SiD repository's training loop): a fake-score step on a fresh generator forward
  under ``no_grad``, then a generator step on a new ``z``; unfused losses in plain tensor ops;
  ``nan_to_num`` of every gradient; ``torch.optim.Adam`` with its defaults for the device;
  the EMA parameter by parameter.
- DMD (DMD2's loop): the generator step first, scores without gradient, the distribution
  matching gradient as an MSE against a detached target; then the fake-score step on the same
  generator samples, detached (DMD2 reuses them); the same Adam and EMA.
- On a Stable Diffusion teacher, SiD-LSG's loop (:class:`LatentEagerLoop`).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import torch

from fastdistill.engine.throughput import sync
from fastdistill.methods import karras_sigma

SIGMA_INIT, SIGMA_DATA, ALPHA = 2.5, 0.5, 1.2
P_MEAN, P_STD = -1.2, 1.2


@dataclass(frozen=True)
class Arch:
    """One benchmarked network: ``build()`` gives the teacher (an EDMPrecond)."""

    name: str
    build: Callable[[], torch.nn.Module]
    batch: dict  # device type -> batch size
    note: str


def _ddpmpp(resolution=32, channels=128, mult=(2, 2, 2), blocks=4, attn=(16,)):
    def build():
        from fastdistill.teachers.precond import EDMPrecond

        torch.manual_seed(0)
        return EDMPrecond(img_resolution=resolution, img_channels=3, model_type="SongUNet", model_channels=channels,
                          channel_mult=list(mult), num_blocks=blocks, attn_resolutions=list(attn), dropout=0.13,
                          embedding_type="positional", encoder_type="standard", decoder_type="standard",
                          channel_mult_noise=1, resample_filter=[1, 1])
    return build


def _digits():
    from fastdistill.teachers.digits import load_digits_teacher

    return load_digits_teacher()


PROMPTS = ["a photo of a cat", "a dog", "the digit seven", "a handwritten three", "a red bicycle", "a bowl of fruit",
           "a mountain lake", "a city street"]  # each within the test tokenizer's 16 tokens
_PIPELINE_DIR: list = []


def _sd_unet():
    """A Stable Diffusion 1.5-shaped pipeline at a fifth of its width (35M-parameter
    UNet2DConditionModel, 32x32x4 latents, a 256-wide CLIP text encoder), built once per process
    in a temporary folder, with a prompt file beside it."""
    import sys
    import tempfile
    from pathlib import Path

    from fastdistill.teachers import load_teacher

    if not _PIPELINE_DIR:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.tiny_pipelines import make_sd_pipeline

        root = Path(tempfile.mkdtemp(prefix="fastdistill-sd-unet-"))
        make_sd_pipeline(root / "pipe", size="mid", sample_size=32)
        (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
        _PIPELINE_DIR.append(root)
    torch.manual_seed(0)
    return load_teacher(str(_PIPELINE_DIR[0] / "pipe"))


def prompt_file() -> str:
    """The prompt file of the latent architecture (after its first build)."""
    return str(_PIPELINE_DIR[0] / "prompts.txt")


ARCHS = {
    # EDM's CIFAR-10 DDPM++ configuration (random weights): 56M parameters, 32x32x3.
    "ddpmpp": Arch("ddpmpp", _ddpmpp(), {"cpu": 2, "cuda": 64}, "EDM CIFAR-10 DDPM++ (SongUNet 128x[2,2,2], 4 blocks)"),
    # The shipped digits teacher (the main job's network): 0.75M parameters, 8x8x1, 10 classes.
    "digits": Arch("digits", _digits, {"cpu": 32, "cuda": 256}, "shipped digits U-Net (main job)"),
    # A latent text-to-image teacher: SD 1.5's UNet2DConditionModel layout at 1/5 width (35M parameters).
    "sdunet": Arch("sdunet", _sd_unet, {"cpu": 2, "cuda": 64}, "SD-1.5-shaped UNet2DConditionModel, 1/5 width, 32x32x4"),
    # Smoke-test size of the DDPM++ layout.
    "tiny": Arch("tiny", _ddpmpp(resolution=16, channels=32, mult=(1, 2), blocks=1, attn=(8,)), {"cpu": 4, "cuda": 8},
                 "DDPM++ layout, 16x16, 32 channels"),
}


def _labels(net, n, device):
    k = int(getattr(net, "label_dim", 0) or 0)
    if not k:
        return None
    return torch.nn.functional.one_hot(torch.randint(0, k, (n,), device=device), k).float()


def _bcast(s):
    return s.reshape(-1, 1, 1, 1)


def _dmd2_loss(x_g, y_real, y_fake, batch: int):
    """DMD2's generator loss: the normalised distribution-matching gradient as an MSE against a
    detached target (the scores computed without gradient)."""
    with torch.no_grad():
        w = (x_g - y_real).abs().mean(dim=[1, 2, 3], keepdim=True).clip(min=1e-5)
        grad = torch.nan_to_num((y_fake - y_real) / w)
    return 0.5 * torch.nn.functional.mse_loss(x_g, (x_g - grad).detach(), reduction="sum") / batch


class _Loop:
    """What both authors'-style loops share: the three networks copied from the teacher's network,
    Adam with betas (0, 0.999), SiD's gradient clean-up (for the methods in ``CLEANS``), the EMA
    parameter by parameter, and the two orders of an iteration (SiD: fake step on fresh samples,
    then the generator step; DMD2: the generator step, then the fake step on its samples)."""

    HALFLIFE = 500e3  # EMA half-life in images
    CLEANS = ("sid",)

    def _setup(self, net: torch.nn.Module, method: str, batch: int, device: torch.device, lr: float, shape):
        if method not in ("sid", "dmd"):
            raise ValueError(method)
        self.method, self.batch, self.device, self.shape = method, batch, device, shape
        self.teacher = net.to(device).eval().requires_grad_(False)
        self.G = copy.deepcopy(self.teacher).requires_grad_(True)
        self.fake = copy.deepcopy(self.teacher).requires_grad_(True)
        self.ema = copy.deepcopy(self.teacher).eval().requires_grad_(False)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=lr, betas=(0.0, 0.999), eps=1e-8)
        self.opt_f = torch.optim.Adam(self.fake.parameters(), lr=lr, betas=(0.0, 0.999), eps=1e-8)
        self.nimg = 0

    def _clean(self, net):
        if self.method in self.CLEANS:
            for p in net.parameters():
                if p.grad is not None:
                    torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)

    def _ema(self):
        hl = min(self.HALFLIFE, 0.05 * self.nimg)
        beta = 0.5 ** (self.batch / max(hl, 1e-8))
        with torch.no_grad():
            for p_ema, p in zip(self.ema.parameters(), self.G.parameters()):
                p_ema.copy_(p.detach().lerp(p_ema, beta))
        self.nimg += self.batch

    def step(self):
        if self.method == "sid":
            cond = self._cond()
            with torch.no_grad():
                x_g = self._sample(cond)
            self._fake_step(x_g, cond)
            self._generator_step()
        else:
            x_g, cond = self._generator_step()
            self._fake_step(x_g, cond)
        self._ema()


class EagerLoop(_Loop):
    """One authors'-style iteration (fp32) of SiD or DMD; ``step()`` runs it."""

    def __init__(self, teacher: torch.nn.Module, method: str, batch: int, device: torch.device, lr: float = 1e-5):
        self._setup(teacher, method, batch, device, lr,
                    (teacher.img_channels, teacher.img_resolution, teacher.img_resolution))

    def _cond(self):
        return _labels(self.teacher, self.batch, self.device)

    def _sample(self, labels):
        return self._generate(self._z(), labels)

    def _z(self):
        return torch.randn(self.batch, *self.shape, device=self.device)

    def _generate(self, z, labels):
        return self.G(z * SIGMA_INIT, torch.full((z.shape[0],), SIGMA_INIT, device=self.device), labels)

    def _fake_step(self, x_g, labels):
        self.G.eval().requires_grad_(False)
        self.fake.train().requires_grad_(True)
        sigma = _bcast((torch.randn(self.batch, device=self.device) * P_STD + P_MEAN).exp())
        pred = self.fake(x_g + sigma * torch.randn_like(x_g), sigma.flatten(), labels)
        lam = (sigma**2 + SIGMA_DATA**2) / (sigma * SIGMA_DATA) ** 2
        loss = (lam * (pred - x_g) ** 2).sum(dim=[1, 2, 3]).mean()
        self.opt_f.zero_grad()
        loss.backward()
        self._clean(self.fake)
        self.opt_f.step()

    def _generator_step(self):
        self.G.train().requires_grad_(True)
        self.fake.eval().requires_grad_(False)
        labels = _labels(self.teacher, self.batch, self.device)
        x_g = self._generate(self._z(), labels)
        sig = _bcast(karras_sigma(torch.rand(self.batch, device=self.device) * 0.8, 0.002, 80.0, 7.0))
        x_t = x_g + sig * torch.randn_like(x_g)
        if self.method == "sid":
            y_real = self.teacher(x_t, sig.flatten(), labels)
            y_fake = self.fake(x_t, sig.flatten(), labels)
            nan = torch.isnan(y_real) | torch.isnan(y_fake) | torch.isnan(x_g)
            w = (x_g - y_real).abs().mean(dim=[1, 2, 3], keepdim=True).clip(min=1e-5).detach()
            loss = (y_real - y_fake) * ((y_real - x_g) - ALPHA * (y_real - y_fake)) / w
            loss = torch.where(nan, torch.zeros_like(loss), loss)
            loss = loss.sum(dim=[1, 2, 3]).mean()
        else:
            with torch.no_grad():
                y_real = self.teacher(x_t.detach(), sig.flatten(), labels)
                y_fake = self.fake(x_t.detach(), sig.flatten(), labels)
            loss = _dmd2_loss(x_g, y_real, y_fake, self.batch)
        self.opt_g.zero_grad()
        loss.backward()
        self._clean(self.G)
        self.opt_g.step()
        return x_g.detach(), labels


class LatentEagerLoop(_Loop):
    """SiD-LSG's loop (its sid_training_loop.py; DMD2's order for DMD), fp32, guidance 1, on a
    Stable Diffusion teacher: the prompts tokenized and encoded at every step, the generator the
    UNet at t_init = 625 on ``sqrt(1 - abar) z`` read as ``pred_original_sample``, timesteps
    uniform in [20, 980), the fake network on the epsilon MSE, the SiD loss with alpha 1 (DMD2's
    MSE against a detached target for DMD), Adam betas (0, 0.999), the EMA parameter by parameter."""

    T_INIT, T_LO, T_HI = 625, 20, 980
    HALFLIFE = 50e3  # SiD-LSG's 0.05 M images
    CLEANS = ("sid", "dmd")

    def __init__(self, teacher, method: str, batch: int, device: torch.device, lr: float = 1e-6):
        import random

        self._setup(teacher.unet, method, batch, device, lr,
                    (teacher.img_channels, teacher.img_resolution, teacher.img_resolution))
        self.pipe = teacher.parts.pipe
        self.abar = (1.0 / (1.0 + teacher.sigmas.double() ** 2)).float().to(device)
        self.rng = random.Random(0)

    def _cond(self):
        prompts = [self.rng.choice(PROMPTS) for _ in range(self.batch)]
        tok = self.pipe.tokenizer(prompts, padding="max_length", max_length=self.pipe.tokenizer.model_max_length,
                                  truncation=True, return_tensors="pt")
        with torch.no_grad():
            return self.pipe.text_encoder(tok.input_ids.to(self.device))[0]

    def _x0(self, unet, x_t, t, emb):
        a = _bcast(self.abar[t])
        eps = unet(x_t, t, encoder_hidden_states=emb).sample
        return (x_t - (1 - a).sqrt() * eps) / a.sqrt()

    def _sample(self, emb):
        self.G.eval().requires_grad_(False)
        return self._generate(emb)

    def _generate(self, emb):
        t = torch.full((self.batch,), self.T_INIT, device=self.device)
        z = torch.randn(self.batch, *self.shape, device=self.device)
        return self._x0(self.G, (1 - self.abar[self.T_INIT]).sqrt() * z, t, emb)

    def _noised(self, x0):
        t = torch.randint(self.T_LO, self.T_HI, (self.batch,), device=self.device)
        noise = torch.randn_like(x0)
        a = _bcast(self.abar[t])
        return a.sqrt() * x0 + (1 - a).sqrt() * noise, t, noise

    def _fake_step(self, x_g, emb):
        self.fake.train().requires_grad_(True)
        x_t, t, noise = self._noised(x_g)
        loss = ((self.fake(x_t, t, encoder_hidden_states=emb).sample - noise) ** 2).sum() / self.batch
        self.opt_f.zero_grad()
        loss.backward()
        self._clean(self.fake)
        self.opt_f.step()

    def _generator_step(self):
        self.G.train().requires_grad_(True)
        self.fake.eval().requires_grad_(False)
        emb = self._cond()
        x_g = self._generate(emb)
        x_t, t, _ = self._noised(x_g)
        if self.method == "sid":
            y_fake = self._x0(self.fake, x_t, t, emb)
            y_real = self._x0(self.teacher, x_t, t, emb)
            with torch.no_grad():
                w = (x_g - y_real).abs().mean(dim=[1, 2, 3], keepdim=True).clip(min=1e-5)
            loss = ((y_real - y_fake) * (y_fake - x_g) / w).sum() / self.batch
        else:
            with torch.no_grad():
                y_fake = self._x0(self.fake, x_t.detach(), t, emb)
                y_real = self._x0(self.teacher, x_t.detach(), t, emb)
            loss = _dmd2_loss(x_g, y_real, y_fake, self.batch)
        self.opt_g.zero_grad()
        loss.backward()
        self._clean(self.G)
        self.opt_g.step()
        self.G.eval().requires_grad_(False)
        return x_g.detach(), emb


def eager_loop(teacher, method: str, batch: int, device: torch.device):
    """The authors'-style loop for this teacher: SiD-LSG's for a text-to-image pipeline, else SiD's / DMD2's."""
    cls = LatentEagerLoop if hasattr(teacher, "encode_prompt") else EagerLoop
    return cls(teacher, method, batch, device)


def engine(teacher: torch.nn.Module, method: str, batch: int, device: str, out_dir, options: list[str]):
    """fastdistill's Distiller on the same teacher; ``options`` are extra config overrides (a
    text-to-image teacher gets the eager loop's prompts, recipe and loss scales)."""
    from fastdistill.engine import DistillConfig, Distiller

    latent = ["prompts=" + prompt_file(), "teacher.dtype=fp32", "method.generator_loss_scale=1", "optim.lr=1e-6"] + (
        ["method.alpha=1"] if method == "sid" else []) if hasattr(teacher, "encode_prompt") else []
    cfg = DistillConfig().with_overrides([
        "teacher.kind=network", "teacher.init=teacher", f"method.name={method}", f"batch_size={batch}",
        f"device={device}", f"out_dir={out_dir}", "resume=none", "progress=false", "nvtx=false",
        "log.tensorboard=false", "prompt_cache=none", *latent, *options])
    return Distiller(cfg, teacher=teacher)


# ----------------------------------------------------------------------------- measurements






DENSE_OPS = ("conv", "mm", "matmul", "linear", "bmm", "addmm", "baddbmm", "attention")


def dense_time(step: Callable[[], object], device) -> tuple[float, float]:
    """(matmul/convolution kernel time, all operator time) of one call, in seconds: profiler
    self times (which add the profiler's per-operator overhead to the second)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.device(device).type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        step()
        sync(device)
    total = dense = 0.0
    for e in prof.key_averages():
        t = (e.self_device_time_total if cuda else e.self_cpu_time_total) * 1e-6
        total += t
        if any(k in e.key.lower() for k in DENSE_OPS):
            dense += t
    return dense, total


def peak_memory(step: Callable[[], object], device) -> int:
    """Peak bytes allocated during one call above what was allocated before it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return peak




def amdahl(dense_share: float, speedup_of_dense: float) -> float:
    """Speed-up of the whole when only the dense share gets ``speedup_of_dense`` faster."""
    if not math.isfinite(dense_share):
        return float("nan")
    return 1.0 / ((1.0 - dense_share) + dense_share / speedup_of_dense)


def parameters(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def median(xs: list[float]) -> float:
    s = sorted(xs)
    k = len(s) // 2
    return s[k] if len(s) % 2 else 0.5 * (s[k - 1] + s[k])
