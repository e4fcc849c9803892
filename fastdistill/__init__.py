"""fastdistill: score-based distillation of diffusion models with fused loss kernels.

    from fastdistill import load_teacher, run_distillation, load_student
    teacher = load_teacher("digits")
    result = run_distillation("digits", overrides=["steps=200", "out_dir=runs/my-sid"])
    student = load_student("runs/my-sid")
    x = student.sample(16, seed=0, cond=3)

The names below are imported on first use, so ``import fastdistill.losses`` stays light.
"""
__version__ = "0.1.0"

_PUBLIC = {
    "Conditioning": "fastdistill.conditioning",
    "Denoiser": "fastdistill.teachers",
    "load_teacher": "fastdistill.teachers",
    "DistillConfig": "fastdistill.engine",
    "run_distillation": "fastdistill.engine",
    "Student": "fastdistill.student",
    "load_student": "fastdistill.student",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'fastdistill' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_PUBLIC[name]), name)
