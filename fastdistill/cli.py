"""Command line: ``fastdistill <command>``; each command is a thin shell over the Python API,
and every argument parser lives here."""
from __future__ import annotations

import argparse
import functools
import math
import os
import platform
import sys
from pathlib import Path

#: exit code for bad input (configuration, paths, shapes)
BAD_INPUT = 2
#: the preset ``distill --teacher PIPELINE --prompts FILE`` uses without --preset / --config
TEXT_TO_IMAGE_PRESET = "sid-lsg-sd15"
#: presets that run a report (several students and a table) rather than one run
REPORT_PRESETS = ("digits-t2i", "digits-t2i-sweep")


def _debug(args=None) -> bool:
    """``--debug`` (before or after the command) or ``FASTDISTILL_DEBUG=1``: show tracebacks."""
    from .engine.entry import debug_enabled

    return debug_enabled(bool(getattr(args, "debug", False)))


def _fail(command: str, exc: Exception, args=None, prefix: str = "") -> int:
    """One line on stderr and exit code 2 for an error the user caused; with ``--debug`` the
    exception itself, traceback and all."""
    if _debug(args):
        raise exc
    from .engine.entry import error_message

    print(f"fastdistill {command}: {prefix}{error_message(exc)}", file=sys.stderr)
    return BAD_INPUT


def _command(name: str):
    """The one error path of every command: the user-error types of
    :data:`fastdistill.engine.entry.USER_ERRORS` become ``fastdistill <name>: <message>`` and exit
    code 2; anything else (a bug) keeps its traceback."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(args: argparse.Namespace) -> int:
            from .engine.entry import USER_ERRORS

            try:
                return fn(args)
            except USER_ERRORS as exc:
                return _fail(name, exc, args)

        return run

    return wrap


class _IntermixedParser(argparse.ArgumentParser):
    """A (sub)command parser where options and positionals (``key=value`` overrides) mix in any
    order: ``distill --preset toy steps=10 --teacher X out_dir=Y``."""

    _inside = False

    def parse_known_args(self, args=None, namespace=None):
        if self._inside or any(a.nargs in (argparse.PARSER, argparse.REMAINDER) for a in self._get_positional_actions()):
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


# ----------------------------------------------------------------------------- argument types
def _int_at_least(low: int, what: str):
    """argparse type: an integer >= low, with a message naming what was expected."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {v}")
        return v

    return parse


_positive_int = _int_at_least(1, "positive")
_nonneg_int = _int_at_least(0, "non-negative")


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return v


def _steps_list(text: str) -> list[int]:
    try:
        out = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not out or any(v < 1 for v in out):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return out


def _floats_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got {text!r}")
    return values


def _check_device(text: str, flag: str = "--device") -> str:
    """A ``--device`` that can run here (cpu, cuda, cuda:N), checked before any work starts."""
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{flag} {text!r} is not a device: use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{flag} {text}: no CUDA device is visible here (torch.cuda.is_available() is False); "
                             f"use {flag} cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{flag} {text}: there are {torch.cuda.device_count()} CUDA device(s), "
                             f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    elif dev.type != "cpu":
        raise ValueError(f"{flag} {text!r}: fastdistill runs on cpu or cuda / cuda:N")
    return text


def _add_student_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments ``sample`` and ``project`` share, in one style."""
    p.add_argument("checkpoint", help="run directory, checkpoint directory or exported student.safetensors")
    p.add_argument("--steps", type=_positive_int, default=None,
                   help="applications of the student (sample: default its trained steps, 1 or method.steps; "
                        "project: default 1; any number for SIGN/IGN)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label", type=int, nargs="*", default=None,
                   help="class label(s) for a class-conditional student (one, or one per sample)")
    p.add_argument("--which", choices=("ema", "generator"), default="ema", help="EMA or raw generator weights")
    p.add_argument("--device", default="cpu")


def _labels(args):
    return None if not args.label else (args.label[0] if len(args.label) == 1 else args.label)


def _prompt_list(args) -> list:
    """``--prompt`` texts, then the prompts of the ``--prompts`` file."""
    from .data.prompts import read_prompts

    return list(args.prompt or []) + (read_prompts(args.prompts) if args.prompts else [])


# ----------------------------------------------------------------------------- commands
@_command("doctor")
def _doctor(args: argparse.Namespace) -> int:
    """Versions, devices, and which loss backends can run here (and why not)."""
    import importlib.metadata as md

    import torch

    from .ops import registry

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
    from .engine.build import COMPILE_ON_CPU, bf16_is_fast

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
    from .reports.digits import DEFAULT_OUT, digits_report, format_report

    out, rest = _report_out_dir(args.overrides, DEFAULT_OUT)
    methods = [m for m in (args.methods or "sid,sim,dmd").split(",") if m]
    rep = digits_report(out, 570.0 if args.budget is None else args.budget, methods=methods,
                        teacher=args.teacher or "digits", workers=3 if args.workers is None else args.workers,
                        draws=3 if args.draws is None else args.draws, overrides=rest)
    print(format_report(rep))
    return 0


def _t2i_report(args: argparse.Namespace) -> int:
    """``distill --preset digits-t2i`` (three students) or ``digits-t2i-sweep`` (SiD-LSG at four guidances)."""
    from .reports import digits_t2i as r

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


@_command("distill")
def _distill(args: argparse.Namespace) -> int:
    from .engine import distill_command

    report_only = {"--methods": args.methods, "--budget": args.budget, "--workers": args.workers, "--draws": args.draws}
    if not args.config and not args.preset and args.prompts:
        args.preset = TEXT_TO_IMAGE_PRESET
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
    return distill_command(args.config, overrides, args.preset, debug=_debug(args))


@_command("config")
def _config(args: argparse.Namespace) -> int:
    from .engine import load_config
    from .engine.config import describe_config

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


@_command("sample")
def _sample(args: argparse.Namespace) -> int:
    """Write ``<out>.png`` and ``<out>.npz`` with ``n`` samples of a student."""
    from .projection import check_output_path
    from .student import load_student, save_samples

    _check_device(args.device)
    stem = _sample_stem(args)
    for suffix in (".npz", ".png"):  # before any work: where the files go must be writable
        check_output_path(stem.with_suffix(suffix))
    student = load_student(args.checkpoint, which=args.which, device=args.device)
    if args.label and not student.info.label_dim:
        raise ValueError(_no_labels(student))
    cond, n, ncol = _labels(args), args.n or 64, None
    prompts = _prompt_list(args)
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


@_command("export")
def _export(args: argparse.Namespace) -> int:
    """A text-to-image student as a diffusers pipeline folder."""
    from .export import export_student
    from .student import load_student

    out = export_student(load_student(args.checkpoint, which=args.which), args.out, lora=args.lora)
    print(f"exported to {out} (one-step use: {out / 'README.md'})")
    return 0


@_command("project")
def _project(args: argparse.Namespace) -> int:
    from .projection import check_output_path, load_input, project, save_output
    from .student import load_student

    _check_device(args.device)
    check_output_path(args.out)  # before any work
    student = load_student(args.checkpoint, which=args.which, device=args.device)
    y = load_input(args.input)
    labels = _labels(args)
    if student.info.label_dim and labels is None:
        raise ValueError(f"the student is class-conditional ({student.info.label_dim} classes): pass --label K "
                         f"(one class for every input) or one --label per input")
    if labels is not None and not student.info.label_dim:
        raise ValueError(_no_labels(student))
    steps = args.steps or 1
    x = project(student, y, sigma=args.sigma, steps=steps, seed=args.seed, cond=labels, schedule=args.schedule)
    p = save_output(x, args.out)
    print(f"projected {1 if x.dim() in (1, 3) else x.shape[0]} input(s) with sigma={args.sigma}, steps={steps}: {p}")
    return 0


@_command("eval")
def _eval(args: argparse.Namespace) -> int:
    """Print the comparison table, write JSON."""
    import torch

    from .evaluation import Model, evaluate_models, format_table
    from .projection import check_output_path

    _check_device(args.device)
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
        return _fail("eval", exc, args)
    print(format_table(res))
    print(f"wrote {res.save(out)} ({res.elapsed_s:.1f} s)")
    return 0


def _eval_text_to_image(args: argparse.Namespace, solvers: list, out: Path) -> int:
    from .data.prompts import read_prompts
    from .evaluation_t2i import T2IModel, evaluate_text_to_image, format_t2i_table

    models = [T2IModel.teacher(t, k, w, solver) for t in args.teacher or [] for solver in solvers for k in args.steps
              for w in args.guidance]
    models += [T2IModel.student(s) for s in args.student or []]
    try:
        res = evaluate_text_to_image(models, read_prompts(args.prompts), data=args.data, clip=args.clip, n=args.n,
                                     extractor=args.extractor or "inception", device=args.device)
    except ImportError as exc:
        return _fail("eval", exc, args)
    print(format_t2i_table(res))
    print(f"wrote {res.save(out)} ({res.elapsed_s:.1f} s)")
    return 0


@_command("train-teacher")
def _train_teacher(args: argparse.Namespace) -> int:
    import torch

    from .teachers import CheckpointError, load_teacher
    from .teachers.digits import SHIPPED_TRAINING, train_digits_teacher

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.preset == "digits-t2i":
        return _train_t2i_teacher(args)
    data_kwargs = {"resolution": args.resolution} if args.resolution else {}
    try:
        if args.device is not None:
            _check_device(args.device)
        result = train_digits_teacher(
            args.out, steps=args.steps or SHIPPED_TRAINING["steps"], batch_size=args.batch_size or SHIPPED_TRAINING["batch_size"],
            lr=args.lr or SHIPPED_TRAINING["lr"], seed=args.seed, data=args.data,
            arch=args.arch, conditional=not args.unconditional, lr_warmup_steps=args.warmup, lr_decay=args.lr_decay,
            weights_dtype=args.weights_dtype, device=args.device, progress=not args.quiet, data_kwargs=data_kwargs)
        net = load_teacher(result.path)  # check that what was written loads
    except (FileNotFoundError, ValueError, KeyError, TypeError, CheckpointError) as e:
        return _fail("train-teacher", e, args, prefix="error: ")
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

    from .teachers import load_teacher
    from .teachers.digits_t2i import TRAINING_RECORD, DigitsT2IConfig, train_digits_t2i

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


@_command("train-classifier")
def _train_classifier(args: argparse.Namespace) -> int:
    """Retrain the shipped digits classifier (FID's feature space) and/or report its held-out accuracy."""
    import json

    from .metrics import digits_classifier as dc

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


# ----------------------------------------------------------------------------- parsers
def add_train_classifier_parser(subparsers) -> argparse.ArgumentParser:
    from .metrics.digits_classifier import ASSET_NAME

    p = subparsers.add_parser("train-classifier", help="retrain the shipped digits classifier (FID features) or check it",
                              description="Train the digits classifier from scratch (deterministic, a few seconds) and "
                              "write --out, then report its held-out accuracy; --eval-only checks existing weights.")
    p.add_argument("--out", default="fastdistill/assets/" + ASSET_NAME, help="where the trained weights go")
    p.add_argument("--eval-only", action="store_true", help="do not train: report the held-out accuracy of --weights")
    p.add_argument("--weights", default=None, help="with --eval-only: weights to check (default: the shipped ones)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=_positive_int, default=40)
    p.set_defaults(func=_train_classifier)
    return p


def add_train_teacher_parser(subparsers) -> argparse.ArgumentParser:
    from .teachers.digits import ARCH_PRESETS, SHIPPED_TRAINING

    p = subparsers.add_parser(
        "train-teacher", help="train a small EDM teacher (digits, 2-D toys, or your .npy/.npz/image folder)",
        description="Train an EDM-preconditioned teacher with the EDM loss and save its EMA weights "
                    "(fastdistill safetensors format; load with fastdistill.load_teacher).")
    p.add_argument("--data", default="digits",
                   help="built-in dataset (digits, 8gaussians, 25gaussians, checkerboard, swissroll) or a path "
                        "to a .npy/.npz file or an image folder (default: digits)")
    p.add_argument("--out", required=True, help="output .safetensors file (or a directory; with --preset "
                                                "digits-t2i the pipeline folder, replaced once training is done)")
    p.add_argument("--preset", choices=("digits-t2i",), default=None,
                   help="digits-t2i: the shipped text-to-image teacher (a Stable Diffusion pipeline folder: VAE, "
                        "text encoder, tokenizer, UNet, scheduler; about 20 minutes on 2 CPU cores)")
    p.add_argument("--steps", type=_positive_int, default=None, help=f"optimiser steps (default {SHIPPED_TRAINING['steps']})")
    p.add_argument("--batch-size", type=_positive_int, default=None, help=f"default {SHIPPED_TRAINING['batch_size']}")
    p.add_argument("--lr", type=_positive_float, default=None, help=f"Adam learning rate (default {SHIPPED_TRAINING['lr']})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arch", choices=sorted(ARCH_PRESETS), default=None,
                   help="network preset (default: digits-small for images, mlp for vector data)")
    p.add_argument("--unconditional", action="store_true", help="ignore class labels even if the data have them")
    p.add_argument("--resolution", type=_positive_int, default=None,
                   help="resize image data to this side (digits: 8 native, 16, 32, ...)")
    p.add_argument("--warmup", type=_nonneg_int, default=SHIPPED_TRAINING["lr_warmup_steps"],
                   help="linear lr warm-up steps")
    p.add_argument("--lr-decay", choices=("none", "cosine"), default=SHIPPED_TRAINING["lr_decay"])
    p.add_argument("--weights-dtype", choices=("float32", "float16"), default="float32",
                   help="storage dtype of the saved weights (loaded as float32 either way)")
    p.add_argument("--device", default=None, help="torch device (default: cpu)")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_train_teacher)
    return p


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    from .metrics import DIGITS_N

    p = subparsers.add_parser(
        "eval", help="sample quality (FID/KID/precision/recall or SW2/MMD) and time per sample of students and teachers",
        description="Sample students (their trained steps, or k) and teachers (EDM Heun/Euler at any number of "
                    "steps), score them against the data with the same n, print a table and write JSON.")
    p.add_argument("--student", action="append", metavar="CHECKPOINT",
                   help="run directory, checkpoint directory or exported student.safetensors (repeatable)")
    p.add_argument("--student-steps", type=_steps_list, default=[None], metavar="K[,K...]",
                   help="student sampling steps (default: each student's trained steps; any for sign/ign students)")
    p.add_argument("--teacher", action="append", metavar="SPEC",
                   help="'digits' (shipped), analytic:NAME (exact toy), or a teacher checkpoint path (repeatable)")
    p.add_argument("--steps", type=_steps_list, default=[18], metavar="N[,N...]",
                   help="teacher sampler steps, e.g. 1,2,4,8,18 (Heun: 2N-1 evaluations, Euler: N)")
    p.add_argument("--solver", default="heun", help="heun, euler, or heun,euler (default heun)")
    p.add_argument("--data", default=None, help="dataset name or path (default: inferred: digits / the toy); with --prompts: a folder of reference images for FID")
    p.add_argument("-n", type=int, default=None, help=f"samples per model (default: the held-out size, {DIGITS_N} on digits)")
    p.add_argument("--extractor", default=None, choices=("digits", "inception"),
                   help="FID feature space for images (default: digits; inception for text-to-image models)")
    t2i = p.add_argument_group("text-to-image models (with --prompts)")
    t2i.add_argument("--prompts", help="prompt file: every model samples these prompts (cycled to -n) on the same noise")
    t2i.add_argument("--clip", help="local CLIP model folder (transformers CLIPModel + processor) for the CLIP score")
    t2i.add_argument("--guidance", type=_floats_list, default=[1.0], metavar="W[,W...]",
                     help="teachers' classifier-free guidance scales (default 1: none)")
    p.add_argument("--fid-only", action="store_true", help="images: FID only (skip KID and precision/recall)")
    p.add_argument("--out", default=None, help="JSON output path (default: eval.json)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.set_defaults(func=_eval)
    return p


def add_project_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "project", help="project corrupted inputs onto the data manifold with an idempotent student (SIGN/IGN)",
        description="Zero-shot projection / editing: f(y + sigma*eps), re-applied for --steps, with the "
        "time-free student f of a SIGN/IGN checkpoint.")
    _add_student_arguments(p)
    p.add_argument("--input", required=True, help=".npy / .npz / image file; images in [-1, 1] or uint8")
    p.add_argument("--sigma", type=float, default=0.0, help="noise added before the first application (>= 0)")
    p.add_argument("--schedule", choices=("reapply", "constant", "karras"), default="reapply",
                   help="after the first step: re-apply without noise, add sigma noise again, or the sampler's levels")
    p.add_argument("--out", required=True, help="output .npy / .npz / .png")
    p.set_defaults(func=_project)
    return p


def add_sample_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("sample", help="samples of a distilled student (PNG grid + .npz)")
    _add_student_arguments(p)
    p.add_argument("-n", type=_positive_int, default=None,
                   help="number of samples (default 64); with prompts: samples per prompt, one grid row each (default 8)")
    p.add_argument("--prompt", action="append", help="text-to-image students: a prompt (repeat for several)")
    p.add_argument("--prompts", help="text-to-image students: a prompt file (one a line, or CSV / JSONL)")
    p.add_argument("--out", help="output path stem: <out>.png and <out>.npz; a directory (an existing one, or a path "
                                 "ending in /) gets samples.png and samples.npz (default: <checkpoint>/samples-seed<seed>)")
    p.set_defaults(func=_sample)
    return p


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("export", help="write a text-to-image student as a diffusers pipeline folder",
                              description="The teacher's pipeline folder with the student's UNet, loadable with "
                              "diffusers' from_pretrained; its README.md shows one-step generation.")
    p.add_argument("checkpoint", help="run directory or checkpoint directory")
    p.add_argument("out", help="the new folder")
    p.add_argument("--lora", choices=("merge", "adapter"), default="merge",
                   help="LoRA students: adapters merged into the UNet (default) or kept as pytorch_lora_weights.safetensors")
    p.add_argument("--which", choices=("ema", "generator"), default="ema", help="EMA or raw generator weights")
    p.set_defaults(func=_export)
    return p


def add_distill_parser(subparsers) -> argparse.ArgumentParser:
    from .engine import PRESETS
    from .engine.config import describe_config

    distill = subparsers.add_parser(
        "distill",
        help="distil a teacher into a one-step generator (default: the digits teacher vs SiD, SIM and DMD students)",
        description="Distil a teacher into a one-step generator. With no --preset or --config, the embedded "
        "default: the shipped digits teacher at 1-18 Heun/Euler steps against one-step SiD, SIM and DMD "
        "students distilled side by side (FID table, time per sample, pictures in runs/digits; at most "
        "10 minutes on 2 CPU cores). Otherwise settings come from a preset or a JSON/TOML config file, "
        "then from key=value overrides (e.g. method.name=sim optim.lr=1e-4; options and overrides mix in any "
        "order); an unknown key is an error that lists the valid ones.",
        epilog=describe_config(), formatter_class=argparse.RawDescriptionHelpFormatter)
    distill.add_argument("overrides", nargs="*", metavar="key=value",
                         help="dotted config overrides (digits default: applied to every student run; out_dir= is the report's directory)")
    distill.add_argument("--config", help="JSON or TOML config file")
    distill.add_argument("--preset", choices=sorted(PRESETS) + list(REPORT_PRESETS),
                         help="built-in configuration (e.g. toy: the 2-D ring, about a minute); digits-t2i: the shipped "
                              "text-to-image teacher against one-step SiD-LSG, SIM and DMD students (a report, as the "
                              "default); digits-t2i-sweep: SiD-LSG students at guidance 1, 1.5, 3 and 4.5")
    distill.add_argument("--teacher", help="teacher: 'digits', analytic:NAME, an EDM/SiD pickle, a fastdistill safetensors file or a diffusers folder")
    distill.add_argument("--prompts", help=f"text-to-image teachers: the training prompts (one a line, CSV or JSONL); "
                                          f"without --preset / --config the {TEXT_TO_IMAGE_PRESET} preset is used")
    distill.add_argument("--force", action="store_true", help="take over a run directory locked from another host (force=true)")
    report = distill.add_argument_group("reports only (the digits default, --preset digits-t2i / digits-t2i-sweep)")
    report.add_argument("--methods", help="comma-separated subset of sid,sim,dmd (default: all three)")
    report.add_argument("--budget", type=float, help="wall-clock cap in seconds (digits default: 570; digits-t2i: none)")
    report.add_argument("--workers", type=int, help="concurrent student runs, one thread each (default 3)")
    report.add_argument("--draws", type=int, help="sample draws averaged for the teacher at 35 NFE and each student (default 3)")
    distill.set_defaults(func=_distill)
    return distill


def add_config_parser(subparsers) -> argparse.ArgumentParser:
    from .engine import PRESETS

    p = subparsers.add_parser("config", help="list every config key with its default and meaning, or print a resolved config",
                              description="--list: every key, default and meaning. Otherwise the configuration a "
                              "preset / config file / overrides resolve to, as JSON (validated).")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--list", action="store_true", help="list every config key")
    p.add_argument("--config", help="JSON or TOML config file")
    p.add_argument("--preset", choices=sorted(PRESETS))
    p.set_defaults(func=_config)
    return p


DEBUG_HELP = "show the full traceback of an error instead of one line (also: FASTDISTILL_DEBUG=1)"
VERBOSE_HELP = ("more output: diffusers' and transformers' loading bars and notices, train-classifier's epochs "
                "(also: FASTDISTILL_VERBOSE=1)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastdistill", description=__doc__)
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_IntermixedParser)
    sub.add_parser("doctor", help="versions, devices and available loss backends").set_defaults(func=_doctor)
    add_distill_parser(sub)
    add_config_parser(sub)
    add_sample_parser(sub)
    add_export_parser(sub)
    add_eval_parser(sub)
    add_project_parser(sub)
    add_train_teacher_parser(sub)
    add_train_classifier_parser(sub)
    for p in sub.choices.values():  # --debug and --verbose after the command too (not resetting one given before it)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse, run the command, and give every error the user caused one path: one line
    ``fastdistill <command>: <message>`` on stderr and exit code 2 (``--debug`` or
    ``FASTDISTILL_DEBUG=1``: the traceback instead). Bugs keep their tracebacks."""
    from .engine.entry import USER_ERRORS

    args = build_parser().parse_args(argv)
    if getattr(args, "verbose", False):
        from .teachers.pipelines import VERBOSE_ENV

        os.environ[VERBOSE_ENV] = "1"
    try:
        return args.func(args)
    except USER_ERRORS as exc:  # each command catches these already; this covers a func set elsewhere
        return _fail(args.command, exc, args)


if __name__ == "__main__":
    sys.exit(main())
