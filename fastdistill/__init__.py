"""fastdistill: score-based distillation of diffusion models with fused loss kernels."""
__version__ = "0.1.0"
