"""Draw pareto.png from run.py's results.json: output SQNR against wall time, one panel per case,
one line per tool through its iteration counts (runs in ``_envs/data``, matplotlib).

    python plot_pareto.py _work/results.json pareto.png
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src: str, dst: str) -> None:
    data = json.load(open(src))
    rows = [r for r in data["rows"] if r.get("sqnr_db") is not None]
    cases = sorted({r["case"] for r in rows})
    fig, axes = plt.subplots(1, len(cases), figsize=(4.5 * len(cases), 4), squeeze=False)
    for ax, case in zip(axes[0], cases):
        lines = defaultdict(list)
        for r in rows:
            if r["case"] != case:
                continue
            if r["tool"] == "nearest":
                ax.axhline(r["sqnr_db"], color="grey", ls=":", label="nearest")
            else:
                lines[r["tool"]].append((r.get("wall_s") or 0.0, r["sqnr_db"], r["iters"]))
        for tool, pts in sorted(lines.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=tool)
            for x, y, it in pts:
                ax.annotate(str(it), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_title(case)
        ax.set_xlabel("wall s (process, log)")
        ax.set_ylabel("output SQNR dB")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(data.get("machine", ""), fontsize=7)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(*sys.argv[1:3])
