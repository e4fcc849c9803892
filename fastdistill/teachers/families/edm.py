"""NVIDIA EDM / SiD network pickles, read without executing them (:mod:`..edm_pickle`)."""
from __future__ import annotations

from ..edm_pickle import load_edm_pickle
from .base import CheckpointFamily, register_checkpoint_family


@register_checkpoint_family
class EDMPickle(CheckpointFamily):
    name = "EDM / SiD network pickle"
    format = "edm_pickle"

    def load(self, spec, device):
        return load_edm_pickle(spec, device=device)
