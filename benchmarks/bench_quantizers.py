"""Throughput of per-channel int8 quantize-dequantize on a square weight (default 4096 x 4096).

Compares ``INTQuantizer`` (bit-exact with onnxruntime) with
``torch.fake_quantize_per_channel_affine`` (not bit-exact: it multiplies by 1/s) and a plain
tensor copy, forward only and forward+backward, and prints a markdown table of elements/s
(median over repeats) and the ratio to the builtin.

    python benchmarks/bench_quantizers.py [--size 4096] [--threads N] [--repeat 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

from qdq_passes.quantizers import INTQuantizer


def _median_seconds(fn: Callable[[], object], repeat: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _forward_backward(
    f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grad: torch.Tensor
) -> Callable[[], None]:
    def run() -> None:
        x.grad = None
        f(x).backward(grad)

    return run


def main() -> None:
    """Parse options, run the cases, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="rows and columns of the weight")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="torch intra-op threads"
    )
    parser.add_argument("--repeat", type=int, default=10, help="timed runs per case (median)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    n = args.size
    weight = torch.randn(n, n)
    scale = weight.abs().amax(dim=1) / 127
    zero_point = torch.zeros(n, dtype=torch.int32)
    ours = INTQuantizer(scale, zero_point, torch.tensor(-128.0), torch.tensor(127.0), ch_axis=0)

    def builtin(x: torch.Tensor) -> torch.Tensor:
        return torch.fake_quantize_per_channel_affine(x, scale, zero_point, 0, -128, 127)

    def copy(x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    with torch.no_grad():
        mismatches = int((ours(weight) != builtin(weight)).sum())
    cases = {
        "ours (INTQuantizer)": ours,
        "torch.fake_quantize_per_channel_affine": builtin,
        "tensor copy": copy,
    }
    x = weight.clone().requires_grad_()
    grad = torch.ones_like(weight)
    rows = []
    for name, f in cases.items():
        with torch.no_grad():
            forward = _median_seconds(lambda f=f: f(weight), args.repeat)
        both = _median_seconds(_forward_backward(f, x, grad), args.repeat)
        rows.append((name, weight.numel() / forward, weight.numel() / both))

    base_fwd, base_both = rows[1][1], rows[1][2]
    print(
        f"per-channel int8 Q->DQ, {n}x{n} float32, {args.threads} threads, "
        f"torch {torch.__version__}, "
        f"median of {args.repeat}"
    )
    print()
    print("| implementation | forward (elem/s) | vs builtin | fwd+bwd (elem/s) | vs builtin |")
    print("|---|---:|---:|---:|---:|")
    for name, fwd, both in rows:
        print(
            f"| {name} | {fwd:.3e} | {fwd / base_fwd:.2f}x | {both:.3e} | {both / base_both:.2f}x |"
        )
    print()
    print(f"builtin differs from ours (= onnxruntime) on {mismatches} of {weight.numel()} elements")


if __name__ == "__main__":
    main()
