"""Sample-quality evaluation of students and teachers: ``fastdistill eval``.

    from fastdistill.evaluation import evaluate_models, Model
    res = evaluate_models([Model.teacher("digits", steps=18, solver="heun"),
                           Model.student("runs/digits")], data="digits", n=898)
    print(format_table(res)); res.save("eval.json")

What is measured, per model (a teacher with the EDM Heun/Euler sampler at any number of steps,
or a distilled student in one step -- or k steps for methods that support it):

- images: FID, KID, precision and recall (torch-fidelity) in the feature space of the shipped
  digits classifier (``extractor="digits"``; ``"inception"`` needs local weights);
- vector data (the 2-D toys): sliced Wasserstein-2 distance and MMD (RBF kernel);
- wall time per sample (after one warm-up batch), and network evaluations (NFE) per sample.

Every model is scored with the same number of samples ``n`` against the same reference set,
and the table's first line is the data-versus-data baseline at that ``n``: the noise floor of
the metric. For a finite dataset (digits: 1797 images) the data are split once (fixed seed)
into two halves: the *reference* half that every model is compared with, and the *held-out*
half that gives the baseline (``n`` is capped at the held-out size, 898 for digits; FID is
biased upwards at small ``n``, so only compare numbers measured at the same ``n``). For an
infinite toy distribution, reference and baseline are independent draws of ``n`` points.

The same functions serve the training loop's periodic quality tracking
(:class:`LoopEvaluator`: FID every ``eval_every`` steps into the JSONL log, a curve
``fid_vs_iterations.png`` at the end) and the digits report (``fastdistill.engine.digits``).
Pictures are drawn with PIL (no matplotlib needed): :func:`line_plot`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

__all__ = ["Model", "EvalResult", "ReferenceData", "reference_data", "quality", "evaluate_models",
           "format_table", "eval_draw", "teacher_samples", "student_samples", "load_student_generator", "resolve_teacher",
           "LoopEvaluator", "line_plot", "add_eval_parser", "eval_command", "DIGITS_N"]

#: samples per FID on digits: the size of the held-out half of the 1797 images
DIGITS_N = 898
SPLIT_SEED = 20240601
SAMPLE_SEED = 1


class EvalError(ValueError):
    """A bad evaluation input (missing checkpoint, shape mismatch, ...)."""


# ----------------------------------------------------------------------------- reference data
@dataclass
class ReferenceData:
    name: str
    reference: torch.Tensor  # what every model is compared with
    heldout: Optional[torch.Tensor]  # the baseline set (same n as the models); None = draw fresh (toys)
    kind: str  # "image" | "vector"
    source: Any = None

    @property
    def data_shape(self) -> tuple:
        return tuple(self.reference.shape[1:])

    def max_n(self) -> Optional[int]:
        return None if self.heldout is None else int(self.heldout.shape[0])

    def baseline_set(self, n: int) -> torch.Tensor:
        if self.heldout is not None:
            return self.heldout[:n]
        x, _ = self.source.sample(n, torch.Generator().manual_seed(SPLIT_SEED + 1))
        return x.float()


_REF_CACHE: dict = {}


def reference_data(data="digits", n: Optional[int] = None) -> ReferenceData:
    """The reference / held-out split of a dataset (a ``load_dataset`` name or path, or a DataSource).

    Finite data are permuted with a fixed seed and halved (reference = first half). Infinite
    toys: ``n`` fresh reference points (default 4096) and a fresh baseline draw of the same n.
    """
    from .data import DataSource, load_dataset

    key = (data, n) if isinstance(data, (str, os.PathLike)) else None
    if key is not None and key in _REF_CACHE:
        return _REF_CACHE[key]
    src = data if isinstance(data, DataSource) else load_dataset(data)
    name = getattr(src, "name", str(data))
    kind = "image" if len(tuple(src.data_shape)) == 3 else "vector"
    if hasattr(src, "data") and torch.is_tensor(getattr(src, "data")):
        x = src.data.float()
        if x.shape[0] < 4:
            raise EvalError(f"dataset {name!r} has {x.shape[0]} samples; need at least 4 to split into reference/held-out")
        perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(SPLIT_SEED))
        half = (x.shape[0] + 1) // 2
        ref = ReferenceData(name, x[perm[:half]], x[perm[half:]], kind, src)
    else:
        m = int(n or 4096)
        xr, _ = src.sample(m, torch.Generator().manual_seed(SPLIT_SEED))
        ref = ReferenceData(name, xr.float(), None, kind, src)
    if key is not None:
        _REF_CACHE[key] = ref
    return ref


def _check_shape(x: torch.Tensor, ref: ReferenceData, what: str) -> None:
    if tuple(x.shape[1:]) != ref.data_shape:
        raise EvalError(f"{what} produces samples of shape {tuple(x.shape[1:])} but the data {ref.name!r} have shape "
                        f"{ref.data_shape}; evaluate against data of the model's shape (--data)")


def quality(x: torch.Tensor, ref: ReferenceData, *, full: bool = True, extractor: str = "digits", seed: int = 0) -> dict:
    """Metrics of samples ``x`` against ``ref.reference``.

    Images: ``fid`` (and with ``full`` also ``kid_mean``, ``kid_std``, ``precision``, ``recall``).
    Vectors: ``sw`` (sliced Wasserstein-2) and with ``full`` also ``mmd`` (RBF, unbiased).
    """
    x = x.detach().float().cpu()
    _check_shape(x, ref, "the model")
    bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(1)
    out: dict = {}
    if bad.any():
        out["nonfinite_samples"] = int(bad.sum())
        x = torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
    if ref.kind == "image":
        from .metrics import compute_metrics

        n = min(x.shape[0], ref.reference.shape[0])
        if n < 2:
            raise EvalError(f"need at least 2 samples, got {x.shape[0]}")
        # KID on 50 random halves: subsets of all n samples would be n identical permutations
        # (a zero spread, and 10x the time at n=898)
        m = compute_metrics(x, ref.reference, extractor=extractor, fid=True, kid=full, prc=full,
                            kid_subset_size=max(1, min(1000, n // 2)) if full else None, kid_subsets=50,
                            prc_neighborhood=min(3, n - 1), seed=seed)
        out.update({k: m[k] for k in ("fid", "kid_mean", "kid_std", "precision", "recall") if k in m})
    else:
        from .metrics import sliced_wasserstein
        from .metrics.distances import mmd_rbf

        out["sw"] = float(sliced_wasserstein(x, ref.reference, seed=seed))
        if full:
            out["mmd"] = float(mmd_rbf(x[:4096], ref.reference[:4096], seed=seed))
    return out


# ----------------------------------------------------------------------------- models
def resolve_teacher(spec, device="cpu"):
    """A teacher Denoiser from ``"digits"`` (the shipped one), ``"analytic:NAME"`` (exact toy
    mixtures, e.g. analytic:ring8), a checkpoint path, or a Denoiser object (returned as is)."""
    if not isinstance(spec, (str, os.PathLike)):
        return spec
    s = os.fspath(spec)
    if s == "digits" and not os.path.exists(s):
        from .teachers.digits import load_digits_teacher

        return load_digits_teacher(device=device)
    if s.startswith("analytic:"):
        from .engine.build import build_analytic_teacher

        return build_analytic_teacher(s.split(":", 1)[1])
    if not os.path.exists(s):
        raise FileNotFoundError(f"teacher {s!r}: no such file or directory (use 'digits' for the shipped digits "
                                f"teacher, analytic:NAME for an exact toy teacher, or a checkpoint path)")
    from .teachers.loading import load_teacher

    return load_teacher(s, device=device)


def _fingerprint(net) -> str:
    if not isinstance(net, torch.nn.Module):
        return f"{type(net).__name__}:{id(net)}"
    h = hashlib.sha1(type(net).__name__.encode())
    with torch.no_grad():
        for name, p in net.state_dict().items():
            if p.numel():
                t = p.detach().double()
                h.update(f"{name}{tuple(p.shape)}{float(t.sum()):.10e}{float(t.abs().sum()):.10e}".encode())
    return h.hexdigest()


_TEACHER_CACHE: dict = {}


def eval_draw(n: int, shape: tuple, label_dim: int, seed: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Latents ``z ~ N(0, I)`` of ``shape`` and, for a conditional model, class-balanced one-hot
    labels (each class ``n // label_dim`` or one more times, in a seeded random order).

    Every evaluation draw (teacher samplers, students, the training loop's FID) uses this, so a
    seed means the same labels everywhere. Balanced rather than random because FID in
    class-discriminative features reacts strongly to class proportions: on digits, random labels
    made the teacher's FID (Heun, 15 NFE) over four draws 0.150 +- 0.033, balanced ones 0.118 +- 0.018.
    """
    g = torch.Generator().manual_seed(int(seed))
    labels = None
    if label_dim:
        idx = (torch.arange(n) % label_dim)[torch.randperm(n, generator=g)]
        labels = torch.nn.functional.one_hot(idx, label_dim).float()
    return torch.randn((n, *shape), generator=g), labels


def teacher_samples(teacher, n: int, steps: int = 18, solver: str = "heun", seed: int = SAMPLE_SEED,
                    batch_size: int = 1024, cache: bool = True) -> tuple[torch.Tensor, float]:
    """``n`` teacher samples (EDM sampler) and the wall time per sample in seconds (cached per
    teacher weights / n / steps / solver / seed, so the loop's baseline and the report share them;
    also on disk in ``$FASTDISTILL_EVAL_CACHE`` when set, for the report's worker processes)."""
    from .sampling import sample

    key = (_fingerprint(teacher), int(n), int(steps), solver, int(seed))
    if cache and key in _TEACHER_CACHE:
        return _TEACHER_CACHE[key]
    disk = os.environ.get("FASTDISTILL_EVAL_CACHE") if cache else None
    fname = Path(disk) / f"teacher-{key[0][:16]}-n{n}-{solver}{steps}-seed{seed}-balanced.pt" if disk else None
    if fname is not None and fname.is_file():
        try:
            d = torch.load(fname, weights_only=True)
            _TEACHER_CACHE[key] = (d["x"], float(d["sec"]))
            return _TEACHER_CACHE[key]
        except Exception:
            pass
    _, labels = eval_draw(n, (), int(getattr(teacher, "label_dim", 0) or 0), seed)
    sample(teacher, min(n, 8), seed=seed, num_steps=steps, solver=solver,
           class_labels=None if labels is None else labels[:8])  # warm-up
    t0 = time.perf_counter()
    x = sample(teacher, n, seed=seed, num_steps=steps, solver=solver, batch_size=batch_size, class_labels=labels).float().cpu()
    sec = (time.perf_counter() - t0) / max(n, 1)
    if cache:
        _TEACHER_CACHE[key] = (x, sec)
    if fname is not None:
        tmp = fname.with_suffix(f".tmp{os.getpid()}")
        torch.save({"x": x, "sec": sec}, tmp)
        os.replace(tmp, fname)
    return x, sec


def teacher_nfe(steps: int, solver: str) -> int:
    return 2 * steps - 1 if solver == "heun" else steps


def load_student_generator(path, device="cpu"):
    """(network, info) for a student: a distillation checkpoint / run directory, or an exported
    ``student.safetensors``. info: data_shape, label_dim, sigma_init, sigma_end, method, step, teacher_path."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"student checkpoint {str(path)!r} not found (give a run directory, a checkpoint "
                                f"directory, or an exported student.safetensors)")
    if p.is_file():
        from .teachers.checkpoint import _parse_config, _read_safetensors
        from .teachers.loading import load_teacher

        _, meta = _read_safetensors(str(p))
        extra = _parse_config(meta.get("config", "{}"), str(p)).get("extra", {}) if "config" in meta else {}
        if not extra.get("one_step_generator"):
            raise EvalError(f"{p} is a teacher checkpoint, not an exported student (pass it as --teacher)")
        net = load_teacher(str(p), device=device)
        from .sampling import data_shape_of
        from .student import trained_sigma_end

        info = dict(data_shape=data_shape_of(net), label_dim=int(getattr(net, "label_dim", 0) or 0),
                    sigma_init=float(extra["sigma_init"]), sigma_end=trained_sigma_end({}), method=extra.get("method", "?"),
                    step=extra.get("step"), teacher_path=None)
        return net, info
    from .student import load_student, trained_sigma_end

    try:
        net, state = load_student(p, device=device)
    except (KeyError, ValueError) as exc:
        raise EvalError(f"{p}: cannot load a student from it: {exc}") from exc
    cfg = state.get("config", {})
    info = dict(data_shape=tuple(state["data_shape"]), label_dim=int(state.get("label_dim", 0)),
                sigma_init=float(state["sigma_init"]), method=cfg.get("method", {}).get("name", "?"),
                sigma_end=trained_sigma_end(cfg.get("method", {})), step=state.get("step"), teacher_path=cfg.get("teacher", {}).get("path") or None,
                teacher_kind=cfg.get("teacher", {}).get("kind"), teacher_name=cfg.get("teacher", {}).get("name"))
    return net, info


MULTISTEP_METHODS = ("sign", "ign")


@torch.no_grad()
def student_samples(net, info: dict, n: int, steps: int = 1, seed: int = SAMPLE_SEED,
                    batch_size: int = 1024, device="cpu") -> tuple[torch.Tensor, float]:
    """``n`` student samples and the wall time per sample (after a warm-up call).

    One step: ``x = D_theta(sigma_init z; sigma_init, c)``. k > 1 steps (methods that were
    trained for it, sign/ign): ``x_{j+1} = D_theta(x_j + sigma_j eps_j; sigma_init)`` with the
    decreasing Karras levels of ``fastdistill.student.multistep_schedule`` down to the student's
    trained ``method.sign_sigma_end`` (ALGORITHMS.md section 5).
    """
    steps = int(steps)
    if steps < 1:
        raise EvalError(f"student steps must be >= 1, got {steps}")
    from .student import multistep_schedule

    levels = multistep_schedule(steps, float(info["sigma_init"]), sigma_end=info["sigma_end"])
    if steps > 1 and info.get("method") not in MULTISTEP_METHODS:
        raise EvalError(f"a {info.get('method')!r} student is a one-step generator; multi-step sampling is for "
                        f"{', '.join(MULTISTEP_METHODS)} students")
    shape, label_dim, s = tuple(info["data_shape"]), int(info["label_dim"]), float(info["sigma_init"])
    z, labels = eval_draw(n, shape, label_dim, seed)
    g = torch.Generator().manual_seed(int(seed) + 1)
    eps = [torch.randn((n, *shape), generator=g) * lv for lv in levels]

    def run(lo, hi):
        li = None if labels is None else labels[lo:hi].to(device)
        sig = torch.full((hi - lo,), s, device=device)
        x = net(z[lo:hi].to(device) * s, sig, li).float()
        for e in eps:
            x = net(x + e[lo:hi].to(device), sig, li).float()
        return x.cpu()

    run(0, min(n, 8))  # warm-up
    t0 = time.perf_counter()
    out = torch.cat([run(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]) if n else torch.zeros((0, *shape))
    return out, (time.perf_counter() - t0) / max(n, 1)


@dataclass
class Model:
    """What to evaluate: ``Model.teacher(spec, steps, solver)`` or ``Model.student(path, steps)``."""

    kind: str  # teacher | student
    spec: Any  # teacher spec / student path
    steps: int = 1
    solver: str = "heun"
    label: str = ""

    @classmethod
    def teacher(cls, spec="digits", steps: int = 18, solver: str = "heun", label: str = "") -> "Model":
        if solver not in ("heun", "euler"):
            raise EvalError(f"solver must be heun or euler, got {solver!r}")
        if int(steps) < 1:
            raise EvalError(f"teacher steps must be >= 1, got {steps}")
        return cls("teacher", spec, int(steps), solver, label)

    @classmethod
    def student(cls, path, steps: int = 1, label: str = "") -> "Model":
        return cls("student", path, int(steps), "", label)


@dataclass
class EvalResult:
    data: str
    n: int
    metric_space: str
    baseline: dict
    reference_n: int = 0
    rows: list = field(default_factory=list)
    elapsed_s: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path) -> str:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return str(path)


def _default_data_for(models: Sequence[Model], loaded: dict) -> Any:
    for m in models:
        obj = loaded.get(id(m))
        if m.kind == "teacher" and isinstance(m.spec, str):
            if m.spec == "digits":
                return "digits"
            if m.spec.startswith("analytic:") and obj is not None and hasattr(obj, "sample"):
                from .data import ToyDataset

                return ToyDataset(m.spec.split(":", 1)[1], lambda n, g, t=obj: t.sample(n, generator=g),
                                  dim=int(torch.Size(obj.data_shape).numel()))
        if m.kind == "student" and obj is not None:
            info = obj[1]
            if info.get("teacher_path") == "digits" or (info.get("teacher_path") or "").endswith("digits_teacher.safetensors"):
                return "digits"
            if info.get("teacher_kind") == "analytic":
                from .engine.build import build_analytic_teacher
                from .data import ToyDataset

                t = build_analytic_teacher(info["teacher_name"])
                return ToyDataset(info["teacher_name"], lambda n, g, t=t: t.sample(n, generator=g),
                                  dim=int(torch.Size(t.data_shape).numel()))
    return None


def evaluate_models(models: Sequence[Model], data=None, n: Optional[int] = None, *, extractor: str = "digits",
                    seed: int = SAMPLE_SEED, full: bool = True, device="cpu", progress=None) -> EvalResult:
    """Sample every model with the same ``n`` and seed, score it against the same reference set.

    ``data``: dataset name/path/DataSource (default: digits for digits teachers/students, the
    toy distribution for analytic teachers). ``n``: samples per model (default: the held-out
    size for finite data, 898 on digits; 4096 for toys).
    """
    t_start = time.perf_counter()
    if not models:
        raise EvalError("nothing to evaluate: give at least one teacher or student")
    loaded: dict = {}
    for m in models:  # load everything first: fail fast on a missing checkpoint
        if m.kind == "teacher":
            loaded[id(m)] = resolve_teacher(m.spec, device=device)
        else:
            loaded[id(m)] = load_student_generator(m.spec, device=device)
    if data is None:
        data = _default_data_for(models, loaded)
        if data is None:
            raise EvalError("cannot tell which data to compare with: pass data= (--data), e.g. digits or a .npz file")
    ref = reference_data(data, n)
    cap = ref.max_n()
    if n is None:
        n = cap if cap is not None else ref.reference.shape[0]
    n = int(n)
    if cap is not None and n > cap:
        raise EvalError(f"n={n} is larger than the held-out half of {ref.name!r} ({cap} samples), which gives the "
                        f"data-vs-data baseline at the same n; use n <= {cap}")
    if n < 2:
        raise EvalError(f"n must be >= 2, got {n}")
    for m in models:
        obj = loaded[id(m)]
        shape = tuple(obj[1]["data_shape"]) if m.kind == "student" else None
        if shape is None:
            from .sampling import data_shape_of

            shape = data_shape_of(obj)
        if tuple(shape) != ref.data_shape:
            raise EvalError(f"{m.kind} {m.spec!s} makes samples of shape {tuple(shape)} but the data {ref.name!r} "
                            f"have shape {ref.data_shape}")
    space = "digits classifier features (FID/KID/precision/recall)" if ref.kind == "image" else \
        "sliced Wasserstein-2 / MMD in data space"
    if ref.kind == "image" and extractor != "digits":
        space = f"{extractor} features (FID/KID/precision/recall)"
    base = quality(ref.baseline_set(n), ref, full=full, extractor=extractor)
    res = EvalResult(data=ref.name, n=n, metric_space=space, baseline=base, reference_n=int(ref.reference.shape[0]))
    for m in models:
        obj = loaded[id(m)]
        if m.kind == "teacher":
            x, sec = teacher_samples(obj, n, steps=m.steps, solver=m.solver, seed=seed)
            nfe = teacher_nfe(m.steps, m.solver)
            label = m.label or f"teacher {m.solver.capitalize()} {m.steps} step{'s' if m.steps > 1 else ''}"
            row = dict(model="teacher", source=str(m.spec) if isinstance(m.spec, (str, os.PathLike)) else type(obj).__name__,
                       solver=m.solver, steps=m.steps, nfe=nfe)
        else:
            net, info = obj
            x, sec = student_samples(net, info, n, steps=m.steps, seed=seed, device=device)
            label = m.label or f"student {info.get('method', '?')} {m.steps} step{'s' if m.steps > 1 else ''}"
            row = dict(model="student", source=str(m.spec), method=info.get("method"), train_step=info.get("step"),
                       steps=m.steps, nfe=m.steps)
        row.update(label=label, ms_per_sample=1000.0 * sec, **quality(x, ref, full=full, extractor=extractor))
        res.rows.append(row)
        if progress:
            progress(row)
    res.elapsed_s = time.perf_counter() - t_start
    return res


def _fmt(v, digits=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.{digits}f}" if abs(v) < 1e4 else f"{v:.3g}"
    return str(v)


def format_table(res: EvalResult) -> str:
    """A plain-text table: baseline first, then one line per model."""
    image = "fid" in res.baseline
    cols = (["fid", "kid_mean", "precision", "recall"] if image else ["sw", "mmd"])
    heads = {"fid": "FID", "kid_mean": "KID", "precision": "prec", "recall": "recall", "sw": "SW2", "mmd": "MMD"}
    lines = [f"{res.data}: n={res.n} samples per model against {res.reference_n} reference points; "
             f"metrics: {res.metric_space}; lower FID/KID/SW2/MMD and higher precision/recall are better"]
    head = f"{'model':<34} {'NFE':>4} " + " ".join(f"{heads[c]:>8}" for c in cols) + f" {'ms/sample':>10}"
    lines += [head, "-" * len(head)]
    lines.append(f"{'data vs data (held-out, same n)':<34} {'-':>4} " + " ".join(f"{_fmt(res.baseline.get(c), 4 if c in ('kid_mean', 'mmd', 'sw') else 3):>8}" for c in cols) + f" {'-':>10}")
    for r in res.rows:
        lines.append(f"{r['label'][:34]:<34} {r['nfe']:>4} "
                     + " ".join(f"{_fmt(r.get(c), 4 if c in ('kid_mean', 'mmd', 'sw') else 3):>8}" for c in cols)
                     + f" {r['ms_per_sample']:>10.3f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the training loop's hook
class LoopEvaluator:
    """Periodic quality for the distillation loop on image data (digits FID).

    Built by the loop when ``eval_data`` (or ``data``) names a dataset of the student's shape.
    ``baselines()``: data-vs-data FID and the teacher's 35-NFE Heun FID at ``n`` (computed once,
    cached); ``__call__(samples)``: FID of the student's samples.
    """

    def __init__(self, data, n: int, teacher, extractor: str = "digits"):
        self.ref = reference_data(data)
        cap = self.ref.max_n()
        self.n = int(min(n, cap) if cap is not None else n)
        self.teacher = teacher
        self.extractor = extractor
        self._base: Optional[dict] = None

    def baselines(self) -> dict:
        if self._base is None:
            b = {"fid_data_vs_data": quality(self.ref.baseline_set(self.n), self.ref, full=False, extractor=self.extractor)["fid"]}
            x, _ = teacher_samples(self.teacher, self.n, steps=18, solver="heun")
            b["fid_teacher_heun35"] = quality(x, self.ref, full=False, extractor=self.extractor)["fid"]
            self._base = b
        return dict(self._base)

    def __call__(self, x: torch.Tensor) -> float:
        return quality(x, self.ref, full=False, extractor=self.extractor)["fid"]


def plot_history(history: Sequence[dict], path, key: str = "fid_student", initial_key: str = "fid_initial",
                 title: str = "FID (digits features) vs distillation iterations", hlines=None, label="student") -> Optional[Path]:
    """One-curve plot of ``key`` from a run's JSONL history (rows with ``step``)."""
    pts = [(0, r[initial_key]) for r in history if initial_key in r]
    pts += [(r["step"], r[key]) for r in history if key in r]
    if len(pts) < 1:
        return None
    return line_plot({label: pts}, path, title=title, xlabel="distillation iterations", ylabel=key.split("_")[0].upper(),
                     hlines=hlines or {})


def read_jsonl(path) -> list:
    rows = []
    p = Path(path)
    if p.is_file():
        for line in p.read_text().splitlines():
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return rows


def plot_run_curve(out_dir, metrics: Optional[dict] = None) -> Optional[Path]:
    """``fid_vs_iterations.png`` (images) or ``sw_vs_iterations.png`` (vector data) in a run
    directory, from its ``metrics.jsonl``, with the data-vs-data and teacher levels dashed."""
    out_dir = Path(out_dir)
    hist = read_jsonl(out_dir / "metrics.jsonl")
    q = "fid" if any("fid_student" in r or "fid_initial" in r for r in hist) else "sw"
    if not any(f"{q}_student" in r or f"{q}_initial" in r for r in hist):
        return None
    base = {}
    for r in hist:
        base.update({k: r[k] for k in r if k.startswith(q) and ("teacher" in k or "data_vs_data" in k)})
    names = {f"{q}_teacher_heun35": "teacher Heun 35 NFE", f"{q}_data_vs_data": "data vs data"}
    hl = {names.get(k, k): v for k, v in base.items()}
    method = ""
    cfg = out_dir / "config.json"
    if cfg.is_file():
        try:
            method = json.loads(cfg.read_text())["method"]["name"]
        except (KeyError, ValueError):
            pass
    title = ("FID (digits features) vs distillation iterations" if q == "fid"
             else "sliced Wasserstein-2 to the data vs distillation iterations")
    return plot_history(hist, out_dir / f"{q}_vs_iterations.png", key=f"{q}_student", initial_key=f"{q}_initial",
                        title=title, hlines=hl, label=f"{method or 'student'} (1 step)")


# ----------------------------------------------------------------------------- plotting (PIL)
_PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (140, 86, 75)]


def line_plot(curves: dict, path, *, title: str = "", xlabel: str = "", ylabel: str = "", logy: bool = True,
              hlines: Optional[dict] = None, size=(720, 440)) -> Path:
    """Curves ``{label: [(x, y), ...]}`` plus dashed horizontal reference lines ``{label: y}``
    on a (log-y) plot, drawn with PIL. Non-finite / non-positive values (log scale) are skipped."""
    from PIL import Image, ImageDraw

    hlines = {k: v for k, v in (hlines or {}).items() if v is not None and math.isfinite(v) and (v > 0 or not logy)}
    W, H = size
    L, R, T, B = 70, 190, 34, 50
    im = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(im)
    pts = {k: [(float(a), float(b)) for a, b in v if b is not None and math.isfinite(b) and (b > 0 or not logy)]
           for k, v in curves.items()}
    xs = [a for v in pts.values() for a, _ in v] or [0.0, 1.0]
    ys = [b for v in pts.values() for _, b in v] + list(hlines.values())
    ys = ys or [1.0]
    x0, x1 = min(xs), max(xs)
    if x1 <= x0:
        x1 = x0 + 1
    f = (lambda y: math.log10(y)) if logy else (lambda y: y)
    y0, y1 = f(min(ys)), f(max(ys))
    if y1 - y0 < 1e-9:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pad = 0.05 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad

    def X(a):
        return L + (a - x0) / (x1 - x0) * (W - L - R)

    def Y(b):
        return T + (1 - (f(b) - y0) / (y1 - y0)) * (H - T - B)

    d.rectangle([L, T, W - R, H - B], outline=(0, 0, 0))
    # y ticks: 1-2-5 per decade on log scale, 6 even ticks otherwise
    if logy:
        ticks = [m * 10 ** e for e in range(int(math.floor(y0)) - 1, int(math.ceil(y1)) + 1) for m in (1, 2, 5)]
        ticks = [t for t in ticks if y0 <= math.log10(t) <= y1]
    else:
        ticks = [10 ** y0 * 0 + y0 + i * (y1 - y0) / 5 for i in range(6)]
    for t in ticks:
        yy = Y(t)
        d.line([L, yy, W - R, yy], fill=(232, 232, 232))
        d.text((6, yy - 6), f"{t:g}", fill=(0, 0, 0))
    for i in range(6):
        a = x0 + i * (x1 - x0) / 5
        xx = X(a)
        d.line([xx, H - B, xx, H - B + 4], fill=(0, 0, 0))
        d.text((xx - 12, H - B + 8), f"{a:.0f}", fill=(0, 0, 0))
    d.text((L, 8), title, fill=(0, 0, 0))
    d.text(((L + W - R) / 2 - 40, H - 18), xlabel, fill=(0, 0, 0))
    d.text((6, T - 22), ylabel + (" (log)" if logy else ""), fill=(0, 0, 0))
    ly = T
    for j, (name, v) in enumerate(hlines.items()):
        col = (110, 110, 110) if j % 2 == 0 else (170, 120, 40)
        yy = Y(v)
        for a in range(L, W - R, 10):
            d.line([a, yy, min(a + 5, W - R), yy], fill=col, width=1)
        d.line([W - R + 10, ly + 6, W - R + 30, ly + 6], fill=col)
        d.text((W - R + 34, ly), f"{name} {v:.3g}"[:26], fill=(0, 0, 0))
        ly += 16
    for j, (name, v) in enumerate(pts.items()):
        col = _PALETTE[j % len(_PALETTE)]
        v = sorted(v)
        if len(v) > 1:
            d.line([(X(a), Y(b)) for a, b in v], fill=col, width=2)
        for a, b in v:
            d.ellipse([X(a) - 2, Y(b) - 2, X(a) + 2, Y(b) + 2], fill=col)
        d.line([W - R + 10, ly + 6, W - R + 30, ly + 6], fill=col, width=3)
        last = f" {v[-1][1]:.3g}" if v else ""
        d.text((W - R + 34, ly), f"{name}{last}"[:26], fill=(0, 0, 0))
        ly += 16
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


# ----------------------------------------------------------------------------- command line
def _steps_list(text: str) -> list[int]:
    try:
        out = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not out or any(v < 1 for v in out):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return out


def eval_command(args: argparse.Namespace) -> int:
    """``fastdistill eval``: print the table, write JSON. Exit 2 on bad inputs."""
    torch.set_num_threads(max(1, int(args.threads)))
    models: list[Model] = []
    solvers = [s for s in args.solver.split(",") if s]
    try:
        for t in args.teacher or []:
            for solver in solvers:
                for k in args.steps:
                    models.append(Model.teacher(t, k, solver))
        for s in args.student or []:
            for k in args.student_steps:
                models.append(Model.student(s, k))
        res = evaluate_models(models, data=args.data, n=args.n, extractor=args.extractor, full=not args.fid_only,
                              device=args.device)
    except (FileNotFoundError, EvalError, ValueError, ImportError) as exc:
        print(f"fastdistill eval: error: {exc}", file=sys.stderr)
        return 2
    print(format_table(res))
    out = args.out or "eval.json"
    print(f"wrote {res.save(out)} ({res.elapsed_s:.1f} s)")
    return 0


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``fastdistill eval`` to an argparse ``subparsers`` object."""
    p = subparsers.add_parser(
        "eval", help="sample quality (FID/KID/precision/recall or SW2/MMD) and time per sample of students and teachers",
        description="Sample students (one step, or k for sign/ign) and teachers (EDM Heun/Euler at any number of "
                    "steps), score them against the data with the same n, print a table and write JSON.")
    p.add_argument("--student", action="append", metavar="CKPT",
                   help="distillation run/checkpoint directory or exported student.safetensors (repeatable)")
    p.add_argument("--student-steps", type=_steps_list, default=[1], metavar="K[,K...]",
                   help="student sampling steps (default 1; >1 only for sign/ign students)")
    p.add_argument("--teacher", action="append", metavar="SPEC",
                   help="'digits' (shipped), analytic:NAME (exact toy), or a teacher checkpoint path (repeatable)")
    p.add_argument("--steps", type=_steps_list, default=[18], metavar="N[,N...]",
                   help="teacher sampler steps, e.g. 1,2,4,8,18 (Heun: 2N-1 evaluations, Euler: N)")
    p.add_argument("--solver", default="heun", help="heun, euler, or heun,euler (default heun)")
    p.add_argument("--data", default=None, help="dataset name or path (default: inferred: digits / the toy)")
    p.add_argument("-n", type=int, default=None, help=f"samples per model (default: the held-out size, {DIGITS_N} on digits)")
    p.add_argument("--extractor", default="digits", choices=("digits", "inception"), help="FID feature space for images")
    p.add_argument("--fid-only", action="store_true", help="images: FID only (skip KID and precision/recall)")
    p.add_argument("--out", default=None, help="JSON output path (default: eval.json)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.set_defaults(func=eval_command)
    return p
