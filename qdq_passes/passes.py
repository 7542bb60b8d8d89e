"""The built-in passes: importing this module registers every one of them."""

from qdq_passes import cleanup  # noqa: F401
from qdq_passes import fold_qdq  # noqa: F401
from qdq_passes import unfold_qdq  # noqa: F401
from qdq_passes import strip_qdq  # noqa: F401
from qdq_passes import print_blocks  # noqa: F401
from qdq_passes import insert_quantizers  # noqa: F401
from qdq_passes import lower_qdq  # noqa: F401
from qdq_passes import adaround  # noqa: F401
from qdq_passes import quantize  # noqa: F401
