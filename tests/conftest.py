import os

# Tests use tiny models; one thread keeps them fast and leaves the other core free on 2-core machines.
os.environ.setdefault("OMP_NUM_THREADS", "1")
import pytest  # noqa: E402
import torch  # noqa: E402


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
    """Three classes of 16x16 grey blobs (96 train, 30 test images) as npz splits (blobs.py)."""
    from blobs import write_blobs

    return write_blobs(tmp_path_factory.mktemp("npz"))
