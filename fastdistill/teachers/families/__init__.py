"""Teacher families: one file each, registered by the diffusers pipeline class it loads or by the
checkpoint format (or built-in name) it reads.

Adding one is a subclass of :class:`PipelineFamily` or :class:`CheckpointFamily` in a new file
here, imported below so that it registers, plus its tests (docs/teachers.md, "Adding a teacher
family").
"""
from .base import (CheckpointFamily, PipelineFamily, call_default, checkpoint_families, checkpoint_family, family_for,
                   named_family, register, register_checkpoint_family, registered)
from . import sd, sdxl, pixart, sd3, flux  # noqa: E402,F401  (each registers its families; this order is the listing's)
from . import shipped_digits, analytic, edm, fastdistill_format, unet2d  # noqa: E402,F401

__all__ = ["PipelineFamily", "call_default", "family_for", "register", "registered", "CheckpointFamily",
           "register_checkpoint_family", "checkpoint_family", "named_family", "checkpoint_families"]
