"""SIM: score implicit matching with the pseudo-Huber distance (ALGORITHMS.md section 3, reconstructed).

The authors published neither time weighting nor optimiser; we use SiD's generator-step noise
schedule, optimiser and loss scale, and document that choice.
"""
from ..losses import sim_loss
from .base import DistillMethod, register_method


@register_method("sim")
class SIM(DistillMethod):
    """``l_b = S_b / N_b``; options ``distance`` (pseudo_huber | l2), ``c``, ``sim_weight``."""

    def loss(self, y, y_real, y_fake):
        c = self.cfg
        return sim_loss(y, y_real, y_fake, distance=c.distance, c=c.c, weight=c.sim_weight,
                        loss_scale=c.generator_loss_scale, backend=self.backend)
