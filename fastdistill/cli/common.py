"""What every command shares: the one error path, argument types, the student arguments."""
from __future__ import annotations

import argparse
import functools
import math
import sys

#: exit code for bad input (configuration, paths, shapes)
BAD_INPUT = 2
#: the preset ``distill --teacher PIPELINE --prompts FILE`` uses without --preset / --config when
#: the pipeline's family has none of its own
TEXT_TO_IMAGE_PRESET = "sid-lsg-sd15"
#: presets that run a report (several students and a table) rather than one run
REPORT_PRESETS = ("digits-t2i", "digits-t2i-sweep")


def text_to_image_preset(teacher) -> str:
    """The preset of ``distill --teacher FOLDER --prompts FILE`` with no --preset / --config: the
    folder's family's own, else :data:`TEXT_TO_IMAGE_PRESET`."""
    from ..teachers.loading import teacher_location
    from ..teachers.pipelines import folder_family

    family = folder_family(teacher_location(teacher)) if teacher else None
    return family.preset if family is not None and family.preset else TEXT_TO_IMAGE_PRESET


def debug(args=None) -> bool:
    """``--debug`` (before or after the command) or ``FASTDISTILL_DEBUG=1``: show tracebacks."""
    from ..engine.entry import debug_enabled

    return debug_enabled(bool(getattr(args, "debug", False)))


def fail(command: str, exc: Exception, args=None, prefix: str = "") -> int:
    """One line on stderr and exit code 2 for an error the user caused; with ``--debug`` the
    exception itself, traceback and all."""
    if debug(args):
        raise exc
    from ..engine.entry import error_message

    print(f"fastdistill {command}: {prefix}{error_message(exc)}", file=sys.stderr)
    return BAD_INPUT


def command(name: str):
    """The one error path of every command: the user-error types of
    :data:`fastdistill.engine.entry.USER_ERRORS` become ``fastdistill <name>: <message>`` and exit
    code 2; anything else (a bug) keeps its traceback."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(args: argparse.Namespace) -> int:
            from ..engine.entry import USER_ERRORS

            try:
                return fn(args)
            except USER_ERRORS as exc:
                return fail(name, exc, args)

        return run

    return wrap


class IntermixedParser(argparse.ArgumentParser):
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
def int_at_least(low: int, what: str):
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


positive_int = int_at_least(1, "positive")
nonneg_int = int_at_least(0, "non-negative")


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return v


def steps_list(text: str) -> list[int]:
    try:
        out = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not out or any(v < 1 for v in out):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return out


def floats_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got {text!r}")
    return values


def check_device(text: str, flag: str = "--device") -> str:
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


def add_student_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments ``sample`` and ``project`` share, in one style."""
    p.add_argument("checkpoint", help="run directory, checkpoint directory or exported student.safetensors")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="applications of the student (sample: default its trained steps, 1 or method.steps; "
                        "project: default 1; any number for SIGN/IGN)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label", type=int, nargs="*", default=None,
                   help="class label(s) for a class-conditional student (one, or one per sample)")
    p.add_argument("--which", choices=("ema", "generator"), default="ema", help="EMA or raw generator weights")
    p.add_argument("--device", default="cpu")


def labels_of(args):
    return None if not args.label else (args.label[0] if len(args.label) == 1 else args.label)


def prompt_list(args) -> list:
    """``--prompt`` texts, then the prompts of the ``--prompts`` file."""
    from ..data.prompts import read_prompts

    return list(args.prompt or []) + (read_prompts(args.prompts) if args.prompts else [])
