"""What the engine and the methods may know about a teacher, read from it in this one place.

The required part of a teacher is :class:`~.base.Denoiser`: ``D(x, sigma, cond)``,
``sigma_data``, its sample shape and ``label_dim``. Everything optional a teacher can offer is a
field of :class:`TeacherTraits`, read by :func:`traits` from the attributes the teachers of
:mod:`fastdistill.teachers` declare (a pipeline adapter's prompt encoding, decoding and schedule;
an analytic teacher's exact samples). A user's own module needs only the required part: every
capability it does not declare is off. Code outside ``teachers/`` asks these traits instead of
probing a teacher's attributes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .schedule import NoiseSchedule, schedule_of

__all__ = ["TeacherTraits", "traits", "data_shape_of"]


def data_shape_of(net) -> tuple[int, ...]:
    """Shape of one sample: ``net.data_shape`` when the teacher has it, else (C, R, R)."""
    shape = getattr(net, "data_shape", None)
    if shape is not None:
        return tuple(int(s) for s in shape)
    return (int(net.img_channels), int(net.img_resolution), int(net.img_resolution))


@dataclass(frozen=True)
class TeacherTraits:
    data_shape: tuple[int, ...]
    sigma_data: float
    #: number of classes of a class-conditional teacher (0: none)
    label_dim: int
    #: encode_prompt / release_text_encoders: a text-to-image pipeline teacher
    text: bool
    #: the width of the text embeddings the network reads (text teachers), else None
    text_width: Optional[int]
    #: the prompt length in tokens a T5-reading pipeline teacher encodes to (its call's max_sequence_length), else None
    text_length: Optional[int]
    #: decode(latents) -> images in [-1, 1]
    decodes: bool
    #: the pixel resolution of the decoded images (pipeline teachers), else None
    resolution: Optional[int]
    #: a latent teacher: the methods use section 9's recipe (its own timesteps and objective)
    latent: bool
    #: its noise schedule: continuous EDM sigma, a discrete VP schedule's timesteps, or flow matching's
    schedule: NoiseSchedule
    #: guidance is an input of the network (FLUX.1-dev), not a two-pass combination
    guidance_distilled: bool
    #: that input's value, when the teacher has one
    embedded_guidance: Optional[float]
    #: the pipeline family's name ("" for other teachers); a family's adapter exports to a diffusers folder
    family: str
    #: what the network predicts: "epsilon", "v_prediction", "sample" (a discrete diffusers teacher),
    #: "flow" (velocity), else "denoiser" (EDM's D(x; sigma))
    objective: str
    #: sample(n, generator): exact samples (analytic teachers)
    exact_samples: bool
    #: the denoising network inside an adapter (a pipeline's UNet or transformer), else None
    network: Optional[torch.nn.Module]


def traits(teacher) -> TeacherTraits:
    """The traits of ``teacher``, a :class:`~.base.Denoiser`."""
    shape = data_shape_of(teacher)
    schedule = schedule_of(teacher)
    guidance = getattr(teacher, "embedded_guidance", None)
    network = getattr(teacher, "unet", None)
    resolution = getattr(teacher, "resolution", None)
    length = getattr(teacher, "max_sequence_length", None)
    return TeacherTraits(
        data_shape=shape, sigma_data=float(getattr(teacher, "sigma_data", 0.5)),
        label_dim=int(getattr(teacher, "label_dim", 0) or 0), text=hasattr(teacher, "encode_prompt"),
        text_width=int(teacher.cond_dim) if getattr(teacher, "cond_dim", None) is not None else None,
        text_length=int(length) if length is not None else None,
        decodes=hasattr(teacher, "decode"), resolution=int(resolution) if resolution is not None else None,
        latent=bool(getattr(teacher, "latent", False)), schedule=schedule,
        guidance_distilled=bool(getattr(teacher, "guidance_distilled", False)),
        embedded_guidance=None if guidance is None else float(guidance), family=str(getattr(teacher, "family", "")),
        objective="flow" if schedule.kind == "flow" else str(getattr(teacher, "prediction_type", "denoiser")),
        exact_samples=callable(getattr(teacher, "sample", None)),
        network=network if isinstance(network, torch.nn.Module) else None)
