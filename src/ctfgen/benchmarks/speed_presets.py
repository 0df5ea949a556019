"""The model sizes `ctfgen bench speed --preset` times (benchmarks/speed.py), torch-free so that the
command line checks the flag against them without loading the bench."""
from __future__ import annotations

# stage-1 / baseline size, stage-2 size, codebook V, clusters K, tokens per side, classes
PRESETS = {
    "tiny": dict(model="tiny", aux="tiny", vocab=256, k=16, grid=4, num_classes=10),  # a smoke test of the bench
    "fmnist": dict(model="small", aux="small", vocab=4096, k=128, grid=8, num_classes=10),
    "B": dict(model="B", aux="aux-B", vocab=16384, k=512, grid=16, num_classes=1000),
    # the paper's L and XL: one stage 2 of L size for every stage-1 size
    "L": dict(model="L", aux="aux-L", vocab=16384, k=512, grid=16, num_classes=1000),
    "XL": dict(model="XL", aux="aux-L", vocab=16384, k=512, grid=16, num_classes=1000),
}
