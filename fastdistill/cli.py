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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastdistill", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("doctor", help="versions, devices and available loss backends").set_defaults(func=_doctor)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
