"""The Inception feature backends (torch, onnxruntime) on a tiny stand-in TorchScript network:
same features, the ONNX copy cached and reused, a damaged or wrong cached copy re-made, the probe
check refusing a copy that disagrees with torch, and clear errors. Needs no real Inception weights."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from ctfgen.errors import CtfgenError
from ctfgen.evaluate import inception as inc
from ctfgen.evaluate.inception import InceptionFeatures

pytest.importorskip("onnxruntime")
# torch.jit.script/load are flagged deprecated in torch 2.9+; TorchScript still is the weights' format.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


class TinyNet(torch.nn.Module):
    """Takes (N, 3, 299, 299) like the real network; returns (N, 16) pooled features."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.c1 = torch.nn.Conv2d(3, 8, 3, stride=4)
        self.bn = torch.nn.BatchNorm2d(8)
        self.c2 = torch.nn.Conv2d(8, 16, 3, stride=2)
        with torch.no_grad():  # running statistics that are not the identity, so eval mode matters
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        return torch.relu(self.c2(torch.relu(self.bn(self.c1(x))))).mean(dim=(2, 3))


def save_net(path, seed=0):
    torch.jit.script(TinyNet(seed)).save(str(path))
    return path


@pytest.fixture
def net_file(tmp_path):
    return save_net(tmp_path / "tiny.pt")


def images(n=7, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)


def cached_onnx(cache, net):
    return cache / f"{net.sha256}-opset{inc.ONNX_OPSET}.onnx"


def export_other_network(tmp_path):
    """An export_onnx stand-in that writes a valid ONNX file of a *different* network."""
    other = torch.jit.load(str(save_net(tmp_path / "other.pt", seed=5))).eval()
    real_export = inc.export_onnx
    return lambda net, path: real_export(other, path)


def test_onnxruntime_and_torch_give_the_same_features(net_file, tmp_path):
    ort_net = InceptionFeatures(net_file, backend="onnxruntime", onnx_cache=tmp_path / "c")
    torch_net = InceptionFeatures(net_file, backend="torch")
    assert ort_net.backend == "onnxruntime" and ort_net.session is not None
    assert torch_net.backend == "torch" and torch_net.session is None
    x = images()
    # batch 3 over 7 images: batches of 3, 3 and 1, none the export's example size of 2
    f_ort, f_torch = ort_net.features(x, batch_size=3), torch_net.features(x, batch_size=3)
    assert f_ort.shape == f_torch.shape == (7, 16) and f_ort.dtype == np.float32
    assert np.abs(f_torch).max() > 1e-2 and np.ptp(f_torch, axis=0).max() > 1e-3  # features are not trivial
    np.testing.assert_allclose(f_ort, f_torch, rtol=0, atol=1e-5)
    # auto picks onnxruntime on the CPU
    assert InceptionFeatures(net_file, onnx_cache=tmp_path / "c").backend == "onnxruntime"


def test_onnx_file_is_cached_and_reused(net_file, tmp_path, monkeypatch):
    cache = tmp_path / "c"
    first = InceptionFeatures(net_file, onnx_cache=cache)
    path = cached_onnx(cache, first)
    assert first.onnx_path == path and path.is_file()
    assert first.describe()["onnx_from_cache"] is False
    assert [p.name for p in cache.iterdir()] == [path.name]  # no temporary file left behind
    stamp = path.stat().st_mtime_ns

    def no_export(net, path):
        raise AssertionError("re-exported although a good cached file exists")

    monkeypatch.setattr(inc, "export_onnx", no_export)
    second = InceptionFeatures(net_file, onnx_cache=cache)
    assert second.backend == "onnxruntime" and second.describe()["onnx_from_cache"] is True
    assert path.stat().st_mtime_ns == stamp
    np.testing.assert_allclose(second.features(images()), first.features(images()), rtol=0, atol=1e-6)


def test_default_cache_folder_is_the_reference_cache(net_file, tmp_path, monkeypatch):
    monkeypatch.setenv("CTFGEN_REF_CACHE", str(tmp_path / "ref"))
    net = InceptionFeatures(net_file)
    assert net.onnx_path == cached_onnx(tmp_path / "ref" / "onnx", net) and net.onnx_path.is_file()


def test_no_cache_writes_nothing(net_file, tmp_path, monkeypatch):
    monkeypatch.setenv("CTFGEN_REF_CACHE", str(tmp_path / "ref"))
    net = InceptionFeatures(net_file, onnx_cache=False)
    assert net.backend == "onnxruntime" and net.onnx_path is None
    assert not (tmp_path / "ref").exists()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_damaged_cached_file_is_rebuilt(net_file, tmp_path, damage):
    cache = tmp_path / "c"
    path = InceptionFeatures(net_file, onnx_cache=cache).onnx_path
    good = path.read_bytes()
    bad = {"garbage": b"not an onnx file" * 100, "truncated": good[: len(good) // 2], "empty": b""}[damage]
    path.write_bytes(bad)
    net = InceptionFeatures(net_file, onnx_cache=cache)
    assert net.backend == "onnxruntime" and net.describe()["onnx_from_cache"] is False
    assert path.read_bytes() != bad and len(path.read_bytes()) > 1000
    np.testing.assert_allclose(net.features(images()), InceptionFeatures(net_file, backend="torch").features(images()),
                               rtol=0, atol=1e-5)


def test_cached_file_of_another_network_is_rebuilt(net_file, tmp_path, monkeypatch):
    # A loadable ONNX file that computes something else: only the probe can tell.
    cache = tmp_path / "c"
    probe_net = InceptionFeatures(net_file, backend="torch")
    path = cached_onnx(cache, probe_net)
    path.parent.mkdir(parents=True)
    export_other_network(tmp_path)(None, path)
    wrong = path.read_bytes()
    net = InceptionFeatures(net_file, onnx_cache=cache)
    assert net.backend == "onnxruntime" and net.describe()["onnx_from_cache"] is False
    assert path.read_bytes() != wrong
    np.testing.assert_allclose(net.features(images()), probe_net.features(images()), rtol=0, atol=1e-5)


def test_probe_mismatch_falls_back_to_torch_or_raises(net_file, tmp_path, monkeypatch):
    monkeypatch.setattr(inc, "export_onnx", export_other_network(tmp_path))
    with pytest.warns(RuntimeWarning, match="falling back to torch.*differ from torch"):
        net = InceptionFeatures(net_file, onnx_cache=tmp_path / "c")
    assert net.backend == "torch" and net.session is None
    d = net.describe()
    assert d["backend"] == "torch" and "differ" in d["onnxruntime_not_used"]
    with pytest.raises(CtfgenError, match="differ from torch"):
        InceptionFeatures(net_file, backend="onnxruntime", onnx_cache=tmp_path / "c")


def test_export_failure_falls_back_to_torch(net_file, tmp_path, monkeypatch):
    def broken(net, path):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(inc, "export_onnx", broken)
    with pytest.warns(RuntimeWarning, match="ONNX export failed"):
        assert InceptionFeatures(net_file, onnx_cache=tmp_path / "c").backend == "torch"
    with pytest.raises(CtfgenError, match="ONNX export failed: RuntimeError: unsupported operator"):
        InceptionFeatures(net_file, backend="onnxruntime", onnx_cache=tmp_path / "c")
    assert not any((tmp_path / "c").iterdir())  # the temporary file is gone


def test_describe_names_the_backend(net_file, tmp_path):
    import onnxruntime

    d = InceptionFeatures(net_file, backend="onnxruntime", onnx_cache=tmp_path / "c").describe()
    assert d["backend"] == "onnxruntime" and d["onnxruntime"] == onnxruntime.__version__
    assert d["onnx_opset"] == inc.ONNX_OPSET and d["probe_max_abs_diff"] <= 1e-5
    assert d["sha256"] == InceptionFeatures(net_file, backend="torch").sha256
    d = InceptionFeatures(net_file, backend="torch").describe()
    assert d["backend"] == "torch" and d["torch"] == torch.__version__ and "onnxruntime" not in d


def test_onnxruntime_threads_follow_torch(net_file, tmp_path):
    before = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            net = InceptionFeatures(net_file, onnx_cache=tmp_path / "c")
            assert net.describe()["threads"] == n
            assert net.session.get_session_options().intra_op_num_threads == n
    finally:
        torch.set_num_threads(before)


def test_auto_without_onnxruntime_uses_torch(net_file, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    assert InceptionFeatures(net_file, onnx_cache=tmp_path / "c").backend == "torch"
    with pytest.raises(CtfgenError, match="pip install onnxruntime"):
        InceptionFeatures(net_file, backend="onnxruntime", onnx_cache=tmp_path / "c")


def test_unknown_backend_is_a_clear_error(net_file):
    with pytest.raises(CtfgenError, match="unknown Inception backend 'bogus'.*auto, torch, onnxruntime"):
        InceptionFeatures(net_file, backend="bogus")


def test_unwritable_cache_still_uses_onnxruntime(net_file, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.warns(RuntimeWarning, match="exporting without caching"):
        net = InceptionFeatures(net_file, onnx_cache=blocker / "onnx")
    assert net.backend == "onnxruntime" and net.onnx_path is None


def test_cli_eval_keeps_the_onnx_copy_in_its_cache(net_file, tmp_path, monkeypatch):
    from ctfgen.apps.cli import main as cli_main

    monkeypatch.setenv("CTFGEN_REF_CACHE", str(tmp_path / "default"))
    np.savez(tmp_path / "ref.npz", arr_0=images(40, seed=2), labels=np.arange(40) % 4)
    np.savez(tmp_path / "samples.npz", arr_0=images(40, seed=3), labels=np.arange(40) % 4)
    args = ["eval", str(tmp_path / "samples.npz"), "--ref", str(tmp_path / "ref.npz"), "--inception", str(net_file),
            "--quiet", "--out"]
    assert cli_main(args + [str(tmp_path / "a.json"), "--cache", str(tmp_path / "mine")]) == 0
    net = InceptionFeatures(net_file, backend="torch")
    assert cached_onnx(tmp_path / "mine" / "onnx", net).is_file()
    assert cli_main(args + [str(tmp_path / "b.json"), "--cache", "none"]) == 0
    assert not (tmp_path / "default").exists()  # no cache: nothing written anywhere
