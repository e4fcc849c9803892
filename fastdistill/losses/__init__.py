"""Public loss API: `from fastdistill.losses import sid_loss`."""
from .functional import dmd_loss, dsm_loss, sid_loss, sim_loss
from .modules import DMDLoss, DSMLoss, SiDLoss, SIMLoss

__all__ = ["sid_loss", "sim_loss", "dmd_loss", "dsm_loss", "SiDLoss", "SIMLoss", "DMDLoss", "DSMLoss"]
