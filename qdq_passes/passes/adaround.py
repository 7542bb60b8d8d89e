"""``adaround``: the pass lives in its own package, :mod:`qdq_passes.adaround` (torch-free to import)."""

from qdq_passes.adaround.pass_ import AdaroundPass

__all__ = ["AdaroundPass"]
