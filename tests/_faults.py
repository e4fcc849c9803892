"""Fault injection for the checkpoint tests (not a library module): SIGKILL this process at the
n-th occurrence (counted from 1) of a checkpoint write phase, through the seam
``fastdistill.engine.checkpoint.phase_hook``. A spec is ``"<phase>:<n>[,<phase>:<n>...]"``."""
from __future__ import annotations

import os
import signal
import sys

from fastdistill.engine import checkpoint as ckpt

#: run the fastdistill command line in a subprocess with faults installed: argv[1] the spec, the rest the command
CLI = ("import sys; from tests._faults import install; install(sys.argv[1]); "
       "from fastdistill.cli import main; sys.exit(main(sys.argv[2:]))")


def parse(spec: str) -> dict[str, int]:
    targets = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        phase, _, n = item.rpartition(":")
        if phase not in ckpt.WRITE_PHASES or not n.isdigit() or int(n) < 1:
            raise ValueError(f"fault spec {spec!r}: expected <phase>:<n> with n >= 1 and phase one of "
                             f"{', '.join(ckpt.WRITE_PHASES)}")
        targets[phase] = int(n)
    return targets


def install(spec: str) -> None:
    """Kill this process where ``spec`` says (an empty spec: no faults, the seam cleared)."""
    targets, counts = parse(spec), {}
    if not targets:
        ckpt.phase_hook = None
        return

    def hook(phase: str, what: str) -> None:
        n = counts[phase] = counts.get(phase, 0) + 1
        if targets.get(phase) == n:
            print(f"fastdistill: fault injection {spec}: killing this process at {phase} #{n} ({what})",
                  file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    ckpt.phase_hook = hook
