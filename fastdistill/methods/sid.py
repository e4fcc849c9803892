"""SiD: score identity distillation (ALGORITHMS.md section 2, official form)."""
from ..losses import sid_loss
from .base import DistillMethod, register_method


@register_method("sid")
class SiD(DistillMethod):
    """``l_b = (1/w_b) sum_i delta_i (a_i - alpha delta_i)``; options ``alpha``, ``weight``."""

    def loss(self, y, y_real, y_fake):
        c = self.cfg
        return sid_loss(y, y_real, y_fake, alpha=c.alpha, weight=c.weight,
                        loss_scale=c.generator_loss_scale, backend=self.backend)
