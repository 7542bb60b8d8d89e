#!/usr/bin/env python3
"""Run ``qdq-opt`` from a checkout: ``.venv/bin/python tools/qdq_opt.py IN -o OUT -p PIPELINE``.

The checkout is importable once installed in editable mode (``make venv``, or ``pip install -e .``),
which maps ``ir/`` to ``qdq_passes.ir``; this script is the console script without the install.
"""

from __future__ import annotations

import sys

try:
    from qdq_passes.cli import main
except ImportError as exc:  # not installed: say how, in one line
    sys.exit(f"tools/qdq_opt.py: qdq_passes is not importable ({exc}); run 'make venv' and use .venv/bin/python")

if __name__ == "__main__":
    sys.exit(main())
