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
from typing import Callable, Optional

import torch

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
    #: a flow-matching teacher (``num_train_timesteps`` set)
    flow: bool
    #: a discrete teacher's ``sigma_t`` per training timestep, else None
    timestep_sigmas: Optional[torch.Tensor]
    num_train_timesteps: Optional[int]
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
    #: the noise levels the network was trained on, (sigma_min, sigma_max): a sampler clips to them
    sigma_range: tuple[float, float]
    #: snaps a noise level to the ones the network takes (a discrete teacher's grid), else None
    round_sigma: Optional[Callable]


def traits(teacher) -> TeacherTraits:
    """The traits of ``teacher``, a :class:`~.base.Denoiser`."""
    sigmas = getattr(teacher, "sigmas", None)
    flow = bool(getattr(teacher, "flow", False))
    guidance = getattr(teacher, "embedded_guidance", None)
    network = getattr(teacher, "unet", None)
    resolution = getattr(teacher, "resolution", None)
    length = getattr(teacher, "max_sequence_length", None)
    round_sigma = getattr(teacher, "round_sigma", None)
    return TeacherTraits(
        data_shape=data_shape_of(teacher), sigma_data=float(getattr(teacher, "sigma_data", 0.5)),
        label_dim=int(getattr(teacher, "label_dim", 0) or 0), text=hasattr(teacher, "encode_prompt"),
        text_width=int(teacher.cond_dim) if getattr(teacher, "cond_dim", None) is not None else None,
        text_length=int(length) if length is not None else None,
        decodes=hasattr(teacher, "decode"), resolution=int(resolution) if resolution is not None else None,
        latent=bool(getattr(teacher, "latent", False)), flow=flow,
        timestep_sigmas=sigmas if torch.is_tensor(sigmas) and sigmas.ndim == 1 else None,
        num_train_timesteps=int(teacher.num_train_timesteps) if flow else None,
        guidance_distilled=bool(getattr(teacher, "guidance_distilled", False)),
        embedded_guidance=None if guidance is None else float(guidance), family=str(getattr(teacher, "family", "")),
        objective="flow" if flow else str(getattr(teacher, "prediction_type", "denoiser")),
        exact_samples=callable(getattr(teacher, "sample", None)),
        network=network if isinstance(network, torch.nn.Module) else None,
        sigma_range=(float(getattr(teacher, "sigma_min", 0.0) or 0.0), float(getattr(teacher, "sigma_max", float("inf")))),
        round_sigma=round_sigma if callable(round_sigma) else None)
