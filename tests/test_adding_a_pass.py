"""docs/adding-a-pass.md works as written: its pass module, installed as a plugin, runs its golden
case through qdq-opt and keeps the pass contract."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from qdq_passes.golden import GoldenCase, check_lines

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding-a-pass.md"


def _blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)


def test_the_walkthrough_is_under_50_lines_of_code():
    code = _blocks("python")[0]
    assert len([line for line in code.splitlines() if line.strip()]) < 50


def test_the_walkthrough_pass_runs_its_golden_case(tmp_path):
    from qdq_passes.ir.printer import print_model
    from qdq_passes.model_io import load_model

    (tmp_path / "drop_metadata.py").write_text(_blocks("python")[0], encoding="utf-8")
    info = tmp_path / "drop_metadata-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: drop-metadata\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text("[qdq_passes.passes]\ndrop-metadata = drop_metadata:DropMetadataPass\n",
                                           encoding="utf-8")
    case_path = tmp_path / "case.onnxtxt"
    case_path.write_text(_blocks("onnxtxt")[0], encoding="utf-8")
    case = GoldenCase.read(case_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}

    def run(source: Path, out: Path) -> str:
        argv = [str(source) if a == "%s" else a for a in case.run]
        proc = subprocess.run([sys.executable, "-m", "qdq_passes.cli", *argv, "-o", str(out), "--pass-statistics"],
                              capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr
        return proc.stderr

    first = run(case_path, tmp_path / "once.onnx")
    assert "(num-dropped) 1" in first and "(modified: yes)" in first
    assert not check_lines(case.checks, print_model(load_model(tmp_path / "once.onnx")))
    second = run(tmp_path / "once.onnx", tmp_path / "twice.onnx")
    assert "(num-dropped) 0" in second and "(modified: no)" in second
