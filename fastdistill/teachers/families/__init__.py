"""Teacher families: one file each, registered by the diffusers pipeline class it loads.

Adding one is a subclass of :class:`PipelineFamily` in a new file here, imported below so that
it registers, plus its tests against diffusers' own computation (docs/teachers.md, "Adding a
teacher family").
"""
from .base import PipelineFamily, call_default, family_for, register, registered
from . import sd, sdxl, pixart, sd3, flux  # noqa: E402,F401  (each registers its families; this order is the listing's)

__all__ = ["PipelineFamily", "call_default", "family_for", "register", "registered"]
