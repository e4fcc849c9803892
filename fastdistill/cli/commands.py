"""The commands: each a thin shell over the Python API, returning the exit code."""
from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

from . import common
from .common import BAD_INPUT, REPORT_PRESETS, check_device, debug, fail, labels_of, prompt_list, text_to_image_preset


@common.command("doctor")
def doctor(args: argparse.Namespace) -> int:
    """Versions, devices, and which loss backends can run here (and why not)."""
    import importlib.metadata as md

    import torch

    from ..ops import registry

    def version(pkg: str) -> str:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return "not installed"

    print(f"python       {platform.python_version()} ({sys.executable})")
    print(f"torch        {torch.__version__} (CUDA build: {torch.version.cuda or 'no'})")
    print(f"triton       {version('triton')}")
    print(f"fastdistill  {version('fastdistill')}")
    print(f"threads      {torch.get_num_threads()}")
    devices = ["cpu"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            print(f"cuda:{i}       {torch.cuda.get_device_name(i)}")
        devices.append("cuda")
    else:
        print("cuda         no CUDA device visible")
    print(f"extension    {registry.EXTENSION_REASON}")
    from ..engine.build import COMPILE_ON_CPU, bf16_is_fast

    print(f"bf16 on cpu  {'native' if bf16_is_fast('cpu') else 'emulated (slower than fp32): precision=fp32 is likely faster'}")
    print(f"compile      off by default; {COMPILE_ON_CPU}")
    print("backends (auto picks the first available of: " + "; ".join(f"{d}: {', '.join(o)}" for d, o in registry.AUTO_ORDER.items()) + ")")
    for device in ("cpu", "cuda"):
        for name in registry.BACKENDS:
            ok, reason = registry.backend_status(name, device)
            # runnable on that device type, but the device is missing here: not a "yes"
            status = "no" if not ok else "yes" if device in devices else "built, no device" if name == "cuda" else "no device"
            print(f"  {device:4} {name:9} {status:16}  {reason}")
        chosen = registry.resolve_backend("auto", device).name if device in devices else "-"
        print(f"  {device:4} auto    -> {chosen}")
    return 0


def _report_out_dir(overrides, default: str) -> tuple[str, list]:
    """A report's directory (``out_dir=`` among the overrides, else ``default``) and the other
    overrides, which go to its student runs."""
    out, rest = default, []
    for o in overrides:
        key, _, value = o.partition("=")
        if key.strip() == "out_dir":
            out = value
        else:
            rest.append(o)
    if not str(out).strip():
        raise ValueError(f"out_dir must not be empty: give the report's directory, e.g. out_dir={default}")
    return out, rest


def _digits_report(args: argparse.Namespace) -> int:
    """``fastdistill distill`` with no preset or config: the digits report (``out_dir=`` is its directory)."""
    from ..reports.digits import DEFAULT_OUT, digits_report, format_report

    out, rest = _report_out_dir(args.overrides, DEFAULT_OUT)
    methods = [m for m in (args.methods or "sid,sim,dmd").split(",") if m]
    rep = digits_report(out, 570.0 if args.budget is None else args.budget, methods=methods,
                        teacher=args.teacher or "digits", workers=3 if args.workers is None else args.workers,
                        draws=3 if args.draws is None else args.draws, overrides=rest)
    print(format_report(rep))
    return 0


def _t2i_report(args: argparse.Namespace) -> int:
    """``distill --preset digits-t2i`` (three students) or ``digits-t2i-sweep`` (SiD-LSG at four guidances)."""
    from ..reports import digits_t2i as r

    sweep = args.preset == "digits-t2i-sweep"
    if args.config or args.prompts:
        raise ValueError(f"--preset {args.preset} is a report on the shipped teacher and its prompts: "
                         f"it takes no --config or --prompts")
    out, rest = _report_out_dir(args.overrides, r.SWEEP_OUT if sweep else r.DEFAULT_OUT)
    if sweep and args.methods:
        raise ValueError("the guidance sweep trains SiD-LSG students only: --methods does not apply")
    methods = [m for m in (args.methods or "sid,sim,dmd").split(",") if m]
    students = r.SWEEP if sweep else [s for s in r.DEFAULT_STUDENTS if s[0] in methods]
    if not sweep and len(students) != len(methods):
        raise ValueError(f"--methods: a subset of {','.join(r.METHOD_PRESETS)}, got {args.methods}")
    rep = r.digits_t2i_report(out, args.budget, students=students, teacher=args.teacher or "digits-t2i",
                              workers=(2 if sweep else 3) if args.workers is None else args.workers,
                              draws=3 if args.draws is None else args.draws, overrides=rest)
    print(r.format_t2i_report(rep))
    return 0


@common.command("distill")
def distill(args: argparse.Namespace) -> int:
    from ..engine import distill_command

    report_only = {"--methods": args.methods, "--budget": args.budget, "--workers": args.workers, "--draws": args.draws}
    if not args.config and not args.preset and args.prompts:
        args.preset = text_to_image_preset(args.teacher)
    if not args.config and not args.preset:
        return _digits_report(args)
    if args.preset in REPORT_PRESETS:
        return _t2i_report(args)
    given = [k for k, v in report_only.items() if v is not None]
    if given:
        print(f"fastdistill distill: {', '.join(given)} belong to the reports (no --preset / --config, or --preset "
              f"{' / '.join(REPORT_PRESETS)})", file=sys.stderr)
        return BAD_INPUT
    overrides = list(args.overrides)
    if args.teacher:
        overrides += ["teacher.kind=checkpoint", f"teacher.path={args.teacher}"]
    if args.prompts:
        overrides.append(f"prompts={args.prompts}")
    if args.force:
        overrides.append("force=true")
    return distill_command(args.config, overrides, args.preset, debug=debug(args))


@common.command("config")
def config(args: argparse.Namespace) -> int:
    from ..engine import load_config
    from ..engine.config import describe_config

    if args.list:
        print(describe_config())
        return 0
    print(load_config(args.config, args.overrides, args.preset).to_json())
    return 0


def _sample_stem(args: argparse.Namespace) -> Path:
    """``--out``: a stem (``x`` or ``x.png`` -> ``x.png`` + ``x.npz``), or a directory (an existing one,
    or a path ending in ``/``) to write ``samples.png`` / ``samples.npz`` in; by default
    ``samples-seed<seed>`` beside the checkpoint."""
    if args.out:
        out = Path(args.out)
        if args.out.endswith(("/", os.sep)) or out.is_dir():
            return out / "samples"
        return out
    where = Path(args.checkpoint)
    return (where.parent if where.is_file() else where) / f"samples-seed{args.seed}"


def _no_labels(student) -> str:
    if student.info.cond_kind == "text":
        return "--label given, but the student is text-conditioned: give --prompt TEXT or --prompts FILE"
    return "--label given, but the student is unconditional"


@common.command("sample")
def sample(args: argparse.Namespace) -> int:
    """Write ``<out>.png`` and ``<out>.npz`` with ``n`` samples of a student."""
    from ..projection import check_output_path
    from ..student import load_student, save_samples

    check_device(args.device)
    stem = _sample_stem(args)
    for suffix in (".npz", ".png"):  # before any work: where the files go must be writable
        check_output_path(stem.with_suffix(suffix))
    student = load_student(args.checkpoint, which=args.which, device=args.device)
    if args.label and not student.info.label_dim:
        raise ValueError(_no_labels(student))
    cond, n, ncol = labels_of(args), args.n or 64, None
    prompts = prompt_list(args)
    if prompts:
        if cond is not None:
            raise ValueError("give --label or --prompt / --prompts, not both")
        ncol = args.n or 8  # one row of samples per prompt
        cond, n = [p for p in prompts for _ in range(ncol)], ncol * len(prompts)
    x = student.decode(student.sample(n, steps=args.steps, seed=args.seed, cond=cond))
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = save_samples(x, npz_path=stem.with_suffix(".npz"))
    try:
        paths.update(save_samples(x, png_path=stem.with_suffix(".png"), ncol=ncol))
    except ImportError as exc:
        print(f"fastdistill sample: picture skipped: {exc}", file=sys.stderr)
    print(f"{n} samples of shape {tuple(x.shape[1:])}: {', '.join(paths.values())}")
    return 0


@common.command("export")
def export(args: argparse.Namespace) -> int:
    """A student in its kind's format: a text-to-image student as a diffusers pipeline folder, any
    other as one safetensors file (``Student.save_pretrained``)."""
    from ..student import load_student

    out = load_student(args.checkpoint, which=args.which).save_pretrained(args.out, lora=args.lora)
    print(f"exported to {out} (" + (f"one-step use: {out / 'README.md'})" if out.is_dir() else
                                    "fastdistill.load_student reads it)"))
    return 0


@common.command("project")
def project(args: argparse.Namespace) -> int:
    from ..projection import check_output_path, load_input, project as project_inputs, save_output
    from ..student import load_student

    check_device(args.device)
    check_output_path(args.out)  # before any work
    student = load_student(args.checkpoint, which=args.which, device=args.device)
    y = load_input(args.input)
    labels = labels_of(args)
    if student.info.label_dim and labels is None:
        raise ValueError(f"the student is class-conditional ({student.info.label_dim} classes): pass --label K "
                         f"(one class for every input) or one --label per input")
    if labels is not None and not student.info.label_dim:
        raise ValueError(_no_labels(student))
    steps = args.steps or 1
    x = project_inputs(student, y, sigma=args.sigma, steps=steps, seed=args.seed, cond=labels, schedule=args.schedule)
    p = save_output(x, args.out)
    print(f"projected {1 if x.dim() in (1, 3) else x.shape[0]} input(s) with sigma={args.sigma}, steps={steps}: {p}")
    return 0


@common.command("eval")
def evaluate(args: argparse.Namespace) -> int:
    """Print the comparison table, write JSON."""
    import torch

    from ..evaluation import Model, evaluate_models, format_table
    from ..projection import check_output_path

    check_device(args.device)
    out = Path(args.out or "eval.json")
    check_output_path(out, suffixes=None)  # before any work
    torch.set_num_threads(max(1, int(args.threads)))
    solvers = [s for s in args.solver.split(",") if s]
    if args.prompts:
        return _eval_text_to_image(args, solvers, out)
    if args.clip or args.guidance != [1.0]:
        raise ValueError("--clip and --guidance are for text-to-image models: give --prompts FILE")
    try:
        models = [Model.teacher(t, k, solver) for t in args.teacher or [] for solver in solvers for k in args.steps]
        models += [Model.student(s, k) for s in args.student or [] for k in args.student_steps]
        res = evaluate_models(models, data=args.data, n=args.n, extractor=args.extractor or "digits",
                              full=not args.fid_only, device=args.device)
    except ImportError as exc:  # an optional dependency (torch-fidelity) missing
        return fail("eval", exc, args)
    print(format_table(res))
    print(f"wrote {res.save(out)} ({res.elapsed_s:.1f} s)")
    return 0


def _eval_text_to_image(args: argparse.Namespace, solvers: list, out: Path) -> int:
    from ..data.prompts import read_prompts
    from ..evaluation import Model
    from ..evaluation_t2i import evaluate_text_to_image, format_t2i_table

    models = [Model.teacher(t, k, solver, w) for t in args.teacher or [] for solver in solvers for k in args.steps
              for w in args.guidance]
    models += [Model.student(s) for s in args.student or []]
    try:
        res = evaluate_text_to_image(models, read_prompts(args.prompts), data=args.data, clip=args.clip, n=args.n,
                                     extractor=args.extractor or "inception", device=args.device)
    except ImportError as exc:
        return fail("eval", exc, args)
    print(format_t2i_table(res))
    print(f"wrote {res.save(out)} ({res.elapsed_s:.1f} s)")
    return 0


@common.command("train-teacher")
def train_teacher(args: argparse.Namespace) -> int:
    import torch

    from ..teachers import CheckpointError, load_teacher
    from ..teachers.digits import SHIPPED_TRAINING, train_digits_teacher

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.preset == "digits-t2i":
        return _train_t2i_teacher(args)
    data_kwargs = {"resolution": args.resolution} if args.resolution else {}
    try:
        if args.device is not None:
            check_device(args.device)
        result = train_digits_teacher(
            args.out, steps=args.steps or SHIPPED_TRAINING["steps"], batch_size=args.batch_size or SHIPPED_TRAINING["batch_size"],
            lr=args.lr or SHIPPED_TRAINING["lr"], seed=args.seed, data=args.data,
            arch=args.arch, conditional=not args.unconditional, lr_warmup_steps=args.warmup, lr_decay=args.lr_decay,
            weights_dtype=args.weights_dtype, device=args.device, progress=not args.quiet, data_kwargs=data_kwargs)
        net = load_teacher(result.path)  # check that what was written loads
    except (FileNotFoundError, ValueError, KeyError, TypeError, CheckpointError) as e:
        return fail("train-teacher", e, args, prefix="error: ")
    n_params = sum(p.numel() for p in net.parameters())
    losses = result.losses
    tail = losses[-max(1, len(losses) // 10):]
    print(f"wrote {result.path}: {type(net).__name__}, {n_params} parameters, label_dim {net.label_dim}, "
          f"{result.config['steps']} steps in {result.config['train_seconds']:.1f} s, "
          f"final loss {sum(tail) / len(tail):.4f}")
    return 0


def _train_t2i_teacher(args: argparse.Namespace) -> int:
    """``train-teacher --preset digits-t2i``: the shipped text-to-image pipeline, trained from scratch."""
    import json

    from ..teachers import load_teacher
    from ..teachers.digits_t2i import TRAINING_RECORD, DigitsT2IConfig, train_digits_t2i

    general = {"--data": args.data != "digits", "--arch": args.arch, "--unconditional": args.unconditional,
               "--resolution": args.resolution, "--steps": args.steps, "--batch-size": args.batch_size,
               "--lr": args.lr, "--device": args.device, "--weights-dtype": args.weights_dtype != "float32"}
    given = [k for k, v in general.items() if v]
    if given:
        raise ValueError(f"--preset digits-t2i trains a fixed recipe on the CPU; {', '.join(given)} do not apply")
    folder = train_digits_t2i(args.out, DigitsT2IConfig(seed=args.seed), progress=not args.quiet)
    teacher = load_teacher(str(folder))  # check that what was written loads as a teacher
    record = json.loads((folder / TRAINING_RECORD).read_text())
    print(f"wrote {folder}: a {teacher.family} pipeline, latents {teacher.img_channels}x{teacher.img_resolution}x"
          f"{teacher.img_resolution} for {teacher.resolution}x{teacher.resolution} images; trained in "
          f"{record['train_seconds']:.0f} s (VAE reconstruction MSE {record['vae_recon_mse']:.2e}, "
          f"UNet final loss {record['unet_final_loss']:.4f})")
    return 0


@common.command("train-classifier")
def train_classifier(args: argparse.Namespace) -> int:
    """Retrain the shipped digits classifier (FID's feature space) and/or report its held-out accuracy."""
    import json

    from ..metrics import digits_classifier as dc

    if not args.eval_only:
        model, meta = dc.train_classifier(seed=args.seed, epochs=args.epochs, verbose=args.verbose)
        dc.save_classifier(model, args.out, meta)
        print(json.dumps({"out": args.out, **meta}, indent=1))
    weights = args.out if not args.eval_only else args.weights
    model = dc.load_digits_classifier(weights)
    x, y = dc.digits_dataset("heldout")
    print(json.dumps({"weights": str(weights or dc.default_weights_path()),
                      "heldout_accuracy": dc.evaluate_accuracy(model, x, y), "n_heldout": len(y)}))
    return 0
