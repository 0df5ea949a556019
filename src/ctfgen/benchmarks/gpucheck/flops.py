"""Model FLOPs of a training step and the bf16 peak of known GPUs: model FLOPs utilisation (MFU).

Model FLOPs count the matmuls the model needs, whatever the implementation does: 6 FLOPs per
weight per token (forward 2, backward 4) over the blocks and the head, plus the attention scores and
values, 12 * layers * dim * sequence per token (PaLM's convention: full, not causal, attention).
Embedding lookups are free. Stage 2's head counts the members of one cluster per position (V / K rows
on average), the work the loss needs, not the full head that the "masked" formulation computes.
"""
from __future__ import annotations

# Dense bf16 tensor-core peaks (TFLOP/s, no structured sparsity) from NVIDIA's datasheets, matched
# against torch.cuda.get_device_name() by substring, first match wins (so H100 variants come
# before the plain "H100").
GPU_BF16_TFLOPS: list[tuple[str, float | None]] = [
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM (e.g. "NVIDIA H100 80GB HBM3")
    ("H800", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),  # SXM and PCIe alike
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", None),  # not in a datasheet we trust: give --peak-tflops
    ("A10", 125.0),
    ("RTX 4090", 165.0),
]


def gpu_peak_tflops(name: str) -> float | None:
    """bf16 dense peak of the GPU called `name`, None when it is not in the table."""
    for key, tflops in GPU_BF16_TFLOPS:
        if key.lower() in name.lower():
            return tflops
    return None


def train_flops_per_token(cfg) -> float:
    """Model FLOPs of one training token (forward + backward) of a ModelConfig."""
    d, h, n = cfg.dim, cfg.ffn_hidden, cfg.n_layer
    block_weights = n * (4 * d * d + 3 * d * h)  # wqkv + wo, w1 + w3 + w2
    head_rows = cfg.out_vocab
    if cfg.spec.member_head and cfg.mask_to_cluster:
        head_rows = cfg.vocab_size / cfg.coarse_vocab  # the members of one cluster
    seq = cfg.seq_len + cfg.n_prefix
    return 6.0 * (block_weights + head_rows * d) + 12.0 * n * d * seq


def mfu(tokens_per_s: float, flops_per_token: float, peak_tflops: float | None) -> float | None:
    if not peak_tflops:
        return None
    return tokens_per_s * flops_per_token / (peak_tflops * 1e12)
