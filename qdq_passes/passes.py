"""The built-in passes: importing this module registers every one of them."""

from qdq_passes import cleanup  # noqa: F401
