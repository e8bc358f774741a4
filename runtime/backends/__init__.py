"""Execution backends behind one interface (``base.Backend``) and one registry (``registry``).

``open_backend(model_dir, backend=None, device="cpu")`` loads a compiled model on the
backend its manifest names, or on the one asked for.
"""

from planforge.runtime.backends.base import Backend, positions_from_mask
from planforge.runtime.backends.registry import backend_names, backends, open_backend, register_backend

__all__ = ["Backend", "backend_names", "backends", "open_backend", "positions_from_mask", "register_backend"]
