"""qdq-opt as a user runs it: a subprocess, real files, exit codes, no tracebacks, nothing lost."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.models import assert_bit_identical, constant_weights_model, conv_relu_model, ort_quantize, random_inputs, run_ort

QDQ_OPT = [sys.executable, "-m", "qdq_passes.cli"]


def qdq_opt(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """Run qdq-opt in a subprocess and capture its output."""
    return subprocess.run([*QDQ_OPT, *args], input=stdin, capture_output=True, timeout=120)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def constants_qdq(tmp_path_factory) -> Path:
    """A QDQ model made by onnxruntime from a float model whose weights sit in Constant nodes."""
    folder = tmp_path_factory.mktemp("constants")
    path = folder / "m.onnx"
    onnx.save(ort_quantize(constant_weights_model(), folder), path)
    return path


def test_list_passes_shows_every_pass_with_options():
    result = qdq_opt("--list-passes")
    assert result.returncode == 0
    out = result.stdout.decode()
    for name in ["dce", "cse", "topo-sort", "check", "shape-infer", "constants-to-initializers"]:
        assert f"\n  {name}\n" in out
    assert "min-elements=<int>  (default 0)" in out
    assert "full-check=<bool>  (default false)" in out


def test_cleanup_pipeline_is_bit_exact_and_stamped(constants_qdq, tmp_path):
    before = digest(constants_qdq)
    out = tmp_path / "out.onnx"
    result = qdq_opt(str(constants_qdq), "-o", str(out), "-p", "constants-to-initializers,dce,topo-sort",
                     "--timing", "--pass-statistics")
    assert result.returncode == 0, result.stderr.decode()
    err = result.stderr.decode()
    assert "Pass execution timing report" in err and "constants-to-initializers" in err
    assert "(num-lifted)" in err and "Pass statistics report" in err
    assert digest(constants_qdq) == before
    model = onnx.load(out)
    props = {p.key: p.value for p in model.metadata_props}
    assert props["qdq_passes.pipeline"] == "constants-to-initializers{min-elements=0 all-constants=false},dce,topo-sort"
    assert "qdq_passes.version" in props
    assert not [n for n in model.graph.node if n.op_type == "Constant" and n.attribute[0].name == "value"]
    feeds = random_inputs(onnx.load(constants_qdq), n=3, seed=1)
    for feed in feeds:
        assert_bit_identical(run_ort(constants_qdq, feed), run_ort(out, feed))


def test_malformed_pipeline_prints_caret_and_exits_2(constants_qdq, tmp_path):
    out = tmp_path / "out.onnx"
    result = qdq_opt(str(constants_qdq), "-o", str(out), "-p", "dce,,topo-sort")
    assert result.returncode == 2
    lines = result.stderr.decode().splitlines()
    assert lines[0].startswith("qdq-opt: error: expected a pass name")
    assert lines[1] == "  dce,,topo-sort"
    assert lines[2] == "      ^"
    assert not out.exists()


def _bad_file(tmp_path: Path, kind: str, good: Path) -> Path:
    path = tmp_path / f"{kind}.onnx"
    if kind == "not-onnx":
        path.write_bytes(b"\x89PNG\r\n\x1a\n this is not a model at all" * 10)
    elif kind == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "redeclared":  # what onnxruntime's quantize_static wrote for basic-pitch
        proto = onnx.load(good)
        proto.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(1, np.float32), proto.graph.node[-1].output[0]))
        onnx.save(proto, path)
    return path


@pytest.mark.parametrize(
    ("case", "pipeline", "code", "needle"),
    [
        ("missing", "dce", 1, "no such file"),
        ("not-onnx", "dce", 1, "not a valid ONNX model"),
        ("truncated", "dce", 1, "not a valid ONNX model"),
        ("redeclared", "dce", 1, "is redeclared in the current graph scope"),
        ("empty", "dce", 1, "invalid input model"),
        ("good", "dce,topo-srot", 2, "unknown pass 'topo-srot'; did you mean 'topo-sort'?"),
        ("good", "check{full-chek=1}", 2, "unknown option 'full-chek'; did you mean 'full-check'?"),
        ("good", "constants-to-initializers{min-elements=many}", 2, "option 'min-elements' expects int, got 'many'"),
        ("good", "", 2, "empty pipeline"),
        ("good", "dce{", 2, "unterminated options"),
    ],
)
def test_bad_input_gives_one_clean_line(constants_qdq, tmp_path, case, pipeline, code, needle):
    if case == "good":
        model = constants_qdq
    elif case == "missing":
        model = tmp_path / "nowhere.onnx"
    else:
        model = _bad_file(tmp_path, case, constants_qdq)
    before = digest(model) if model.exists() else None
    out = tmp_path / "out.onnx"
    result = qdq_opt(str(model), "-o", str(out), "-p", pipeline)
    err = result.stderr.decode()
    assert result.returncode == code, err
    assert err.startswith("qdq-opt: error: ")
    assert needle in err
    assert "Traceback" not in err
    if case not in ("good",):
        assert str(model) in err.splitlines()[0]
    assert not out.exists()
    assert list(tmp_path.glob(".out.onnx*")) == []
    if before is not None:
        assert digest(model) == before


def test_debug_shows_the_traceback(tmp_path):
    result = qdq_opt(str(tmp_path / "nowhere.onnx"), "-o", str(tmp_path / "o.onnx"), "-p", "dce", "--debug")
    assert result.returncode != 0
    assert "Traceback" in result.stderr.decode()


def _external_model(folder: Path, location: str) -> Path:
    """conv_relu_model saved with its weights in an external file at ``location``."""
    model = conv_relu_model()
    onnx.save(model, folder / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    if location != "weights.bin":
        proto = onnx.load(folder / "m.onnx", load_external_data=False)
        for tensor in proto.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        onnx.save(proto, folder / "m.onnx")
    return folder / "m.onnx"


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../secret.bin"])
def test_external_data_outside_the_folder_is_refused(tmp_path, location):
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "secret.bin").write_bytes(np.arange(4096, dtype=np.float32).tobytes())
    path = _external_model(folder, location)
    out = tmp_path / "out.onnx"
    result = qdq_opt(str(path), "-o", str(out), "-p", "dce")
    err = result.stderr.decode()
    assert result.returncode == 1
    assert "outside the model's folder; refused" in err and str(path) in err
    assert not out.exists()


def test_external_data_round_trip(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    path = _external_model(src, "weights.bin")
    out_dir = tmp_path / "dst"
    out_dir.mkdir()
    out = out_dir / "out.onnx"
    result = qdq_opt(str(path), "-o", str(out), "-p", "dce,topo-sort")
    assert result.returncode == 0, result.stderr.decode()
    assert (out_dir / "out.onnx.data").exists()
    assert sorted(p.name for p in out_dir.iterdir()) == ["out.onnx", "out.onnx.data"]
    feed = random_inputs(conv_relu_model(), n=1)[0]
    assert_bit_identical(run_ort(conv_relu_model(), feed), run_ort(out, feed))


def test_text_formats_and_pipes(tmp_path):
    model = conv_relu_model()
    binary = onnx.load_model_from_string(model.SerializeToString()).SerializeToString()
    text = qdq_opt("-", "-p", "dce", stdin=binary)
    assert text.returncode == 0, text.stderr.decode()
    assert text.stdout.startswith(b"<")
    again = qdq_opt("-", "-p", "topo-sort", "--binary", stdin=text.stdout)
    assert again.returncode == 0, again.stderr.decode()
    round_tripped = onnx.load_model_from_string(again.stdout)
    (tmp_path / "m.onnxtxt").write_bytes(text.stdout)
    out = tmp_path / "out.onnxtxt"
    result = qdq_opt(str(tmp_path / "m.onnxtxt"), "-o", str(out), "-p", "cse")
    assert result.returncode == 0, result.stderr.decode()
    feed = random_inputs(model, n=1)[0]
    expected = run_ort(model, feed)
    assert_bit_identical(expected, run_ort(round_tripped, feed))
    assert_bit_identical(expected, run_ort(onnx.parser.parse_model(out.read_text()), feed))


def test_print_ir_instrumentation(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(conv_relu_model(), path)
    result = qdq_opt(str(path), "-o", str(tmp_path / "o.onnx"), "-p", "dce,topo-sort",
                     "--print-ir-before=dce", "--print-ir-after-all")
    err = result.stderr.decode()
    assert result.returncode == 0, err
    assert err.count("IR Dump Before dce") == 1
    assert "IR Dump After dce (no change)" in err and "IR Dump After topo-sort (no change)" in err
    assert "IR Dump Before topo-sort" not in err
    bad = qdq_opt(str(path), "-o", str(tmp_path / "o2.onnx"), "-p", "dce", "--print-ir-after=dcee")
    assert bad.returncode == 2 and "did you mean 'dce'" in bad.stderr.decode()


def test_reproducer_is_written_and_reruns(tmp_path):
    path = tmp_path / "bad.onnxtxt"
    path.write_text(
        '<ir_version: 10, opset_import: ["" : 17]>\n'
        "g (float[2,3] x, float[4,5] w) => (float[2,5] y)\n{\n  y = MatMul (x, w)\n}\n"
    )
    repro = tmp_path / "repro.onnxtxt"
    out = tmp_path / "o.onnx"
    result = qdq_opt(str(path), "-o", str(out), "-p", "dce,check{full-check=true}", "--reproducer", str(repro))
    assert result.returncode == 1
    assert not out.exists()
    text = repro.read_text()
    assert text.splitlines()[0] == "# RUN: qdq-opt %s -p 'check{full-check=true}'"
    rerun = qdq_opt(str(repro), "-o", str(out), "-p", "check{full-check=true}")
    assert rerun.returncode == 1 and "ShapeInferenceError" in rerun.stderr.decode()


def test_failed_pipeline_keeps_existing_output(tmp_path):
    path = tmp_path / "bad.onnxtxt"
    path.write_text(
        '<ir_version: 10, opset_import: ["" : 17]>\n'
        "g (float[2,3] x, float[4,5] w) => (float[2,5] y)\n{\n  y = MatMul (x, w)\n}\n"
    )
    out = tmp_path / "o.onnx"
    out.write_bytes(b"previous result")
    result = qdq_opt(str(path), "-o", str(out), "-p", "check{full-check=true}")
    assert result.returncode == 1
    assert out.read_bytes() == b"previous result"


def test_output_into_a_missing_folder(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(conv_relu_model(), path)
    result = qdq_opt(str(path), "-o", str(tmp_path / "no" / "such" / "o.onnx"), "-p", "dce")
    assert result.returncode == 1
    assert "does not exist" in result.stderr.decode()


def test_threads_must_be_positive(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(conv_relu_model(), path)
    result = qdq_opt(str(path), "-p", "dce", "--threads", "0")
    assert result.returncode == 2 and "--threads" in result.stderr.decode()


def test_int4_models_are_not_written_as_text(tmp_path):
    """onnx's text printer drops int4 data: refuse with a clear error instead of losing weights."""
    from qdq_passes.golden import read_cases

    (case,) = [c for c in read_cases(Path(__file__).parent / "passes" / "fold-qdq" / "cases.onnxtxt")
               if "matmul int4 blocked" in c.text]
    src = tmp_path / "int4.onnxtxt"
    src.write_text(case.text, encoding="utf-8")
    out = tmp_path / "out.onnxtxt"
    result = qdq_opt(str(src), "-o", str(out), "-p", "fold-qdq")
    assert result.returncode == 1
    assert "which ONNX text cannot hold faithfully" in result.stderr.decode()
    assert not out.exists()
    stdout = qdq_opt(str(src), "-p", "fold-qdq")
    assert stdout.returncode == 1 and "--binary" in stdout.stderr.decode()
    binary = qdq_opt(str(src), "-p", "fold-qdq", "--binary")
    assert binary.returncode == 0
    assert onnx.load_model_from_string(binary.stdout).graph.node


def _rank_conflict_model(path: Path) -> Path:
    """A Reshape whose recorded shape has another rank than the inferred one; onnxruntime runs it."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "s"], ["r"], name="Reshape_101"), helper.make_node("Relu", ["r"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 2])],
        [numpy_helper.from_array(np.array([2, 3, 2], np.int64), "s")],
        value_info=[helper.make_tensor_value_info("r", TensorProto.FLOAT, [2, 6])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_shape_inference_failure_is_one_line_not_a_traceback(tmp_path):
    model = _rank_conflict_model(tmp_path / "rank.onnx")
    lenient = qdq_opt(str(model), "-o", str(tmp_path / "a.onnx"), "-p", "shape-infer")
    assert lenient.returncode == 0 and "Traceback" not in lenient.stderr.decode()
    strict = qdq_opt(str(model), "-o", str(tmp_path / "b.onnx"), "-p", "shape-infer{strict=1}")
    err = strict.stderr.decode()
    assert strict.returncode == 1 and "Traceback" not in err and "%s" not in err
    assert "Reshape_101" in err and "differ in rank" in err and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- nothing lost

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: digest(p) for p in folder.iterdir() if p.is_file() and not p.is_symlink()}


@pytest.mark.parametrize(
    ("spelling", "extra"),
    [
        ("m.onnx", []),
        ("sub/../m.onnx", []),
        ("link.onnx", []),  # a symbolic link to the input
        ("hard.onnx", []),  # a hard link to the input
        ("calib.npz", ["--calib", "calib.npz"]),
        ("calib.npz", ["-p", "adaround{calib=./calib.npz}"]),  # named in the pipeline, not by a flag
        ("float.onnx", ["--float-model", "float.onnx", "-p", "unfold-qdq"]),
        ("data/more.npz", ["--calib", "data"]),  # a new .npz inside the calibration folder read
    ],
)
def test_an_output_that_is_a_file_the_run_reads_is_refused_by_any_spelling(tmp_path, monkeypatch, spelling, extra):
    monkeypatch.chdir(tmp_path)
    Path("m.onnx").write_bytes((EXAMPLES / "cnn_qdq.onnx").read_bytes())
    Path("float.onnx").write_bytes((EXAMPLES / "cnn_float.onnx").read_bytes())
    Path("calib.npz").write_bytes((EXAMPLES / "calib.npz").read_bytes())
    Path("sub").mkdir()
    Path("data").mkdir()
    Path("link.onnx").symlink_to("m.onnx")
    Path("hard.onnx").hardlink_to("m.onnx")
    before = _digests(tmp_path)
    pipeline = extra[extra.index("-p") + 1] if "-p" in extra else "print-blocks"
    flags = [a for i, a in enumerate(extra) if "-p" not in extra[max(0, i - 1):i + 1]]
    result = qdq_opt("m.onnx", "-o", spelling, "-p", pipeline, *flags)
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert err.count("\n") == 1 and f"{spelling}: " in err and "refused" in err, err
    assert "block 0" not in err  # refused before any pass ran
    assert _digests(tmp_path) == before and Path("link.onnx").is_symlink()
    assert not Path("data/more.npz").exists()


def test_a_reproducer_may_not_overwrite_the_input_either(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(conv_relu_model(), path)
    before = digest(path)
    result = qdq_opt(str(path), "-o", str(tmp_path / "o.onnx"), "-p", "dce", "--reproducer", str(path))
    assert result.returncode == 2 and "refused" in result.stderr.decode()
    assert digest(path) == before


def test_an_output_whose_data_file_is_the_data_an_input_reads_is_refused(tmp_path):
    """a.onnx keeps its weights in b.onnx.data: writing b.onnx (data: b.onnx.data) would change a.onnx."""
    folder = tmp_path / "models"
    folder.mkdir()
    onnx.save(conv_relu_model(), folder / "a.onnx", save_as_external_data=True, location="b.onnx.data",
              size_threshold=0)
    onnx.save(conv_relu_model(seed=1), folder / "f.onnx", save_as_external_data=True, location="c.onnx.data",
              size_threshold=0)
    before = _digests(folder)
    result = qdq_opt(str(folder / "a.onnx"), "-o", str(folder / "b.onnx"), "-p", "dce")
    assert result.returncode == 2 and "b.onnx.data: is " in result.stderr.decode(), result.stderr.decode()
    # the data file of another model the run reads (the float model) is protected the same way
    result = qdq_opt(str(folder / "a.onnx"), "-o", str(folder / "c.onnx"), "-p", "unfold-qdq",
                     "--float-model", str(folder / "f.onnx"))
    assert result.returncode == 2 and "c.onnx.data: is " in result.stderr.decode(), result.stderr.decode()
    assert _digests(folder) == before
    ok = qdq_opt(str(folder / "a.onnx"), "-o", str(folder / "b.onnx"), "-p", "dce", "--external-data", "no")
    assert ok.returncode == 0, ok.stderr.decode()  # no data file written: nothing to clash with


def test_an_output_link_replaces_the_file_it_points_at(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(conv_relu_model(), path)
    (tmp_path / "link.onnx").symlink_to("target.onnx")
    result = qdq_opt(str(path), "-o", str(tmp_path / "link.onnx"), "-p", "dce")
    assert result.returncode == 0, result.stderr.decode()
    assert (tmp_path / "link.onnx").is_symlink() and onnx.load(tmp_path / "target.onnx").graph.node


def test_seed_past_64_bits_is_a_usage_error(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(conv_relu_model(), path)
    result = qdq_opt(str(path), "-p", "dce", "--seed", "1180591620717411303424")
    err = result.stderr.decode()
    assert result.returncode == 2 and "--seed must be in [0, 9223372036854775807]" in err and "Overflow" not in err


# --------------------------------------------------------------------------- signals, pipes, full disks


def _wait_for(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_stop_signal_cleans_up_and_exits_128_plus_the_signal(tmp_path, signum):
    """Stopped while adaround spills its caches to disk: the spill folders go, no output appears."""
    spill = tmp_path / "tmp"
    spill.mkdir()
    out = tmp_path / "out.onnx"
    proc = subprocess.Popen(
        [*QDQ_OPT, str(EXAMPLES / "cnn_float.onnx"), "-o", str(out), "--calib", str(EXAMPLES / "calib.npz"),
         "--threads", "1", "-p", "quantize,insert-quantizers{weights=adaround},adaround{iters=100000 cache-mb=0}"],
        stderr=subprocess.PIPE, env={**os.environ, "TMPDIR": str(spill)})
    try:
        _wait_for(lambda: any(p.name.startswith("qdq-adaround-") for p in spill.iterdir()), "a spill folder")
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    lines = err.decode().splitlines()
    assert proc.returncode == 128 + signum, lines
    assert lines[-1] in ("qdq-opt: interrupted", f"qdq-opt: stopped by {signal.Signals(signum).name}")
    assert "Traceback" not in err.decode()
    assert not [p.name for p in spill.iterdir() if p.name.startswith("qdq")]  # onnxruntime's own .ses may stay
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"]  # no output, no .out.onnx.tmp-* folder


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see the imports happen")
def test_ctrl_c_while_the_libraries_load_is_one_line():
    proc = subprocess.Popen([*QDQ_OPT, "--list-passes"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    maps = Path(f"/proc/{proc.pid}/maps")
    try:  # onnx's extension mapped: qdq-opt's own code is importing the libraries (torch comes later)
        _wait_for(lambda: proc.poll() is not None or "onnx_cpp2py_export" in maps.read_text(), "onnx to load")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and err.decode() == "qdq-opt: interrupted\n", err.decode()


def test_a_closed_stdout_pipe_ends_quietly():
    proc = subprocess.Popen([*QDQ_OPT, "--list-passes"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # as `| head -1` does once it has its line
    err = proc.stderr.read()
    proc.wait(timeout=60)
    assert proc.returncode == 141 and err == b"", err.decode()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("flags", [[], ["--binary"], ["--list-passes"]])
def test_stdout_on_a_full_device_is_one_line(tmp_path, flags):
    path = tmp_path / "m.onnx"
    onnx.save(conv_relu_model(), path)
    with open("/dev/full", "wb") as full:
        result = subprocess.run([*QDQ_OPT, str(path), "-p", "dce", *flags], stdout=full, stderr=subprocess.PIPE,
                                timeout=120)
    err = result.stderr.decode()
    assert result.returncode == 1 and err == "qdq-opt: error: <stdout>: cannot write (No space left on device)\n", err


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_old_output(tmp_path):
    """A file-size limit makes every write past 10 kB fail (EFBIG), as a full disk does (ENOSPC)."""
    import resource

    path = tmp_path / "m.onnx"
    shutil.copy(EXAMPLES / "cnn_qdq.onnx", path)
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous result")

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, 10_000))

    result = subprocess.run([*QDQ_OPT, str(path), "-o", str(out), "-p", "dce"], capture_output=True, timeout=120,
                            preexec_fn=limit)
    err = result.stderr.decode()
    assert result.returncode == 1 and err == f"qdq-opt: error: {out}: cannot write (File too large)\n", err
    assert out.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "out.onnx"]


def test_an_output_that_is_a_pipe_is_written_through(tmp_path):
    """A FIFO (like /dev/stdout) is written in one stream and stays a FIFO; it is never renamed over."""
    path = tmp_path / "m.onnx"
    onnx.save(conv_relu_model(), path)
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    result = qdq_opt(str(path), "-o", str(fifo), "-p", "dce")
    reader.join(timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and received
    feed = random_inputs(conv_relu_model(), n=1)[0]
    assert_bit_identical(run_ort(conv_relu_model(), feed), run_ort(onnx.load_model_from_string(received[0]), feed))
