"""Adapters: a diffusers `UNet2DModel` with a DDPM/VP scheduler (and a flow-matching network) as an EDM denoiser.

docs/algorithms.md section 0. A discrete VP model at timestep t sees `x_vp = sqrt(abar_t) x0 +
sqrt(1 - abar_t) eps`. Dividing by sqrt(abar_t) gives the EDM/VE form `x = x0 + sigma_t eps`
with `sigma_t = sqrt((1 - abar_t) / abar_t)`, so for an EDM input (x, sigma):

    x_vp  = x / sqrt(1 + sigma^2)                      (= sqrt(abar) x)
    t     = the training timestep whose sigma_t is nearest to sigma (in log sigma),
            or a fractional timestep interpolated linearly in log sigma ("interpolate")
    epsilon prediction:  D = x - sigma * eps_hat
    v prediction:        D = (x_vp - sigma * v_hat) / sqrt(1 + sigma^2)   (x0 = sqrt(abar) x_vp - sqrt(1-abar) v)
    sample prediction:   D = model output

Learned-variance models (2C output channels) use the first C channels. The adapter exposes
`round_sigma` (snap to the grid in "nearest" mode), `sigma_min` / `sigma_max` (the schedule's
range; the EDM sampler clips to it), `sigma_data = 0.5`, `img_channels`, `img_resolution` and
`label_dim` (the UNet's `num_class_embeds`, fed as class indices = argmax of the one-hot).

:class:`FlowMatchDenoiser` is the flow-matching counterpart (section 9): ``x_t = x / (1 + sigma)``
at ``t = sigma / (1 + sigma)``, ``D = x_t - t v_hat``.

diffusers is an optional dependency, imported only when a model is loaded.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from torch import nn

from ..conditioning import labels_of

__all__ = ["DiffusersDenoiser", "FlowMatchDenoiser", "load_diffusers_teacher", "vp_sigmas_from_alphas_cumprod"]


def _require_diffusers():
    try:
        import diffusers  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "loading a diffusers teacher needs the optional dependency 'diffusers': pip install diffusers"
        ) from exc
    return diffusers


def vp_sigmas_from_alphas_cumprod(alphas_cumprod) -> torch.Tensor:
    """sigma_t = sqrt((1 - abar_t) / abar_t), float64."""
    a = torch.as_tensor(alphas_cumprod, dtype=torch.float64).reshape(-1)
    if a.numel() < 2 or (a <= 0).all() or (a > 1).any() or (a < 0).any():
        raise ValueError("alphas_cumprod must be a 1-D schedule with values in (0, 1]")
    return ((1.0 - a) / a).sqrt()


class DiffusersDenoiser(nn.Module):
    """Wrap an epsilon/v/sample-prediction `UNet2DModel` and its DDPM schedule as a Denoiser.

    Args:
        unet: a diffusers `UNet2DModel` (or any module called as `unet(x, t, class_labels=...)`
            returning a tensor or an object with `.sample`).
        alphas_cumprod: the training schedule's cumulative alphas (T,), e.g.
            `DDPMScheduler.alphas_cumprod`.
        prediction_type: "epsilon" (default), "v_prediction" or "sample".
        timestep_mode: "nearest" (default) or "interpolate".
        sigma_data: EDM's data std (0.5 for images in [-1, 1]).
    """

    def __init__(
        self,
        unet: nn.Module,
        alphas_cumprod,
        *,
        prediction_type: str = "epsilon",
        timestep_mode: str = "nearest",
        sigma_data: float = 0.5,
        img_channels: Optional[int] = None,
        img_resolution: Optional[int] = None,
        label_dim: Optional[int] = None,
    ):
        super().__init__()
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"prediction_type must be 'epsilon', 'v_prediction' or 'sample', got {prediction_type!r}")
        if timestep_mode not in ("nearest", "interpolate"):
            raise ValueError(f"timestep_mode must be 'nearest' or 'interpolate', got {timestep_mode!r}")
        self.unet = unet
        sig = vp_sigmas_from_alphas_cumprod(alphas_cumprod)
        finite = torch.isfinite(sig) & (sig > 0)
        if finite.sum() < 2:
            raise ValueError("the schedule has fewer than two finite, positive noise levels")
        if not (sig[finite][1:] > sig[finite][:-1]).all():
            raise ValueError("the schedule's sigma_t must increase with t")
        self.register_buffer("sigmas", sig, persistent=False)  # (T,), index = timestep
        self.register_buffer("valid_t", torch.nonzero(finite).reshape(-1), persistent=False)
        self.prediction_type = prediction_type
        self.timestep_mode = timestep_mode
        self.sigma_data = float(sigma_data)
        cfg = getattr(unet, "config", None)
        get = (lambda k, d=None: getattr(cfg, k, d) if not isinstance(cfg, Mapping) else cfg.get(k, d)) if cfg is not None else (lambda k, d=None: d)
        self.img_channels = int(img_channels if img_channels is not None else get("in_channels", 3))
        res = img_resolution if img_resolution is not None else get("sample_size", None)
        if isinstance(res, (tuple, list)):
            if len(res) != 2 or res[0] != res[1]:
                raise ValueError(f"non-square sample_size {tuple(res)} is not supported (EDM teachers are square)")
            res = res[0]
        if res is None:
            raise ValueError("cannot tell the image resolution: the UNet config has no sample_size; pass img_resolution")
        self.img_resolution = int(res)
        n_cls = label_dim if label_dim is not None else (get("num_class_embeds", None) or 0)
        self.label_dim = int(n_cls)
        self.sigma_min = float(sig[self.valid_t[0]])
        self.sigma_max = float(sig[self.valid_t[-1]])

    # -- timesteps -----------------------------------------------------------------------
    def timestep_for(self, sigma: torch.Tensor) -> torch.Tensor:
        """Timestep(s) for EDM noise level(s): long (nearest) or float (interpolate)."""
        s = torch.as_tensor(sigma, dtype=torch.float64, device=self.sigmas.device).clamp_min(1e-20)
        log_grid = self.sigmas[self.valid_t].log()
        ls = s.log()
        if self.timestep_mode == "nearest":
            j = (ls.reshape(-1, 1) - log_grid[None]).abs().argmin(1).reshape(s.shape)
            return self.valid_t[j]
        ls = ls.clamp(float(log_grid[0]), float(log_grid[-1]))
        hi = torch.searchsorted(log_grid, ls.reshape(-1).contiguous()).clamp(1, log_grid.numel() - 1)
        lo = hi - 1
        w = (ls.reshape(-1) - log_grid[lo]) / (log_grid[hi] - log_grid[lo])
        t = self.valid_t[lo].double() + w * (self.valid_t[hi] - self.valid_t[lo]).double()
        return t.reshape(s.shape)

    def round_sigma(self, sigma):
        """Snap sigma to the discrete grid (nearest mode); identity when interpolating."""
        s = torch.as_tensor(sigma)
        if self.timestep_mode != "nearest":
            return s
        return self.sigmas[self.timestep_for(s)].to(dtype=s.dtype if s.is_floating_point() else torch.float64,
                                                      device=s.device)

    # -- forward -------------------------------------------------------------------------
    def network_inputs(self, cond, batch: int, device, dtype) -> dict:
        """The keyword inputs of the network call besides ``(x_vp, t)``: class indices (argmax of
        the one-hot labels) for a class-conditional UNet; subclasses read text conditioning."""
        class_labels = labels_of(cond)
        if self.label_dim:
            if class_labels is None:
                raise ValueError(f"this teacher is class-conditional (label_dim {self.label_dim}); pass class_labels")
            return {"class_labels": class_labels.reshape(batch, -1).argmax(1).to(device)}
        if class_labels is not None:
            raise ValueError("class_labels given but the teacher is unconditional (label_dim 0)")
        return {}

    def network_output(self, x_vp: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        """The raw network output at the VP input ``x_vp`` and timesteps ``t``; subclasses whose
        network takes other arguments override it (the conversion to ``D`` stays in ``forward``)."""
        return _sample_of(self.unet(x_vp, t, **self.network_inputs(cond, x_vp.shape[0], x_vp.device, x_vp.dtype)))

    def forward(self, x: torch.Tensor, sigma, cond=None, *, class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        if class_labels is not None:
            cond = labels_of(cond, class_labels)
        x, s = _checked_inputs(x, sigma, self.img_channels)
        B = x.shape[0]
        t = self.timestep_for(s).to(x.device)
        if self.timestep_mode == "interpolate":
            t = t.to(torch.float32)
        s4 = s.reshape(B, 1, 1, 1)
        scale = (1.0 + s4**2).rsqrt()
        x_vp = x * scale
        out = self.network_output(x_vp.to(_network_dtype(self.unet)), t, cond).to(torch.float32)
        if out.shape[1] == 2 * self.img_channels:  # learned variance: the first half is the mean
            out = out[:, : self.img_channels]
        if out.shape != x.shape:
            raise RuntimeError(f"the UNet returned shape {tuple(out.shape)} for input {tuple(x.shape)}")
        if self.prediction_type == "epsilon":
            return x - s4 * out
        if self.prediction_type == "v_prediction":
            return (x_vp - s4 * out) * scale
        return out

    def extra_repr(self) -> str:
        return (f"prediction_type={self.prediction_type!r}, timestep_mode={self.timestep_mode!r}, "
                f"T={self.sigmas.numel()}, sigma_range=[{self.sigma_min:.4g}, {self.sigma_max:.4g}], "
                f"label_dim={self.label_dim}")


def _checked_inputs(x: torch.Tensor, sigma, img_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` as fp32 (B, C, H, W) and ``sigma`` as fp32 (B,), or a clear error."""
    if x.ndim != 4 or x.shape[1] != img_channels:
        raise ValueError(f"x must be (B, {img_channels}, H, W), got {tuple(x.shape)}")
    B = x.shape[0]
    s = torch.as_tensor(sigma, device=x.device).to(torch.float32).reshape(-1)
    if s.numel() == 1:
        s = s.expand(B)
    if s.numel() != B:
        raise ValueError(f"sigma must be a scalar or (B,) = ({B},)")
    return x.to(torch.float32), s


def _network_dtype(network: nn.Module) -> torch.dtype:
    return next((p.dtype for p in network.parameters()), torch.float32)


def _sample_of(out) -> torch.Tensor:
    """The output tensor of a diffusers model call (an output object, a tuple or a tensor)."""
    out = getattr(out, "sample", out)
    return out[0] if isinstance(out, (tuple, list)) else out


class FlowMatchDenoiser(nn.Module):
    """A flow-matching velocity network (SD3, Flux: diffusers' ``FlowMatchEulerDiscreteScheduler``
    family) as a Denoiser in the VE form (docs/algorithms.md section 9).

    The network was trained on ``x_t = (1 - t) x0 + t eps`` to predict ``v = eps - x0``. A VE
    input ``x = x0 + sigma eps`` is that ``x_t`` scaled by ``1 + sigma``, with ``t = sigma / (1 + sigma)``;
    so ``x_t = x / (1 + sigma)``, the network sees ``timestep_scale * t`` (SD3: 1000 t, Flux: t), and
    ``D = x_t - t v_hat``. Time is continuous: no grid, ``round_sigma`` is the identity. ``sigma = inf``
    (t = 1, pure noise) has no VE form and is refused. Subclasses implement :meth:`network_output`
    (the network's own call); ``unet`` holds the network whatever its kind (the engine casts and
    checkpoints ``teacher.unet``).
    """

    #: the methods draw t uniformly and fit the fake network to the velocity (section 9)
    flow = True

    def __init__(self, network: nn.Module, *, timestep_scale: float, img_channels: int, img_resolution: int,
                 num_train_timesteps: int = 1000, sigma_data: float = 1.0):
        super().__init__()
        if not (num_train_timesteps >= 2 and timestep_scale > 0):
            raise ValueError(f"need num_train_timesteps >= 2 and timestep_scale > 0, got {num_train_timesteps}, "
                             f"{timestep_scale}")
        self.unet = network
        self.timestep_scale = float(timestep_scale)
        self.num_train_timesteps = int(num_train_timesteps)
        self.img_channels = int(img_channels)
        self.img_resolution = int(img_resolution)
        self.label_dim = 0
        self.sigma_data = float(sigma_data)
        # the training timesteps' range t in [1/T, 1 - 1/T], as VE levels (what samplers clip to)
        self.sigma_min = 1.0 / (self.num_train_timesteps - 1)
        self.sigma_max = float(self.num_train_timesteps - 1)

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def network_output(self, x_t: torch.Tensor, timestep: torch.Tensor, cond) -> torch.Tensor:
        """The network's velocity prediction at ``x_t`` and its own timestep convention."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, sigma, cond=None) -> torch.Tensor:
        x, s = _checked_inputs(x, sigma, self.img_channels)
        B = x.shape[0]
        if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
            raise ValueError("a flow-matching teacher takes finite sigma >= 0 (t = sigma / (1 + sigma) < 1); pure "
                             "noise, t = 1, has no VE form x = x0 + sigma eps")
        t = s / (1 + s)
        t4 = t.reshape(B, 1, 1, 1)
        x_t = x / (1 + s.reshape(B, 1, 1, 1))
        v = self.network_output(x_t.to(_network_dtype(self.unet)), t * self.timestep_scale, cond).to(torch.float32)
        if v.shape != x.shape:
            raise RuntimeError(f"the network returned shape {tuple(v.shape)} for input {tuple(x.shape)}")
        return x_t - t4 * v

    def extra_repr(self) -> str:
        return f"flow matching, timestep = {self.timestep_scale:g} t, T={self.num_train_timesteps}"


_SCHEDULER_FILES = ("scheduler_config.json",)


def _find_scheduler_config(root: Path, unet_dir: Path) -> Optional[Path]:
    for d in (root / "scheduler", unet_dir, root, unet_dir.parent / "scheduler"):
        for name in _SCHEDULER_FILES:
            if (d / name).is_file():
                return d / name
    return None


def _alphas_cumprod_from_config(cfg: Mapping[str, Any], source: str) -> torch.Tensor:
    _require_diffusers()
    from diffusers import DDPMScheduler

    if not any(k in cfg for k in ("beta_schedule", "beta_start", "beta_end", "trained_betas", "num_train_timesteps")):
        raise ValueError(
            f"{source}: scheduler {cfg.get('_class_name', '?')} has no DDPM/VP beta schedule; only "
            "discrete VP (DDPM/DDIM-style) epsilon/v/sample-prediction schedulers are supported"
        )
    known = set(__import__("inspect").signature(DDPMScheduler.__init__).parameters) - {"self"}
    kw = {k: v for k, v in cfg.items() if k in known}
    try:
        sched = DDPMScheduler(**kw)
    except Exception as exc:
        raise ValueError(f"{source}: cannot build a DDPM schedule from the scheduler config: {exc}") from exc
    return torch.as_tensor(sched.alphas_cumprod, dtype=torch.float64)


def read_config(path) -> dict:
    """A pipeline's JSON config file as a dict; a malformed one is a ValueError naming the file."""
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"{path} is not valid JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a JSON object, got a {type(config).__name__}")
    return config


def load_diffusers_teacher(
    path: Union[str, os.PathLike],
    *,
    scheduler_config: Union[None, str, os.PathLike, Mapping[str, Any]] = None,
    timestep_mode: str = "nearest",
    prediction_type: Optional[str] = None,
    sigma_data: float = 0.5,
    device: Union[str, torch.device] = "cpu",
) -> DiffusersDenoiser:
    """Load a local diffusers `UNet2DModel` (never from the hub) as a frozen `DiffusersDenoiser`.

    `path` is a pipeline folder (`unet/` + `scheduler/`), or a UNet folder (`config.json` +
    weights) with `scheduler_config.json` beside it, in it, or given as `scheduler_config`
    (a path or a dict). The prediction type comes from the scheduler config unless given.
    """
    _require_diffusers()
    from diffusers import UNet2DModel

    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"no such diffusers model folder: {root}")
    unet_dir = root / "unet" if (root / "unet" / "config.json").is_file() else root
    if not (unet_dir / "config.json").is_file():
        raise FileNotFoundError(f"{root}: no UNet config.json (looked in {root} and {root / 'unet'})")
    ucfg = read_config(unet_dir / "config.json")
    if ucfg.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise ValueError(f"{unet_dir}: a {ucfg.get('_class_name')} is not supported (only UNet2DModel)")

    if scheduler_config is None:
        sc_path = _find_scheduler_config(root, unet_dir)
        if sc_path is None:
            raise FileNotFoundError(
                f"{root}: no scheduler_config.json found (looked in scheduler/, the UNet folder and {root}); "
                "pass scheduler_config="
            )
        scfg, source = read_config(sc_path), str(sc_path)
    elif isinstance(scheduler_config, Mapping):
        scfg, source = dict(scheduler_config), "scheduler_config"
    else:
        scfg, source = read_config(scheduler_config), str(scheduler_config)
    abar = _alphas_cumprod_from_config(scfg, source)

    unet = UNet2DModel.from_pretrained(str(unet_dir), local_files_only=True)
    pred = prediction_type or scfg.get("prediction_type", "epsilon")
    den = DiffusersDenoiser(unet, abar, prediction_type=pred, timestep_mode=timestep_mode, sigma_data=sigma_data)
    return den.to(device).eval().requires_grad_(False)
