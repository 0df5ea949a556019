import os

# Tests use tiny models; one thread keeps them fast and leaves the other core free on 2-core machines.
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402

torch.set_num_threads(1)
