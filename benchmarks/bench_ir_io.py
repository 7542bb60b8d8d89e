#!/usr/bin/env python3
"""Load+save of a ~100 MB model: qdq-passes (`-p dce`, verification on) against onnx.load/onnx.save.

Both sides run in the same process, interleaved, best of N repetitions; a second table times whole
command-line runs (`qdq-opt` against a `python -c` doing onnx.load/onnx.save), start-up included.

    python benchmarks/bench_ir_io.py [--mb 100] [--repeat 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def make_model(path: Path, megabytes: int, external: bool) -> None:
    """A MatMul/Relu chain whose weights add up to about ``megabytes`` MB, plus small-node clutter."""
    rng = np.random.default_rng(0)
    width = 1024
    layers = max(1, round(megabytes * 1e6 / (width * width * 4)))
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        w = rng.standard_normal((width, width), dtype=np.float32) * 0.03
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [f"r{i}"]))
        nodes.append(helper.make_node("Neg", [f"m{i}"], [f"dead{i}"]))  # removed by dce
        x = f"r{i}"
    graph = helper.make_graph(
        nodes, "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, width])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if external:
        onnx.save(model, path, save_as_external_data=True, location=path.name + ".data", size_threshold=1024)
    else:
        onnx.save(model, path)


def best_of(repeat: int, fn) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeat):
        os.sync()  # flush the previous run's dirty pages, so write-back throttling hits neither side
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import onnx_ir  # noqa: F401  - imported before timing, as both sides' imports are

    import qdq_passes
    from qdq_passes.infra.manager import PassManager
    from qdq_passes.infra.verify import verify_model
    from qdq_passes.model_io import load_model, save_model

    qdq_passes.configure(threads=args.threads)
    print(f"# bench_ir_io: {platform.processor() or platform.machine()}, python {platform.python_version()}, "
          f"onnx {onnx.__version__}, onnx_ir {onnx_ir.__version__}, {args.mb} MB model, best of {args.repeat}\n")
    print("| storage | onnx.load+save s | same, saved atomically (temp + rename) s | qdq-passes load+dce+verify+save s "
          "| ratio | ratio to atomic |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for external in (False, True):
            src = folder / ("ext" if external else "emb")
            src.mkdir()
            path = src / "m.onnx"
            make_model(path, args.mb, external)
            out_a, out_b = src / "a.onnx", src / "b.onnx"

            def plain() -> None:
                m = onnx.load(path)
                if external:
                    onnx.save(m, out_a, save_as_external_data=True, location="a.onnx.data", size_threshold=1024)
                else:
                    onnx.save(m, out_a)

            def plain_atomic() -> None:
                m = onnx.load(path)
                tmp = src / ".a_tmp.onnx"
                if external:
                    onnx.save(m, tmp, save_as_external_data=True, location="a.onnx.data", size_threshold=1024)
                else:
                    onnx.save(m, tmp)
                os.replace(tmp, out_a)

            pipeline = qdq_passes.parse_pipeline("dce")

            def ours() -> None:
                model = load_model(path)
                verify_model(model)
                PassManager(pipeline).run(model)
                qdq_passes.stamp_provenance(model, pipeline)
                save_model(model, out_b)

            t_plain, t_atomic, t_ours = [], [], []
            for _ in range(args.repeat):  # interleaved: the machine's noise hits all sides alike
                t_plain.append(best_of(1, plain))
                t_atomic.append(best_of(1, plain_atomic))
                t_ours.append(best_of(1, ours))
            a, c, b = min(t_plain), min(t_atomic), min(t_ours)
            print(f"| {'external' if external else 'embedded'} | {a:.3f} | {c:.3f} | {b:.3f} | {b / a:.2f}x | {b / c:.2f}x |")

        print("\n| whole command (start-up included) | s | ratio |")
        print("|---|---|---|")
        path = folder / "emb" / "m.onnx"
        plain_cmd = [sys.executable, "-c", f"import onnx; onnx.save(onnx.load({str(path)!r}), {str(folder / 'c.onnx')!r})"]
        ours_cmd = [sys.executable, "-m", "qdq_passes.cli", str(path), "-o", str(folder / "d.onnx"), "-p", "dce",
                    "--threads", str(args.threads)]
        t_plain, t_ours = [], []
        for _ in range(args.repeat):
            t_plain.append(best_of(1, lambda: subprocess.run(plain_cmd, check=True)))
            t_ours.append(best_of(1, lambda: subprocess.run(ours_cmd, check=True)))
        a, b = min(t_plain), min(t_ours)
        print(f"| python -c onnx.load/onnx.save | {a:.3f} | 1.00x |")
        print(f"| qdq-opt -p dce | {b:.3f} | {b / a:.2f}x |")


if __name__ == "__main__":
    main()
