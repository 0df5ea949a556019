import os

# Tests use tiny models; one thread keeps them fast and leaves the other core free on 2-core machines.
os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from ctfgen.data import DataConfig  # noqa: E402

torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` (the GPU side of device-parametrised tests) skip without a GPU."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """Three classes of 16x16 grey blobs (96 train, 30 test images) as npz splits."""
    d = tmp_path_factory.mktemp("npz")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:16, :16]
    for split, n in (("train", 96), ("test", 30)):
        labels = np.arange(n) % 3
        imgs = np.stack([(255 * np.exp(-((yy - 4 - 4 * c) ** 2 + (xx - 8) ** 2) / 8)).astype(np.uint8) for c in labels])
        imgs = np.clip(imgs + rng.integers(0, 20, imgs.shape), 0, 255).astype(np.uint8)
        np.savez(d / f"{split}.npz", images=imgs, labels=labels)
    return DataConfig(source="npz", path=str(d), resolution=16, channels=1)
