"""``fastdistill distill --preset digits-t2i``: the shipped digits text-to-image teacher against
one-step SiD-LSG, SIM and DMD students that answer prompts.

    from fastdistill.reports.digits_t2i import digits_t2i_report, format_t2i_report
    rep = digits_t2i_report("runs/digits-t2i")
    print(format_t2i_report(rep))

What it measures, for the teacher (EDM Heun at several step counts and guidance scales; 18
steps = 35 evaluations, 70 network passes when guided) and each one-step student:

- FID in the shipped digits classifier's features against the reference half of the digits
  (n = 898, the main job's protocol), images read as the classifier reads them (channel mean,
  area-downsampled to 8x8);
- prompt adherence: the share of samples the shipped classifier reads as the prompted digit,
  on prompts from the training templates and from held-out ones;
- time per sample (one thread).

Every model gets the same prompts and latents for a draw (:func:`fastdistill.sampling.draw`);
prompts cycle through the digits (balanced classes, as the reference set) and the split's
templates. The rows that decide the verdicts (the teacher at the students' guidance and 35
evaluations, each student) are means over ``draws`` draws with their standard errors.

Pictures: ``samples.png`` (every model on the same prompts and latents), one ``prompts_<model>.png``
per student (a row per prompt, training and held-out templates), ``tradeoff.png`` (adherence
against FID across guidance scales: the SiD-LSG trade-off curve). Teacher rows are cached in
``<out_dir>/cache`` by teacher weights and protocol, so a rerun samples only the students.

Each student is exported as a diffusers pipeline folder, ``<out_dir>/<run>/diffusers``
(``Student.save_pretrained``), that ``StableDiffusionPipeline.from_pretrained`` loads.

``digits_t2i_report(..., students=SWEEP)`` is the guidance sweep (``--preset digits-t2i-sweep``):
SiD-LSG students trained at guidance 1, 1.5, 3 and 4.5.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import tomllib
from contextlib import contextmanager
from concurrent.futures import wait
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..data.digit_prompts import DIGIT_NAMES, HELDOUT_TEMPLATES, TRAIN_TEMPLATES
from ..engine import ConfigError, Distiller, preset_config
from ..engine.presets import DIGITS_T2I_GUIDANCE
from ..engine.evaluator import teacher_nfe
from ..evaluation import Model, score_models
from ..evaluation_t2i import images_of
from ..teachers.hashing import weights_hash
from ..metrics.digits_classifier import DigitsClassifier, load_digits_classifier
from ..metrics.quality import DIGITS_N, quality, reference_data
from ..plotting import labelled_rows, tradeoff_plot
from ..student import load_student
from ..teachers import load_teacher
from .common import merge_draws, pool, report_footer, run_progress

METHOD_PRESETS = {"sid": "digits-t2i-sid", "sim": "digits-t2i-sim", "dmd": "digits-t2i-dmd"}
METHOD_NAMES = {"sid": "SiD-LSG", "sim": "SIM", "dmd": "DMD"}
#: the report's students: (method, guidance)
DEFAULT_STUDENTS = (("sid", DIGITS_T2I_GUIDANCE), ("sim", DIGITS_T2I_GUIDANCE), ("dmd", DIGITS_T2I_GUIDANCE))
SWEEP = (("sid", 1.0), ("sid", 1.5), ("sid", 3.0), ("sid", 4.5))
GUIDANCES = (1.0, 1.5, 3.0, 4.5)
TEACHER_STEPS = (4, 8, 18)  # Heun; 18 steps = 35 evaluations
#: what the verdicts check, read from the package's assets/digits_t2i_targets.toml
TARGETS = tomllib.loads(resources.files("fastdistill").joinpath("assets/digits_t2i_targets.toml").read_text())
HEADLINE_STEPS = 18
SPLITS = {"train": TRAIN_TEMPLATES, "heldout": HELDOUT_TEMPLATES}
REPORT_SEED = 1
SAMPLE_BATCH = 256  # samples per network call; the students' timing set
DEFAULT_OUT = "runs/digits-t2i"
SWEEP_OUT = "runs/digits-t2i-sweep"
EXPORT_DIR = "diffusers"  # each student's pipeline folder, inside its run directory
#: overrides the report sets itself or that would change what its table compares
REFUSED_OVERRIDES = ("method.name", "teacher.kind", "teacher.path", "prompts", "resume", "out_dir",
                     "method.guidance_teacher", "method.guidance_fake", "method.guidance_fake_train")
_PROTOCOL = 2  # bump when the teacher rows' protocol changes: old cache entries are then ignored


@dataclass
class T2IReport:
    out_dir: str
    n: int
    baseline: dict
    teacher_rows: list = field(default_factory=list)
    student_rows: list = field(default_factory=list)
    pictures: dict = field(default_factory=dict)
    verdicts: list = field(default_factory=list)
    elapsed_s: float = 0.0
    phases_s: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- prompts and scores
def eval_prompts(n: int, split: str) -> tuple[list, torch.Tensor]:
    """``n`` prompts and their digits: digit ``i % 10``, template ``(i // 10) % len(templates)``
    (balanced classes; every template used alike)."""
    templates = SPLITS[split]
    prompts, digits = [], []
    for i in range(n):
        d = i % 10
        template, form = templates[(i // 10) % len(templates)]
        prompts.append(template.format(digit=DIGIT_NAMES[d] if form == "name" else str(d)))
        digits.append(d)
    return prompts, torch.tensor(digits)


def score(images: torch.Tensor, digits: torch.Tensor, ref, classifier, full: bool) -> dict:
    """FID (and, with ``full``, KID / precision / recall) and prompt adherence of decoded images."""
    x8 = DigitsClassifier.prepare(images)
    with torch.no_grad():
        read = classifier(x8).argmax(1)
    return dict(adherence=float((read == digits).float().mean()), **quality(x8, ref, full=full))


# ----------------------------------------------------------------------------- worker tasks
@contextmanager
def _quiet_loading():
    """No loading bars from diffusers and transformers inside: every task loads the pipeline, and
    their bars would bury the report's own progress lines (restored on the way out)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    was = [lib.is_progress_bar_enabled() for lib in (diffusers_logging, transformers_logging)]
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        for lib, on in zip((diffusers_logging, transformers_logging), was):
            if on:
                lib.enable_progress_bar()


def _teacher_weights(teacher) -> list:
    """What identifies the teacher's samples: the hashes of its denoiser and its VAE."""
    return [weights_hash(teacher), weights_hash(teacher.parts.pipe.vae)]


def _teacher_key(weights: list, guidance: float, steps: int, n: int, draw_k: int, split: str) -> str:
    what = [_PROTOCOL, *weights, guidance, steps, n, draw_k, split, REPORT_SEED]
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:24]


def _teacher_task(spec: str, weights: list, guidance: float, steps: int, n: int, draw_k: int, split: str,
                  cache_dir: str) -> dict:
    """One teacher draw (Heun, ``steps`` steps, guidance ``guidance``), cached by weights and protocol."""
    path = Path(cache_dir) / f"teacher-{_teacher_key(weights, guidance, steps, n, draw_k, split)}.json"
    if path.is_file():
        return json.loads(path.read_text())
    with _quiet_loading():
        t = load_teacher(spec)
    row = dict(_scored(Model.teacher(spec, steps, "heun", guidance), t, split, n, draw_k, draw_k == 0,
                       load_digits_classifier()), split=split)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    tmp.write_text(json.dumps(row))
    os.replace(tmp, path)
    return row


def _guidance_overrides(method: str, guidance: float) -> list:
    keys = ("guidance_teacher",) if method == "dmd" else ("guidance_teacher", "guidance_fake", "guidance_fake_train")
    return [f"method.{k}={guidance}" for k in keys]


def _run_name(method: str, guidance: float) -> str:
    return f"{method}-g{guidance:g}"


def _student_config(method: str, guidance: float, run_dir: str, overrides: Sequence[str]):
    cfg = preset_config(METHOD_PRESETS[method]).with_overrides(list(overrides) + _guidance_overrides(method, guidance))
    cfg.out_dir = run_dir
    cfg.resume = "none"
    return cfg.validate()


def _scored(model: Model, loaded, split: str, n: int, draw_k: int, full: bool, classifier) -> dict:
    """One draw of a loaded teacher or student on the split's prompts, as the evaluation core
    samples, times and labels it (:func:`~fastdistill.evaluation.score_models`), scored by :func:`score`."""
    prompts, digits = eval_prompts(n, split)
    ref = reference_data("digits")
    (row,) = score_models([model], {id(model): loaded},
                          lambda m, obj: images_of(m, obj, prompts, n, REPORT_SEED + draw_k, SAMPLE_BATCH),
                          lambda images: score(images, digits, ref, classifier, full))
    return dict(row.to_dict(), draw=draw_k)


def student_rows(path, n: int, draws: int) -> dict:
    """A student's rows: training templates (``draws`` draws) and held-out templates (as many)."""
    student, model, classifier = load_student(path), Model.student(path), load_digits_classifier()
    return {split: merge_draws([_scored(model, student, split, n, k, k == 0 and split == "train", classifier)
                                for k in range(draws)], ("fid", "adherence"))
            for split in SPLITS}


def _student_task(method: str, guidance: float, run_dir: str, n: int, draws: int, deadline: float,
                  overrides: Sequence[str]) -> dict:
    cfg = _student_config(method, guidance, run_dir, overrides)
    stopped = {"early": False}

    def cb(d, row):
        if time.time() > deadline and not stopped["early"]:
            d.request_stop("the report's time budget is spent")
            stopped["early"] = True

    with _quiet_loading():
        t0 = time.time()
        res = Distiller(cfg, callback=cb).run()
        train_s = time.time() - t0
        rows = student_rows(run_dir, n, draws)
        exported = load_student(run_dir).save_pretrained(Path(run_dir) / EXPORT_DIR)
    return dict(rows["train"], method=method, guidance=guidance,
                label=f"{METHOD_NAMES[method]} student, guidance {guidance:g}, 1 step", train_steps=res.step,
                train_s=train_s, stopped_early=stopped["early"], run_dir=run_dir, exported=str(exported),
                heldout=rows["heldout"])


# ----------------------------------------------------------------------------- the report
def check_overrides(overrides: Sequence[str]) -> None:
    refused = [o.split("=", 1)[0].strip() for o in overrides if o.split("=", 1)[0].strip() in REFUSED_OVERRIDES]
    if refused:
        raise ConfigError(f"the digits-t2i report sets {', '.join(refused)} itself; run one student with "
                          f"--preset digits-t2i-sid (or -sim, -dmd) to choose them")


def _teacher_jobs(students, guidances, steps, draws) -> list:
    """(guidance, steps, draw, split): 35 evaluations at every guidance (``draws`` draws at the
    students' guidances, one elsewhere); the other step counts and the held-out templates at the
    students' guidances."""
    student_g = sorted({g for _, g in students})
    jobs = []
    for g in sorted(set(guidances) | set(student_g)):
        jobs += [(g, HEADLINE_STEPS, k, "train") for k in range(draws if g in student_g else 1)]
    for g in student_g:
        jobs += [(g, k, 0, "train") for k in steps if k != HEADLINE_STEPS]
        jobs.append((g, HEADLINE_STEPS, 0, "heldout"))
    return sorted(jobs, key=lambda j: -teacher_nfe(j[1], "heun") * (2 if j[0] != 1 else 1))


def teacher_rows(cache: Path, teacher: str, students: Sequence[tuple], guidances: Sequence[float],
                 teacher_steps: Sequence[int], n: int, draws: int, workers: int, log, progress_every: float) -> list:
    """The report's teacher rows (draws merged), each sample set read from ``cache`` when it holds
    it (keyed by the teacher's weights and the protocol), else sampled in at most 2 processes."""
    t1 = time.time()
    jobs = _teacher_jobs(students, guidances, teacher_steps, draws)
    with _quiet_loading():
        weights = _teacher_weights(load_teacher(teacher))
    log(f"[digits-t2i report] teacher: {len(jobs)} sample sets of n={n} (cached in {cache}) ...")
    with pool(max(1, min(workers, 2))) as executor:
        futs = [executor.submit(_teacher_task, teacher, weights, g, k, n, d, split, str(cache))
                for g, k, d, split in jobs]
        pending, said = set(futs), 0
        while pending:
            pending = wait(pending, timeout=progress_every).not_done
            if pending and len(futs) - len(pending) != said:
                said = len(futs) - len(pending)
                log(f"  {time.time() - t1:4.0f} s  teacher: {said}/{len(futs)} sample sets")
        rows = [f.result() for f in futs]
    settings = sorted({(r["guidance"], r["steps"], r["split"]) for r in rows})
    return [merge_draws([r for r in rows if (r["guidance"], r["steps"], r["split"]) == s], ("fid", "adherence"))
            for s in settings]


def digits_t2i_report(out_dir=DEFAULT_OUT, budget_s: Optional[float] = None, *,
                      students: Sequence[tuple] = DEFAULT_STUDENTS, teacher: str = "digits-t2i",
                      guidances: Sequence[float] = GUIDANCES, teacher_steps: Sequence[int] = TEACHER_STEPS,
                      n: int = DIGITS_N, draws: int = 3, workers: int = 3, overrides: Sequence[str] = (),
                      log=print, progress_every: float = 30.0) -> T2IReport:
    """Run the report (module docstring). ``budget_s``: a wall-clock cap on the student runs (a
    run still going stops and is scored from its last state; None: every run finishes).
    ``students``: (method, guidance) pairs; ``workers``: concurrent student runs, one thread each
    (the teacher rows use at most 2 processes)."""
    log = log or (lambda *a, **k: None)
    t_start = time.time()
    students = [(m, float(g)) for m, g in students]
    unknown = [m for m, _ in students if m not in METHOD_PRESETS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; the digits-t2i report runs {', '.join(METHOD_PRESETS)}")
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    check_overrides(overrides)
    if teacher != "digits-t2i":
        overrides = list(overrides) + [f"teacher.path={teacher}"]
    out = Path(out_dir)
    names = [_run_name(m, g) for m, g in students]
    for (m, g), name in zip(students, names):  # a bad override fails now, not after the teacher rows
        _student_config(m, g, str(out / name), overrides)
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        if (out / name).exists():
            log(f"[digits-t2i report] replacing the previous report's {name} run in {out / name}")
            shutil.rmtree(out / name)
    ref = reference_data("digits")
    n = int(min(n, ref.max_n()))
    rep = T2IReport(out_dir=str(out), n=n, baseline=quality(ref.baseline_set(n), ref))

    t1 = time.time()
    rep.teacher_rows = teacher_rows(out / "cache", teacher, students, guidances, teacher_steps, n, draws, workers,
                                    log, progress_every)
    rep.phases_s["teacher"] = time.time() - t1
    for r in rep.teacher_rows:
        log(f"  {r['label']:<38} {r['split']:<8} FID {r['fid']:.3f}  adherence {r['adherence']:.3f}")

    t2 = time.time()
    deadline = math.inf if budget_s is None else t_start + budget_s
    log(f"[digits-t2i report] distilling {', '.join(names)} ({min(workers, len(names))} processes, one thread each) ...")
    with pool(max(1, min(workers, len(names)))) as executor:
        futs = {name: executor.submit(_student_task, m, g, str(out / name), n, draws, deadline, tuple(overrides))
                for (m, g), name in zip(students, names)}
        pending = set(futs.values())
        while pending:
            pending = wait(pending, timeout=progress_every).not_done
            if pending:
                log(f"  {time.time() - t2:4.0f} s  " + "   ".join(run_progress(x, out / x) for x in names))
        rep.student_rows = [futs[name].result() for name in names]
    rep.phases_s["students"] = time.time() - t2

    t3 = time.time()
    _time_students(rep)
    rep.verdicts = verdicts(rep)
    try:  # pictures last: a missing optional plotting library loses nothing else
        _pictures(rep, teacher, out)
    except ImportError as exc:
        log(f"[digits-t2i report] pictures skipped: {exc}")
    rep.phases_s["timing_and_pictures"] = time.time() - t3
    rep.elapsed_s = time.time() - t_start
    (out / "report.json").write_text(json.dumps(rep.to_dict(), indent=2))
    (out / "report.txt").write_text(format_t2i_report(rep) + "\n")
    return rep


def _time_students(rep: T2IReport) -> None:
    """Each student's time per sample alone on one thread (256 samples after a warm-up)."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        prompts, _ = eval_prompts(SAMPLE_BATCH, "train")
        for r in rep.student_rows:
            _, sec = images_of(Model.student(r["run_dir"]), load_student(r["run_dir"]), prompts, SAMPLE_BATCH, 0,
                               SAMPLE_BATCH)
            r["ms_per_sample"] = 1000 * sec
    finally:
        torch.set_num_threads(prev)


# ----------------------------------------------------------------------------- verdicts
def _se(r: dict, key: str) -> Optional[float]:
    std = r.get(f"{key}_std")
    return None if std is None else std / math.sqrt(len(r[f"{key}_draws"]))


def _teacher_row(rep: T2IReport, guidance: float, steps: int = HEADLINE_STEPS, split: str = "train") -> Optional[dict]:
    return next((r for r in rep.teacher_rows if (r["guidance"], r["steps"], r["split"]) == (guidance, steps, split)), None)


def _rise_target(tg: dict) -> str:
    return f"target +{100 * tg['adherence_rise_min']:g} or {tg['adherence_saturated']:.2f}"


def _rise_met(rise: float, adherence: float, tg: dict) -> bool:
    return rise >= tg["adherence_rise_min"] or adherence >= tg["adherence_saturated"]


def verdicts(rep: T2IReport) -> list:
    """The checks of :data:`TARGETS`, each a sentence with its numbers (met or not)."""
    out, best = [], None
    tt, tg, ts = TARGETS["teacher"], TARGETS["guidance"], TARGETS["student"]
    head = [r for r in rep.teacher_rows if r["steps"] == HEADLINE_STEPS and r["split"] == "train"]
    if head:
        best = min(head, key=lambda r: r["fid"])  # the best guidance: the teacher's lowest FID (SiD-LSG's sense)
        out.append(f"teacher, 35 evaluations: best guidance {best['guidance']:g} (lowest FID {best['fid']:.3f}; "
                   f"target <= {tt['fid_max']:.3f}: {'met' if best['fid'] <= tt['fid_max'] else 'not met'}); "
                   f"adherence there {best['adherence']:.3f} (target >= {tt['adherence_min']:.2f}: "
                   f"{'met' if best['adherence'] >= tt['adherence_min'] else 'not met'})")
        g1 = _teacher_row(rep, 1.0)
        if g1 is not None:
            rise = best["adherence"] - g1["adherence"]
            out.append(f"teacher guidance 1 -> {best['guidance']:g}: adherence {g1['adherence']:.3f} -> "
                       f"{best['adherence']:.3f} ({100 * rise:+.1f} points; {_rise_target(tg)}: "
                       f"{'met' if _rise_met(rise, best['adherence'], tg) else 'not met'})")
    for r in rep.student_rows:
        name = r["label"].split(",")[0]
        t = _teacher_row(rep, r["guidance"])
        if t is None:
            continue
        se = math.sqrt(sum((_se(x, "adherence") or 0.0) ** 2 for x in (r, t)))
        k, ratio = ts["adherence_se"], ts["fid_ratio_max"]
        ok_adh = r["adherence"] >= t["adherence"] - k * se
        ok_fid = r["fid"] <= ratio * t["fid"]
        gap = abs(r["adherence"] - r["heldout"]["adherence"])
        out.append(f"{name} at guidance {r['guidance']:g}: adherence {r['adherence']:.3f} vs teacher "
                   f"{t['adherence']:.3f} (-{k:g} SE = {t['adherence'] - k * se:.3f}: {'met' if ok_adh else 'not met'}); "
                   f"FID {r['fid']:.3f} vs {ratio:g}x teacher {ratio * t['fid']:.3f} ({'met' if ok_fid else 'not met'}); "
                   f"held-out templates {r['heldout']['adherence']:.3f} ({100 * gap:.1f} points from training: "
                   f"{'met' if gap <= ts['heldout_gap_max'] else 'not met'})"
                   + (f" [stopped by the time budget at step {r['train_steps']}]" if r.get("stopped_early") else ""))
    sid = {r["guidance"]: r for r in rep.student_rows if r["method"] == "sid"}
    if best is not None and best["guidance"] != 1.0 and {1.0, best["guidance"]} <= set(sid):
        lo, hi = sid[1.0], sid[best["guidance"]]
        rise = hi["adherence"] - lo["adherence"]
        out.append(f"SiD-LSG students guidance 1 -> {hi['guidance']:g} (the teacher's best): adherence "
                   f"{lo['adherence']:.3f} -> {hi['adherence']:.3f} ({100 * rise:+.1f} points; {_rise_target(tg)}: "
                   f"{'met' if _rise_met(rise, hi['adherence'], tg) else 'not met'}); FID {lo['fid']:.3f} -> "
                   f"{hi['fid']:.3f}")
    return out


# ----------------------------------------------------------------------------- pictures
def _pictures(rep: T2IReport, teacher_spec: str, out: Path) -> None:
    from ..teachers.digits_t2i import digits_t2i_images

    k = 20  # two of each digit
    prompts, digits = eval_prompts(k, "train")
    images, labels = digits_t2i_images()
    data = torch.stack([images[torch.nonzero(labels == d)[j // 10, 0]] for j, d in enumerate(digits.tolist())])
    g = rep.student_rows[0]["guidance"] if rep.student_rows else DIGITS_T2I_GUIDANCE
    teacher = Model.teacher(teacher_spec, HEADLINE_STEPS, "heun", g)
    tx, _ = images_of(teacher, load_teacher(teacher_spec), prompts, k, REPORT_SEED + 7, SAMPLE_BATCH)
    rows = [("data", data), (f"teacher, guidance {g:g}, 35 evaluations", tx)]
    for r in rep.student_rows:
        s = load_student(r["run_dir"])
        rows.append((r["label"].replace(" student", ""),
                     images_of(Model.student(r["run_dir"]), s, prompts, k, REPORT_SEED + 7, SAMPLE_BATCH)[0]))
        grid = _prompt_grid(s)
        rep.pictures[f"prompts_{Path(r['run_dir']).name}"] = str(labelled_rows(grid, out / f"prompts_{Path(r['run_dir']).name}.png"))
    rep.pictures["samples"] = str(labelled_rows(rows, out / "samples.png"))
    curves = {}
    teacher_pts = [(r["fid"], r["adherence"], f"{r['guidance']:g}") for r in rep.teacher_rows
                   if r["steps"] == HEADLINE_STEPS and r["split"] == "train"]
    curves["teacher, 35 evaluations"] = teacher_pts
    for m in METHOD_PRESETS:
        pts = [(r["fid"], r["adherence"], f"{r['guidance']:g}") for r in rep.student_rows if r["method"] == m]
        if pts:
            curves[f"{METHOD_NAMES[m]} one-step student"] = pts
    rep.pictures["tradeoff"] = str(tradeoff_plot(
        curves, out / "tradeoff.png", title=f"digits text-to-image: prompt adherence vs FID (n={rep.n}); "
                                             "labels: guidance scale", xlabel="FID (digits features), lower is better",
        ylabel="prompt adherence, higher is better"))


def _prompt_grid(student, per_prompt: int = 8) -> list:
    """(prompt, ``per_prompt`` samples) rows: one training-template and one held-out prompt per digit."""
    rows = []
    for split in SPLITS:
        templates = SPLITS[split]
        for d in range(10):
            template, form = templates[d % len(templates)]
            p = template.format(digit=DIGIT_NAMES[d] if form == "name" else str(d))
            x = student.decode(student.sample(per_prompt, seed=REPORT_SEED + 11, cond=p))
            rows.append((f"{p}" + (" (held out)" if split == "heldout" else ""), x))
    return rows


# ----------------------------------------------------------------------------- the table
def format_t2i_report(rep: T2IReport) -> str:
    lines = [f"digits text-to-image report: n={rep.n} samples per row; FID against the reference half of the digits "
             f"(shipped classifier's features), adherence = share read as the prompted digit; "
             f"mean +- standard error over (k) draws where drawn more than once"]
    head = (f"{'model':<46} {'NFE':>4} {'passes':>6} {'FID':>7} {'+-':>6} {'adherence':>9} {'+-':>6} "
            f"{'held-out':>8} {'ms/sample':>10}")
    lines += [head, "-" * len(head)]

    def pm(r, key):
        se = _se(r, key)
        return f"{se:.3f}" if se is not None else "-"

    lines.append(f"{'data vs data (held-out half)':<46} {'-':>4} {'-':>6} {rep.baseline['fid']:>7.3f} {'-':>6} "
                 f"{'-':>9} {'-':>6} {'-':>8} {'-':>10}")
    for r in [x for x in rep.teacher_rows if x["split"] == "train"]:
        held = _teacher_row(rep, r["guidance"], r["steps"], "heldout")
        lines.append(f"{r['label']:<46} {r['nfe']:>4} {r['passes']:>6} {r['fid']:>7.3f} {pm(r, 'fid'):>6} "
                     f"{r['adherence']:>9.3f} {pm(r, 'adherence'):>6} "
                     f"{(format(held['adherence'], '.3f') if held else '-'):>8} {r['ms_per_sample']:>10.2f}")
    for r in rep.student_rows:
        ms = r.get("ms_per_sample")
        lines.append(f"{r['label']:<46} {1:>4} {1:>6} {r['fid']:>7.3f} {pm(r, 'fid'):>6} {r['adherence']:>9.3f} "
                     f"{pm(r, 'adherence'):>6} {r['heldout']['adherence']:>8.3f} "
                     + (f"{ms:>10.3f}" if ms is not None else f"{'-':>10}"))
    if rep.student_rows:
        lines.append("")
        for r in rep.student_rows:
            lines.append(f"{r['label'].split(',')[0]} (guidance {r['guidance']:g}): {r['train_steps']} iterations in "
                         f"{r['train_s']:.0f} s" + (" [stopped by the time budget]" if r.get("stopped_early") else "")
                         + f"; exported to {r['exported']}")
    lines += report_footer(rep.verdicts, rep.pictures, rep.elapsed_s, rep.phases_s)
    return "\n".join(lines)
