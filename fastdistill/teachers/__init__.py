"""Teachers: the Denoiser protocol, networks, checkpoint formats and the one resolver, ``load_teacher``."""
from .analytic import (GaussianMixtureTeacher, analytic_teacher, eight_gaussians, grid_of_gaussians, ring_of_gaussians,
                       single_gaussian)
from .base import Denoiser, GuidedDenoiser, guided, score_from_denoiser
from .checkpoint import CheckpointError, register_teacher_class, save_teacher
from .diffusers_adapter import DiffusersDenoiser, load_diffusers_teacher
from .edm_pickle import UnsafeCheckpointError, load_edm_pickle, read_edm_pickle
from .loading import load_teacher
from .mlp import MLPDenoiser
from .networks import DhariwalUNet, SongUNet
from .precond import EDMPrecond, VEPrecond, VPPrecond
from .training import TrainResult, edm_loss, train_teacher

__all__ = ["Denoiser", "score_from_denoiser", "guided", "GuidedDenoiser", "load_teacher", "analytic_teacher", "GaussianMixtureTeacher",
           "eight_gaussians", "ring_of_gaussians", "grid_of_gaussians", "single_gaussian", "CheckpointError",
           "save_teacher", "register_teacher_class", "UnsafeCheckpointError", "load_edm_pickle", "read_edm_pickle",
           "MLPDenoiser", "SongUNet", "DhariwalUNet", "EDMPrecond", "VPPrecond", "VEPrecond", "train_teacher",
           "edm_loss", "TrainResult", "DiffusersDenoiser", "load_diffusers_teacher"]
