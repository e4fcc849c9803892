"""The one schema of a distillation checkpoint's ``state.json``: :class:`RunState`, and in it the
:class:`StudentInfo` of the student the checkpoint holds (exports carry that record too).

The training loop writes a RunState into every checkpoint and resumes from one; ``load_student``
reads the student and how to rebuild its generator from it. Keys a file lacks take their
defaults (older checkpoints); keys this version does not know are ignored.
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..sampling import DEFAULT_SIGMA_END
from ..teachers.checkpoint import CheckpointError, save_teacher

__all__ = ["FORMAT", "RunState", "StudentInfo", "MULTISTEP_METHODS", "PIXEL_STUDENT_FILE", "write_student_file"]

#: the ``format`` of a distillation checkpoint's state.json
FORMAT = "fastdistill-distill/1"

#: the file a run writes its finished student to (a pixel student's one format)
PIXEL_STUDENT_FILE = "student.safetensors"

#: methods whose students are time-free maps trained for multi-step sampling and projection
MULTISTEP_METHODS = ("sign", "ign")


@dataclass(frozen=True)
class StudentInfo:
    """What a student is (the ``student`` record the engine writes into checkpoints and exports)."""

    method: str
    sigma_init: float
    data_shape: tuple
    label_dim: int = 0
    sigma_end: float = DEFAULT_SIGMA_END  # the last re-noise level it was trained with (multi-step)
    cond_kind: str = "none"  # none | labels | text
    teacher: Optional[str] = None  # the teacher spec it was distilled from ("digits", "analytic:NAME", a path)
    step: Optional[int] = None
    step_sigmas: tuple = ()  # a few-step generator's noise level at each application (empty: one step or time-free)

    @classmethod
    def from_record(cls, rec: dict) -> "StudentInfo":
        return cls(method=str(rec["method"]), sigma_init=float(rec["sigma_init"]),
                   data_shape=tuple(int(s) for s in rec["data_shape"]), label_dim=int(rec.get("label_dim", 0)),
                   sigma_end=float(rec.get("sigma_end", DEFAULT_SIGMA_END)), cond_kind=str(rec.get("cond_kind", "none")),
                   teacher=rec.get("teacher"), step=rec.get("step"),
                   step_sigmas=tuple(float(v) for v in rec.get("step_sigmas", ())))

    @property
    def multistep(self) -> bool:
        """A time-free student: any number of steps, on any schedule."""
        return self.method in MULTISTEP_METHODS

    @property
    def steps(self) -> int:
        """The generator's trained applications: K for a few-step student, else 1."""
        return max(1, len(self.step_sigmas))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RunState:
    """A run at a checkpoint: where training stands, what it was configured and identified as, how
    its generator is rebuilt, and (set by the checkpoint writer) the optimisers' groups, the layout,
    the world size and every rank's RNG states."""

    step: int
    config: dict
    student: StudentInfo
    images_seen: int = 0
    nan_steps: int = 0
    consecutive_nan: int = 0
    sigma_data: float = 0.5
    #: what the generator started from: teacher, fit or given
    init: str = "teacher"
    #: the fitted MLP's architecture, or the registered class and init kwargs, that rebuild the generator
    arch: Optional[dict] = None
    arch_config: Optional[dict] = None
    #: the run identity (:mod:`.identity`); None in checkpoints of versions that recorded none
    identity: Optional[dict] = None
    config_changes: list = field(default_factory=list)
    #: the generator's quality before distillation (for the summary of a resumed run)
    initial_quality: Any = None
    scaler: Optional[dict] = None
    #: per network, the entries not written because they are the teacher's own weights (LoRA on a
    #: shared base): a reader takes them from the teacher that ``identity["teacher_sha256"]`` names
    from_teacher: dict = field(default_factory=dict)
    param_groups: Optional[dict] = None
    layout: str = "whole"
    world_size: int = 1
    rng: list = field(default_factory=list)

    @property
    def sharded(self) -> bool:
        """Whether the tensors are every rank's shards (``distributed.strategy=fsdp``): what the verified
        state.json says, never the mere presence of a ``shards/`` folder."""
        return self.layout == "sharded"

    def to_dict(self) -> dict:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict, where) -> "RunState":
        """The RunState of a checkpoint's parsed state.json; ``where`` names it in the error."""
        if not isinstance(d, dict) or d.get("format") != FORMAT or "student" not in d:
            found = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise CheckpointError(f"{where}: not a distillation checkpoint of this fastdistill version (format {found!r})")
        missing = [k for k in ("step", "config") if k not in d]
        if missing:
            raise CheckpointError(f"{where}: its state.json lacks {', '.join(missing)}")
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        return cls(**{**values, "step": int(d["step"]), "student": StudentInfo.from_record(d["student"])})


def write_student_file(net, info: StudentInfo, path) -> Path:
    """A student whose network is a registered class, as one safetensors file: the teacher checkpoint
    format (``load_teacher`` reads the network) with the student record in it."""
    return Path(save_teacher(net, path, extra={"student": info.to_dict()}))
