"""How good a tokenizer is: reconstruction PSNR, codebook usage and perplexity, and a picture."""
from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image
from ..progress import progress_bar
from .model import VQModel


def to_uint8(x_BCHW: torch.Tensor) -> np.ndarray:
    """[-1, 1] images -> uint8 (B, H, W, C), with LlamaGen's rounding convention."""
    return (127.5 * x_BCHW.detach().float().cpu() + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def reconstruction_report(model: VQModel, dataset, *, batch_size: int = 256, limit: int = 0,
                          device: str | torch.device = "cpu", progress: bool = True) -> dict:
    """PSNR (dB, mean over images, pixels in [0, 1]) and codebook use on `dataset`."""
    model.eval()
    n = len(dataset) if not limit else min(limit, len(dataset))
    V = model.config.codebook_size
    counts = torch.zeros(V, dtype=torch.long)
    psnr_sum, mse_sum = 0.0, 0.0
    for start in progress_bar(range(0, n, batch_size), desc="eval tokenizer", show=progress, leave=False):
        x = torch.stack([dataset[i][0] for i in range(start, min(n, start + batch_size))]).to(device)
        codes = model.encode_codes(x)
        rec = model.decode_codes(codes).clamp(-1, 1)
        mse_B = ((rec - x) / 2).pow(2).flatten(1).mean(1).clamp_min(1e-10)
        psnr_sum += (10 * torch.log10(1 / mse_B)).sum().item()
        mse_sum += mse_B.sum().item()
        counts += torch.bincount(codes.flatten().cpu(), minlength=V)
    p = counts.double() / counts.sum()
    nz = p[p > 0]
    return {
        "images": n,
        "psnr_db": psnr_sum / n,
        "mse": mse_sum / n,
        "codebook_size": V,
        "codes_used": int((counts > 0).sum()),
        "codebook_usage": float((counts > 0).double().mean()),
        "perplexity": float(math.exp(-(nz * nz.log()).sum())),
    }


@torch.no_grad()
def reconstruction_grid(model: VQModel, dataset, *, n: int = 16, device="cpu", scale: int = 2) -> bytes:
    """PNG bytes: originals on the top row of each pair, reconstructions below."""
    x = torch.stack([dataset[i][0] for i in range(min(n, len(dataset)))]).to(device)
    rec = model.decode_codes(model.encode_codes(x))
    rows = [np.concatenate(list(to_uint8(t)), axis=1) for t in (x, rec)]
    grid = np.concatenate(rows, axis=0)
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
