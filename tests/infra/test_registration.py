"""Passes register the MLIR way: built-in ones from ``qdq_passes/passes/``, out-of-tree ones through
the ``qdq_passes.passes`` entry-point group, and a pipeline imports only what its passes need."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import pytest

from tests.models import constant_weights_model, ort_quantize

QDQ_OPT = [sys.executable, "-m", "qdq_passes.cli"]

PLUGIN = '''
"""A pass from outside qdq-passes: writes a greeting into the model's metadata."""

import onnx_ir

from qdq_passes import QdqPass


class HelloPass(QdqPass):
    """Greets the model (a metadata entry ``hello=world``)."""

    argument = "hello"
    summary = "Write hello=world into the model's metadata"
    statistics = {"num-greeted": "models greeted"}

    def call(self, model: onnx_ir.Model) -> onnx_ir.passes.PassResult:
        model.metadata_props["hello"] = "world"
        self.bump("num-greeted")
        return onnx_ir.passes.PassResult(model, True)
'''


def _install_plugin(site: Path, entry_points: str) -> dict[str, str]:
    """A distribution ``qdq-hello`` in folder ``site`` (module and dist-info, as pip installs it);
    returns the environment that puts it on the path."""
    import os

    (site / "qdq_hello.py").write_text(textwrap.dedent(PLUGIN), encoding="utf-8")
    info = site / "qdq_hello-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: qdq-hello\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(entry_points, encoding="utf-8")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def test_a_plugin_pass_runs_from_qdq_opt(tmp_path):
    env = _install_plugin(tmp_path, "[qdq_passes.passes]\nhello = qdq_hello:HelloPass\n")
    listed = subprocess.run([*QDQ_OPT, "--list-passes"], capture_output=True, text=True, env=env)
    assert listed.returncode == 0, listed.stderr
    assert "hello" in listed.stdout and "Write hello=world" in listed.stdout
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(constant_weights_model(), src)
    run = subprocess.run([*QDQ_OPT, str(src), "-o", str(out), "-p", "hello,dce", "--pass-statistics"],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert "(num-greeted) 1" in run.stderr
    props = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert props["hello"] == "world" and props["qdq_passes.pipeline"] == "hello,dce"


def test_a_broken_plugin_is_one_warning_and_the_rest_still_load(tmp_path):
    env = _install_plugin(tmp_path, "[qdq_passes.passes]\nhello = qdq_hello:HelloPass\nbroken = qdq_missing:Nope\n")
    listed = subprocess.run([*QDQ_OPT, "--list-passes"], capture_output=True, text=True, env=env)
    assert listed.returncode == 0
    assert "hello" in listed.stdout and "dce" in listed.stdout
    warnings = [line for line in listed.stderr.splitlines() if "broken" in line]
    assert len(warnings) == 1 and "qdq_missing" in warnings[0], listed.stderr


@pytest.mark.parametrize("pipeline", ["dce", "fold-qdq,unfold-qdq,strip-qdq", "lower-qdq,check"])
def test_a_pipeline_without_torch_passes_never_imports_torch(tmp_path, pipeline):
    """Registering every pass imports no torch: only a pass that needs it (adaround, the quantizer
    modules) does, when it runs."""
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(ort_quantize(constant_weights_model(), tmp_path), src)
    code = ("import sys\nfrom qdq_passes.cli import main\n"
            "rc = main(['--list-passes'])\n"
            f"rc = rc or main([{str(src)!r}, '-o', {str(out)!r}, '-p', {pipeline!r}])\n"
            "print(rc, 'torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.split()[-2:] == ["0", "False"], proc.stdout[-2000:] + proc.stderr
