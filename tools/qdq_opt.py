#!/usr/bin/env python3
"""Run ``qdq-opt`` from a checkout without installing: ``python tools/qdq_opt.py IN -o OUT -p PIPELINE``.

Importing this module also makes the checkout's ``qdq_passes`` (with ``ir/`` as ``qdq_passes.ir``)
importable, which is what tools/update_goldens.py relies on.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

if "qdq_passes.ir" not in sys.modules:
    sys.path.insert(0, str(ROOT))
    _spec = importlib.util.spec_from_file_location(
        "qdq_passes.ir", ROOT / "ir" / "__init__.py", submodule_search_locations=[str(ROOT / "ir")]
    )
    assert _spec is not None and _spec.loader is not None
    _ir = importlib.util.module_from_spec(_spec)
    sys.modules["qdq_passes.ir"] = _ir
    _spec.loader.exec_module(_ir)

if __name__ == "__main__":
    from qdq_passes.cli import main

    sys.exit(main())
