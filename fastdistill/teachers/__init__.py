from .networks import SongUNet, DhariwalUNet
from .precond import EDMPrecond, VPPrecond, VEPrecond
from .checkpoint import CheckpointError, save_teacher, register_teacher_class
from .edm_pickle import UnsafeCheckpointError, load_edm_pickle, read_edm_pickle
from .loading import load_teacher
from .analytic import GaussianMixtureTeacher, eight_gaussians, ring_of_gaussians, grid_of_gaussians, single_gaussian
from .mlp import MLPDenoiser
from .training import train_teacher, edm_loss, TrainResult
from .diffusers_adapter import DiffusersDenoiser, load_diffusers_teacher
