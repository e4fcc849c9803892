"""``fastdistill eval --prompts``: text-to-image students and teachers on the same prompts and noise.

    from fastdistill.evaluation import Model
    from fastdistill.evaluation_t2i import evaluate_text_to_image, format_t2i_table
    res = evaluate_text_to_image([Model.teacher("sd15/", steps=25, guidance=1.5),
                                  Model.student("runs/sd15")], prompts, clip="clip-vit-l14/")

Per model: the CLIP score (image-prompt cosine in a local CLIP model, mean and standard error),
FID against a folder of reference images when one is given (Inception features from a local
weights file, as the pixel evaluation; the first line of the table is then the data-versus-data
baseline at the same n), time per sample, denoiser evaluations and network passes per sample (a
guided teacher makes two passes an evaluation). Prompts are cycled to ``n``; every model gets the
same latents (:func:`fastdistill.sampling.draw` for the seed). Teachers sample with the EDM
Heun/Euler sampler on their latents, guided with ``guidance`` (1: none), then the VAE decodes.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from .engine.evaluator import TEACHER_SEED
from .evaluation import EvalResult, Model, format_value, load_models, score_models
from .metrics.clip_score import clip_score, load_clip
from .metrics.quality import EvalError, quality, reference_data
from .sampling import draw, edm_sampler
from .student import Student
from .teachers import GuidedDenoiser
from .teachers.traits import traits

__all__ = ["evaluate_text_to_image", "format_t2i_table", "images_of"]


@torch.no_grad()
def images_of(model: Model, obj, prompts: list, n: int, seed: int, batch_size: int) -> tuple[torch.Tensor, float]:
    """``n`` decoded images in [-1, 1] of a loaded teacher or student for ``prompts`` (one a sample),
    from the latents of ``seed``, and the wall time per sample, decoding included (after one
    warm-up batch)."""
    if model.kind == "student":
        def make(k):
            return obj.decode(obj.sample(k, seed=seed, cond=prompts[:k], batch_size=batch_size))
    else:
        net = GuidedDenoiser(obj, model.guidance)
        cond = obj.encode_prompt(prompts)

        def make(k):
            (z,), _ = draw(k, (obj.img_channels, obj.img_resolution, obj.img_resolution), seed)
            ck = cond[:k]
            out = [edm_sampler(net, z[i:i + batch_size], ck[i:i + batch_size], num_steps=model.steps,
                               solver=model.solver) for i in range(0, k, batch_size)]
            return obj.decode(torch.cat(out))
    make(min(n, 2))
    t0 = time.perf_counter()
    x = make(n)
    return x, (time.perf_counter() - t0) / n


def _check_measures(data, clip, extractor: str) -> None:
    """What the measurements need, checked up front: the CLIP folder (loaded: it is needed anyway),
    the reference images' path, the Inception weights of an Inception FID."""
    if clip is not None:
        load_clip(clip)
    if data is not None:
        from .data import BUILTIN_DATASETS

        if not (str(data).lower() in BUILTIN_DATASETS or Path(data).exists()):
            raise EvalError(f"--data {data}: no such file or folder of reference images (nor a built-in dataset: "
                            f"{', '.join(BUILTIN_DATASETS)})")
        if extractor == "inception":
            from .metrics.fidelity import resolve_inception_weights

            resolve_inception_weights()


def evaluate_text_to_image(models: Sequence[Model], prompts: Sequence[str], *, data=None, clip=None,
                           n: Optional[int] = None, extractor: str = "inception", seed: int = TEACHER_SEED,
                           device="cpu", batch_size: int = 16, progress=None) -> EvalResult:
    """Sample every model on the same prompts and latents; CLIP score with ``clip`` (a local CLIP
    folder), FID against ``data`` (a folder of reference images, read at the models' resolution)."""
    t_start = time.perf_counter()
    if not prompts:
        raise EvalError("a text-to-image evaluation needs prompts (--prompts FILE)")
    if clip is None and data is None:
        raise EvalError("nothing to measure: give a local CLIP model folder (--clip) and/or reference images (--data)")
    _check_measures(data, clip, extractor)  # before any model is loaded or sampled
    loaded = load_models(models, device)
    for m in models:
        obj = loaded[id(m)]
        if not (traits(obj).text if m.kind == "teacher" else obj.info.cond_kind == "text"):
            raise EvalError(f"{m.kind} {m.spec}: not a text-to-image model (evaluate it without --prompts)")
        if m.kind == "student" and m.steps not in (None, obj.info.steps):
            raise EvalError(f"student {m.spec}: a text-to-image student samples in its trained {obj.info.steps} step(s)")
    n = int(n or len(prompts))
    if n < 2:
        raise EvalError(f"n must be >= 2, got {n}")
    cycled = [prompts[i % len(prompts)] for i in range(n)]
    ref = base = None
    if data is not None:
        from .data import load_dataset

        res_px = {traits(o.net if isinstance(o, Student) else o).resolution for o in loaded.values()}
        if len(res_px) != 1:
            raise EvalError(f"the models make images of different sizes {sorted(res_px)}; evaluate them separately")
        ref = reference_data(load_dataset(data, resolution=res_px.pop(), channels=3))
        cap = ref.max_n()
        if cap is not None and n > cap:
            raise EvalError(f"n={n} is larger than the held-out half of the reference images ({cap}); use n <= {cap}")
        base = quality(ref.baseline_set(n), ref, full=False, extractor=extractor)
    space = ", ".join(s for s, on in ((f"FID in {extractor} features", ref is not None),
                                      ("CLIP score (image-prompt cosine)", clip is not None)) if on)
    res = EvalResult(data=str(data) if data is not None else "prompts only", n=n, metric_space=space,
                     baseline=base or {}, reference_n=int(ref.reference.shape[0]) if ref is not None else 0)

    def measure(x: torch.Tensor) -> dict:
        metrics = quality(x, ref, full=False, extractor=extractor) if ref is not None else {}
        if clip is not None:
            metrics["clip"], metrics["clip_se"] = clip_score(x, cycled, clip)
        return metrics

    res.rows = score_models(models, loaded, lambda m, obj: images_of(m, obj, cycled, n, seed, batch_size), measure,
                            progress)
    res.elapsed_s = time.perf_counter() - t_start
    return res


def format_t2i_table(res: EvalResult) -> str:
    """A plain-text table: the FID baseline first (when there is one), then one line per model."""
    lines = [f"{res.data}: n={res.n} samples per model; {res.metric_space}; lower FID and higher CLIP are better"]
    head = f"{'model':<40} {'NFE':>4} {'passes':>6} {'FID':>8} {'CLIP':>7} {'+-':>6} {'ms/sample':>10}"
    lines += [head, "-" * len(head)]
    if res.baseline:
        lines.append(f"{'data vs data (held-out, same n)':<40} {'-':>4} {'-':>6} {format_value(res.baseline.get('fid')):>8} "
                     f"{'-':>7} {'-':>6} {'-':>10}")
    for r in res.rows:
        m = r.metrics
        lines.append(f"{r.label[:40]:<40} {r.nfe:>4} {r.passes:>6} {format_value(m.get('fid')):>8} "
                     f"{format_value(m.get('clip'), 4):>7} {format_value(m.get('clip_se'), 4):>6} {r.ms_per_sample:>10.2f}")
    return "\n".join(lines)
