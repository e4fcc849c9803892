"""What a run makes of its student: samples in the generator's steps, its quality now, pictures,
the student record that checkpoints and exports carry, and the final outputs of a finished run
(student.safetensors, samples.npz)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..plotting import image_grid, scatter_panels
from ..sampling import draw
from .evaluator import Quality
from .monitor import progress_bar
from .run_state import PIXEL_STUDENT_FILE, StudentInfo, write_student_file

SAMPLE_CHUNK = 1024  # samples generated per call: bounds the memory of thousands of final samples


class StudentOutputs:
    """The student's outputs for one run. ``ema``: the default network (the EMA generator);
    ``arch_config``: how the generator is rebuilt (None: an unregistered class, not exported);
    ``evaluator``: the run's :class:`LoopEvaluator` on rank 0, else None."""

    def __init__(self, cfg, method, teacher, traits, conditions, evaluator, ema: torch.nn.Module,
                 arch_config: Optional[dict], device: torch.device, out_dir: Path):
        self.cfg, self.method, self.teacher, self.traits, self.conditions = cfg, method, teacher, traits, conditions
        self.evaluator, self.ema, self.arch_config, self.device, self.out_dir = evaluator, ema, arch_config, device, out_dir
        self.shape, self.label_dim = tuple(traits.data_shape), traits.label_dim
        self._pictures_off = False

    def info(self, step: int) -> StudentInfo:
        """What a trained student is, for ``fastdistill.student`` (checkpoints and exports carry it)."""
        t = self.cfg.teacher
        teacher = {"analytic": f"analytic:{t.name}", "checkpoint": t.path}.get(t.kind)
        kind = "text" if self.conditions is not None else "labels" if self.label_dim else "none"
        few = self.method.steps > 1
        return StudentInfo(method=self.cfg.method.name, sigma_init=self.method.sigma_init,
                           sigma_end=self.method.sigma_end,
                           step_sigmas=tuple(float(v) for v in self.method.step_sigmas) if few else (),
                           data_shape=self.shape, label_dim=self.label_dim,
                           cond_kind=kind, teacher=teacher, step=step)

    @torch.no_grad()
    def samples(self, n: int, seed: int, net=None, progress: bool = False) -> torch.Tensor:
        """``n`` samples of ``net`` (default: the EMA) in the generator's steps, from
        :func:`fastdistill.sampling.draw`, the draw ``fastdistill sample`` and ``eval`` use too, on the CPU;
        ``progress``: a bar over them."""
        net = net if net is not None else self.ema
        prompts = None if self.conditions is None else self.conditions.cond[torch.arange(n) % len(self.conditions)]
        (z, *renoise), cond = draw(n, self.shape, seed, label_dim=self.label_dim, cond=prompts, noises=self.method.steps)
        chain_eps = torch.stack(renoise, 1) if renoise else None
        was = net.training
        net.eval()
        out = []
        bar = progress_bar(n, 0, progress, desc="final samples")
        for i in range(0, n, SAMPLE_CHUNK):
            c = None if cond is None else cond[i:i + SAMPLE_CHUNK].to(self.device)
            e = None if chain_eps is None else chain_eps[i:i + SAMPLE_CHUNK].to(self.device)
            out.append(self.method.generate(net, z[i:i + SAMPLE_CHUNK].to(self.device), c, e).cpu())
            if bar is not None:
                bar.update(len(out[-1]))
        if bar is not None:
            bar.close()
        net.train(was)
        return torch.cat(out)

    @torch.no_grad()
    def quality(self, net=None) -> Quality:
        """The student's quality now (``net``: default the EMA), with the run's baselines."""
        ev = self.evaluator
        return ev.quality(self.samples(ev.n, seed=9_000_003, net=net))

    def picture(self, path: Path, step: int, net=None) -> Path:
        """A grid of samples of ``net`` (default: the EMA; decoded by the VAE for latent
        teachers; for text teachers the first training prompts in turn), or for vector data a
        scatter beside data and teacher."""
        if self.traits.decodes:
            return image_grid(self.teacher.decode(self.samples(16, seed=9_000_004, net=net)), path)
        if len(self.shape) == 3:
            return image_grid(self.samples(64, seed=9_000_004, net=net), path)
        x = self.samples(min(self.cfg.eval_samples, 2000), seed=9_000_004, net=net)
        panels = []
        if self.evaluator is not None:
            self.evaluator.quality()
            panels = [("data", self.evaluator.data[:2000]), ("teacher (Heun, 35 evals)", self.evaluator.teacher_x[:2000])]
        k = self.method.steps
        panels.append((f"student ({k} step{'s' if k > 1 else ''}, step {step})", x))
        return scatter_panels(panels, path)

    def picture_during_training(self, step: int, net) -> None:
        """``samples-<step>.png`` of ``net``; without the optional plotting library, said once and skipped."""
        if self._pictures_off:
            return
        try:
            self.picture(self.out_dir / f"samples-{step:08d}.png", step, net)
        except ImportError as exc:
            self._pictures_off = True
            print(f"fastdistill: pictures skipped: {exc}")

    def final_sample_count(self) -> int:
        """How many samples the finished run writes to samples.npz (``final_samples``)."""
        n = self.cfg.final_samples
        if n == -1:
            return min(self.cfg.eval_samples, 4096) if self.evaluator is not None else 0
        return n

    def write_final(self, step: int, net) -> Optional[str]:
        """student.safetensors and, where asked for, samples.npz of the finished run (the samples' path)."""
        self.export(self.out_dir / PIXEL_STUDENT_FILE, step, net)
        n = self.final_sample_count()
        if not n:
            return None
        x = self.samples(n, seed=9_000_005, net=net, progress=self.cfg.progress)
        samples = str(self.out_dir / "samples.npz")
        np.savez(samples, samples=x.numpy())
        return samples

    def export(self, path: Path, step: int, net=None) -> Optional[Path]:
        """The EMA generator's denoiser (or ``net``) in the teacher checkpoint format (``load_teacher``
        reads it); the generator is ``D(sigma_init z; sigma_init)``, and its further steps' levels are in the
        student record. Skipped for unregistered classes."""
        if self.arch_config is None:
            return None
        return write_student_file(self.ema if net is None else net, self.info(step), path)
