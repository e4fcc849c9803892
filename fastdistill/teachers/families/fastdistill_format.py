"""fastdistill's own teacher format (:mod:`..checkpoint`): one safetensors file, or a folder with
``fastdistill_teacher.json``; the test-vector layout of safetensors files too."""
from __future__ import annotations

from ..checkpoint import load_safetensors_teacher, load_teacher_checkpoint
from .base import CheckpointFamily, register_checkpoint_family


@register_checkpoint_family
class SafetensorsFile(CheckpointFamily):
    name = "fastdistill safetensors teacher"
    format = "safetensors"

    def load(self, spec, device):
        return load_safetensors_teacher(spec, device=device)


@register_checkpoint_family
class TeacherFolder(CheckpointFamily):
    name = "fastdistill teacher folder"
    format = "fastdistill_dir"

    def load(self, spec, device):
        return load_teacher_checkpoint(spec, device=device)
