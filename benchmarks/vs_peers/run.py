"""qdq-passes AdaRound against AMD Quark and Qualcomm AIMET: same models, data, scales and settings.

One command (from the repository root, with any Python 3.11):

    python3 benchmarks/vs_peers/run.py [--iters 1000] [--threads 1] [--batch-size 32] [--lr 0.1]
        [--cases cnn-w4,cnn-w8,tfm-w4,tfm-w8,magika-w4,magika-w8] [--tools nearest,quark,aimet,ours-layer,ours-block]
        [--skip-install] [--pareto 100,300]

1. Environments under ``_envs/`` (skipped when their stamp exists, or with ``--skip-install``):
   ``data`` (torch 2.13.0 CPU, scikit-learn, onnx, onnxruntime, matplotlib, magika 1.0.3), ``quark`` (torch
   2.13.0, then amd-quark==0.13, onnxruntime), ``aimet`` (torch 2.13.0, torchvision 0.28.0 with
   --no-deps, pillow, then aimet-onnx==2.42.0), ``ours`` only when the running interpreter cannot
   import qdq_passes (then the repository's .venv if it can, else a new venv with torch 2.13.0 and
   ``-e .``). A failed install is recorded and shown in the table as ``not installed: <reason>``.
2. ``build_data.py`` (data env) writes each case's float model, calibration/hold-out inputs and
   onnxruntime QDQ models to ``_work/<case>/``: every tool reads the same files. ``magika-*``: the
   pretrained model shipped in the magika wheel, fed magika's own features of real files on this
   machine (see build_data.py).
3. Each tool runs in its own process under ``/usr/bin/time -v`` (wall time, peak RSS), with
   OMP/MKL/OpenBLAS thread variables, torch's intra-op threads and every onnxruntime session's
   intra-op threads set to ``--threads``; same calibration samples, iterations and batch size;
   Quark and ours at the same learning rate (AIMET's is fixed at 1e-3).
4. ``score.py`` (our venv, onnxruntime with optimisations off) scores each output against the float
   model on the hold-out inputs; one markdown table is printed and saved to ``_work/results.md``
   (raw rows in ``_work/results.json``); ``--pareto`` adds runs at those iteration counts and
   draws ``pareto.png`` (SQNR against wall time per tool and case).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
ENVS = HERE / "_envs"
WORK = HERE / "_work"
TORCH = "torch==2.13.0"
INSTALL = {
    "data": [[TORCH], ["scikit-learn", "onnx==1.23.2", "onnxruntime==1.32.0", "matplotlib", "magika==1.0.3"]],
    "quark": [[TORCH], ["amd-quark==0.13", "onnxruntime==1.32.0"]],
    "aimet": [[TORCH], ["--no-deps", "torchvision==0.28.0"], ["pillow"], ["aimet-onnx==2.42.0"]],
    "ours": [[TORCH], ["-e", str(ROOT)]],
}
CASES = ["cnn-w4", "cnn-w8", "tfm-w4", "tfm-w8", "magika-w4", "magika-w8"]
TOOLS = ["nearest", "quark", "aimet", "ours-layer", "ours-block"]
TOOL_ENV = {"quark": "quark", "aimet": "aimet", "ours-layer": "ours", "ours-block": "ours"}


def log(msg: str) -> None:
    print(f"[vs_peers {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- environments


def env_python(name: str) -> Path:
    return ENVS / name / "bin" / "python"


def _imports_ours(python: str | Path) -> bool:
    return subprocess.run([str(python), "-c", "import qdq_passes, onnx_ir, torch, onnxruntime"],
                          capture_output=True).returncode == 0


def ours_python(skip_install: bool) -> tuple[Path | None, str]:
    """An interpreter that imports qdq_passes: this one, the repo's .venv, or _envs/ours."""
    for candidate in (Path(sys.executable), ROOT / ".venv" / "bin" / "python", env_python("ours")):
        if candidate.exists() and _imports_ours(candidate):
            return candidate, ""
    if skip_install:
        return None, "qdq_passes not importable and --skip-install given"
    err = install("ours")
    return (env_python("ours"), "") if not err else (None, err)


def install(name: str) -> str:
    """Create ``_envs/<name>`` with its pinned installs; returns '' or the failure reason."""
    stamp, failed = ENVS / name / ".installed", ENVS / f"{name}.failed"
    if stamp.exists():
        return ""
    ENVS.mkdir(parents=True, exist_ok=True)
    logfile = ENVS / f"{name}_install.log"
    log(f"installing _envs/{name} (log: {logfile})")
    with open(logfile, "w") as out:
        if not env_python(name).exists():
            r = subprocess.run([sys.executable, "-m", "venv", str(ENVS / name)], stdout=out, stderr=subprocess.STDOUT)
            if r.returncode:
                return _fail(failed, logfile, "python -m venv failed")
        for step in INSTALL[name]:
            r = subprocess.run([str(env_python(name)), "-m", "pip", "install", *step], stdout=out,
                               stderr=subprocess.STDOUT)
            if r.returncode:
                return _fail(failed, logfile, f"pip install {' '.join(step)} failed")
    failed.unlink(missing_ok=True)
    stamp.touch()
    return ""


def _fail(failed: Path, logfile: Path, what: str) -> str:
    lines = [ln.strip() for ln in logfile.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR")] or lines[-1:]
    reason = f"{what}: {errors[-1] if errors else '?'}"[:300]
    failed.write_text(reason)
    log(reason)
    return reason


def env_state(name: str, skip_install: bool) -> str:
    """'' when usable, else why not."""
    if not skip_install:
        return install(name)
    if env_python(name).exists():
        return ""
    failed = ENVS / f"{name}.failed"
    return failed.read_text() if failed.exists() else f"_envs/{name} missing (--skip-install)"


# --------------------------------------------------------------------------- running


def thread_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env["PYTHONPATH"] = str(ROOT)
    return env


def timed(cmd: list[str], logfile: Path, threads: int, cwd: Path) -> dict:
    """Run ``cmd`` under /usr/bin/time -v; wall s, peak RSS MB, return code, the RESULT line."""
    timefile = logfile.with_suffix(".time")
    with open(logfile, "w") as out:
        proc = subprocess.run(["/usr/bin/time", "-v", "-o", str(timefile), *cmd], stdout=out,
                              stderr=subprocess.STDOUT, env=thread_env(threads), cwd=cwd)
    text = timefile.read_text() if timefile.exists() else ""
    res: dict = {"rc": proc.returncode}
    m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text)
    if m:
        parts = [float(p) for p in m.group(1).split(":")]
        res["wall_s"] = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if m:
        res["rss_mb"] = int(m.group(1)) / 1024
    body = logfile.read_text(errors="replace")
    for line in body.splitlines():
        if line.startswith("RESULT "):
            res.update(json.loads(line[len("RESULT "):]))
    m = re.search(r"^\s*([\d.]+) \(\s*[\d.]+%\)\s+adaround\s*$", body, re.M)
    if m:
        res["algo_s"] = float(m.group(1))
    if proc.returncode:
        tail = [ln for ln in body.splitlines() if ln.strip()][-3:]
        res["error"] = " | ".join(tail)[-300:]
    return res


def run_tool(tool: str, case: str, iters: int, a: argparse.Namespace, ours_py: Path) -> dict:
    case_dir = WORK / case
    runs = case_dir / "runs"
    runs.mkdir(exist_ok=True)
    out = runs / f"{tool}-{iters}.onnx"
    logfile = runs / f"{tool}-{iters}.log"
    common = ["--iters", str(iters), "--batch-size", str(a.batch_size), "--threads", str(a.threads)]
    if tool == "quark":
        cmd = [str(env_python("quark")), str(HERE / "tool_quark.py"), str(case_dir), str(out), *common, "--lr", str(a.lr)]
    elif tool == "aimet":
        cmd = [str(env_python("aimet")), str(HERE / "tool_aimet.py"), str(case_dir), str(out), *common]
    else:
        gran = tool.split("-")[1]
        qdq_opt = str(Path(ours_py).parent / "qdq-opt")
        pipeline = (f"insert-quantizers{{weights=adaround}},adaround{{iters={iters} batch-size={a.batch_size} "
                    f"lr={a.lr} granularity={gran} seed=0}},lower-qdq,fold-qdq")
        cmd = [qdq_opt, str(case_dir / "qdq_keep.onnx"), "-o", str(out), "-p", pipeline, "--calib",
               str(case_dir / "calib.npz"), "--threads", str(a.threads), "--seed", "0", "--timing"]
    log(f"{case} {tool} {iters} it ...")
    res = timed(cmd, logfile, a.threads, runs)
    res["out"] = str(out)
    log(f"{case} {tool} {iters} it: rc {res['rc']}, {res.get('wall_s', 0):.1f} s")
    return res


def score(case: str, model: Path, enforce: bool, a: argparse.Namespace, ours_py: Path) -> dict:
    case_dir = WORK / case
    meta = json.loads((case_dir / "meta.json").read_text())
    nearest = case_dir / ("qdq_int8c.onnx" if enforce and meta["bits"] == 4 else "qdq.onnx")
    cmd = [str(ours_py), str(HERE / "score.py"), str(case_dir), str(model), "--threads", str(a.threads),
           "--nearest", str(nearest)]
    if enforce:
        cmd.append("--enforce-int4")
    p = subprocess.run(cmd, capture_output=True, text=True, env=thread_env(a.threads))
    if p.returncode:
        return {"score_error": (p.stderr.strip().splitlines() or ["?"])[-1][-200:]}
    return json.loads(p.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- table


def fmt(v: object, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def table(rows: list[dict], a: argparse.Namespace) -> str:
    lines = [
        f"AdaRound vs peers: {a.batch_size} samples per step, {a.threads} torch/onnxruntime thread(s), "
        f"lr {a.lr} (ours, Quark); 256 calibration samples; scored in onnxruntime on held-out inputs "
        f"(magika: against the float model's logits, top-1 = its content-type label).",
        "",
        "| case | tool | iters | SQNR dB | top-1 = float | acc | codes changed % | wall s | algo s | peak RSS MB | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['tool']} | {r['iters'] if r['tool'] != 'nearest' else '–'} | {fmt(r.get('sqnr_db'), '.2f')} "
            f"| {fmt(r.get('top1_agree'), '.3f')} | {fmt(r.get('acc'), '.3f')} | {fmt(r.get('codes_changed_pct'), '.1f')} "
            f"| {fmt(r.get('wall_s'), '.1f')} | {fmt(r.get('algo_s'), '.1f')} | {fmt(r.get('rss_mb'), '.0f')} "
            f"| {r.get('note', '')} |")
    return "\n".join(lines)


CASE_NOTES = {
    "cnn-w4": "ours: real INT4 (ORT QInt4 grid [-8,7]); Quark: same codes/scales in int8 tensors",
    "tfm-w4": "ours: real INT4; Quark: int8 tensors",
    "magika-w4": "ours: real INT4; Quark: int8 tensors",
    "magika-w8": "magika 1.0.3's bundled model (cut at logits), inputs from real files on this machine",
}


def order(r: dict) -> tuple:
    cases = CASES
    c = cases.index(r["case"]) if r["case"] in cases else len(cases)
    t = TOOLS.index(r["tool"]) if r["tool"] in TOOLS else len(TOOLS)
    return (c, r["case"], t, r.get("iters") or 0)


def machine() -> str:
    cpu = "?"
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = os.getloadavg()
    return (f"{platform.node()}: {cpu}, {os.cpu_count()} CPUs, {mem:.0f} GiB, Python {platform.python_version()}, "
            f"load {load[0]:.1f}/{load[1]:.1f}; {time.strftime('%Y-%m-%d %H:%M %Z')}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--tools", default=",".join(TOOLS))
    p.add_argument("--skip-install", action="store_true", help="use the environments as they are")
    p.add_argument("--rebuild-data", action="store_true", help="rebuild _work/<case> even if present")
    p.add_argument("--pareto", default="", help="extra iteration counts for pareto.png, e.g. 100,300")
    p.add_argument("--magika-iters", type=int, default=100,
                   help="iterations of the magika cases (the peers take 3-4 s per iteration there; no pareto counts)")
    a = p.parse_args()
    if not Path("/usr/bin/time").exists():
        sys.exit("needs GNU time at /usr/bin/time (apt-get install time)")
    cases, tools = a.cases.split(","), a.tools.split(",")
    ours_py, ours_err = ours_python(a.skip_install)
    states = {name: env_state(name, a.skip_install) for name in ("data", "quark", "aimet")}
    if states["data"]:
        sys.exit(f"the data environment is needed: {states['data']}")
    if ours_py is None:
        sys.exit(f"our environment is needed (scoring): {ours_err}")
    missing = [c for c in cases if a.rebuild_data or not (WORK / c / "meta.json").exists()]
    if missing:
        log(f"building {','.join(missing)}")
        subprocess.run([str(env_python("data")), str(HERE / "build_data.py"), "--out", str(WORK), "--cases",
                        ",".join(missing), "--threads", str(a.threads)], check=True, env=thread_env(a.threads))
    counts = [a.iters] + [int(x) for x in a.pareto.split(",") if x]
    rows: list[dict] = []
    results = WORK / "results.json"
    # rows of earlier runs (other cases, tools or iteration counts) are kept unless measured again
    earlier = json.loads(results.read_text())["rows"] if results.exists() else []
    key = lambda r: (r["case"], r["tool"], r.get("iters"))  # noqa: E731
    for case in cases:
        case_counts = [a.magika_iters] if case.startswith("magika") else counts
        for tool in tools:
            for iters in (case_counts if tool != "nearest" else [0]):
                row = {"case": case, "tool": tool, "iters": iters, "threads": a.threads, "batch_size": a.batch_size}
                if tool == "nearest":
                    row.update(score(case, WORK / case / "qdq.onnx", False, a, ours_py))
                    row["note"] = "onnxruntime quantize_static" + (" (real INT4)" if case.endswith("w4") else "")
                else:
                    state = states.get(TOOL_ENV[tool], "")
                    if state:
                        row["note"] = f"not installed: {state}"
                        row.pop("iters")
                        rows.append(row)
                        break
                    res = run_tool(tool, case, iters, a, ours_py)
                    row.update({k: v for k, v in res.items() if k in ("wall_s", "rss_mb", "algo_s", "rc", "out")})
                    notes = [res["note"]] if res.get("note") else []
                    if res["rc"]:
                        notes.append(f"failed: {res.get('error', '')}")
                    else:
                        row.update(score(case, Path(res["out"]), bool(res.get("enforce_int4")), a, ours_py))
                        if row.get("codes_outside_int4"):
                            notes.append(f"{row['codes_outside_int4']} codes outside int4 clamped")
                        if row.get("codes_unmatched"):
                            notes.append(f"{row['codes_unmatched']} weights not matched for codes changed")
                        if row.get("score_error"):
                            notes.append(f"scoring failed: {row['score_error']}")
                    if tool.startswith("ours") and case.endswith("w4"):
                        notes.append("real INT4")
                    row["note"] = "; ".join(notes)
                rows.append(row)
                fresh = {key(r) for r in rows}
                merged = sorted([r for r in earlier if key(r) not in fresh] + rows, key=order)
                results.write_text(json.dumps({"machine": machine(), "args": vars(a), "rows": merged}, indent=1))
    fresh = {key(r) for r in rows}
    rows = sorted([r for r in earlier if key(r) not in fresh] + rows, key=order)
    results.write_text(json.dumps({"machine": machine(), "args": vars(a), "rows": rows}, indent=1))
    main_rows = [r for r in rows if r.get("iters") in (a.iters, 0, None)
                 or (r["case"].startswith("magika") and r.get("iters") == a.magika_iters)]
    text = "\n".join([f"Machine: {machine()}", "", table(main_rows, a), ""]
                     + [f"* {c}: {CASE_NOTES[c]}" for c in cases if c in CASE_NOTES])
    if len(counts) > 1:
        text += "\n\nAll iteration counts:\n\n" + table(rows, a)
        subprocess.run([str(env_python("data")), str(HERE / "plot_pareto.py"), str(results), str(HERE / "pareto.png")],
                       check=False)
    (WORK / "results.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
