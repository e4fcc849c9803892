"""DMD / Diff-Instruct (ALGORITHMS.md section 4, DMD2 form): scores evaluated without gradient."""
from ..losses import dmd_loss
from .base import DistillMethod, register_method


@register_method("dmd")
class DMD(DistillMethod):
    """``l_b = 0.5 |(yf - yr)/w|^2`` with gradient ``g`` into y only; option ``normalize``."""

    scores_need_grad = False

    def loss(self, y, y_real, y_fake):
        c = self.cfg
        return dmd_loss(y, y_real, y_fake, normalize=c.normalize,
                        loss_scale=c.generator_loss_scale, backend=self.backend)
