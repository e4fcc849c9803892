"""Command line: `fastdistill <command>`; each command is a thin shell over the Python API."""
from __future__ import annotations

import argparse
import platform
import sys


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
    print("backends (auto picks the first available of: " + "; ".join(f"{d}: {', '.join(o)}" for d, o in registry.AUTO_ORDER.items()) + ")")
    for device in ("cpu", "cuda"):
        for name in registry.BACKENDS:
            ok, reason = registry.backend_status(name, device)
            print(f"  {device:4} {name:9} {'yes' if ok else 'no ':3}  {reason}")
        chosen = registry.resolve_backend("auto", device).name if device in devices else "-"
        print(f"  {device:4} auto    -> {chosen}")
    return 0


def _distill(args: argparse.Namespace) -> int:
    from .engine import distill_command
    from .engine.digits import report_command

    report_only = {"--methods": args.methods, "--budget": args.budget, "--workers": args.workers, "--draws": args.draws}
    if not args.config and not args.preset:
        return report_command(args.overrides, args.teacher, **{k[2:]: v for k, v in report_only.items() if v is not None})
    given = [k for k, v in report_only.items() if v is not None]
    if given:
        print(f"fastdistill distill: {', '.join(given)} belong to the digits default (no --preset / --config)", file=sys.stderr)
        return 2
    overrides = list(args.overrides)
    if args.teacher:
        overrides += ["teacher.kind=checkpoint", f"teacher.path={args.teacher}"]
    return distill_command(args.config, overrides, args.preset)


def _sample(args: argparse.Namespace) -> int:
    from .engine import sample_command

    return sample_command(args.checkpoint, n=args.n, seed=args.seed, out=args.out, which=args.which, device=args.device)


def build_parser() -> argparse.ArgumentParser:
    from .engine import PRESETS
    from .evaluation import add_eval_parser
    from .projection import add_project_parser
    from .teachers.digits import add_train_teacher_parser

    parser = argparse.ArgumentParser(prog="fastdistill", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("doctor", help="versions, devices and available loss backends").set_defaults(func=_doctor)

    distill = sub.add_parser(
        "distill",
        help="distil a teacher into a one-step generator (default: the digits teacher vs SiD, SIM and DMD students)",
        description="Distil a teacher into a one-step generator. With no --preset or --config, the embedded "
        "default: the shipped digits teacher at 1-18 Heun/Euler steps against one-step SiD, SIM and DMD "
        "students distilled side by side (FID table, time per sample, pictures in runs/digits; at most "
        "10 minutes on 2 CPU cores). Otherwise settings come from a preset or a JSON/TOML config file, "
        "then from key=value overrides (e.g. method.name=sim optim.lr=1e-4); an unknown key is an error "
        "that lists the valid ones.",
    )
    distill.add_argument("overrides", nargs="*", metavar="key=value",
                         help="dotted config overrides (digits default: applied to every student run; out_dir= is the report's directory)")
    distill.add_argument("--config", help="JSON or TOML config file")
    distill.add_argument("--preset", choices=sorted(PRESETS), help="built-in configuration (e.g. toy: the 2-D ring, about a minute)")
    distill.add_argument("--teacher", help="teacher checkpoint: EDM/SiD pickle, fastdistill safetensors, or a diffusers folder")
    report = distill.add_argument_group("digits default only")
    report.add_argument("--methods", help="comma-separated subset of sid,sim,dmd (default: all three)")
    report.add_argument("--budget", type=float, help="wall-clock cap in seconds (default 570)")
    report.add_argument("--workers", type=int, help="concurrent student runs, one thread each (default 3)")
    report.add_argument("--draws", type=int, help="sample draws averaged for the teacher at 35 NFE and each student (default 3)")
    distill.set_defaults(func=_distill)

    sample = sub.add_parser("sample", help="one-step samples from a distillation checkpoint (PNG grid + .npz)")
    sample.add_argument("checkpoint", help="checkpoint directory written by `fastdistill distill`")
    sample.add_argument("-n", type=int, default=64, help="number of samples")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--out", help="output path stem (default: <checkpoint>/samples-seed<seed>)")
    sample.add_argument("--which", choices=("ema", "generator"), default="ema", help="EMA or raw generator weights")
    sample.add_argument("--device", default="cpu")
    sample.set_defaults(func=_sample)

    add_train_teacher_parser(sub)
    add_eval_parser(sub)
    add_project_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
