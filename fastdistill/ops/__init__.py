"""Loss ops: the reference oracle and the fused backends behind one registry."""
from .registry import BACKENDS, backend_status, resolve_backend

__all__ = ["BACKENDS", "backend_status", "resolve_backend"]
