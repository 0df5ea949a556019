"""How redundant is the codebook? Swap tokens and measure how much the decoded image changes.

The paper's premise is that a token can be replaced by another member of its coarse cluster with
little visible effect, while a random token from the whole codebook does real damage. We measure
it: encode real images, then replace *every* token by

* `same_cluster` — a uniformly random member of its own coarse cluster (one row per method and K),
* `random_code`  — a uniformly random code from the whole codebook (the reference for "damage"),

decode, and compare with the clean reconstruction (the decoded unmodified codes), not with the
input image, so tokenizer error is not counted. PSNR uses the [-1, 1] pixel range (peak-to-peak
2) and is averaged over images; MSE is per pixel. `changed` is the fraction of tokens that the
swap actually altered (a cluster member can be the token itself).

Classifier features: pass `feature_fn(x_BCHW in [-1, 1]) -> (B, F)` (the CLI builds one from a
`ctfgen classifier train` folder) and each row also gets the mean L2 feature distance to the
clean reconstruction, relative to the mean distance between different clean images
(`feat_rel`), and the fraction of images whose predicted class is unchanged (`pred_agree`,
when the function also returns logits).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch

from ..cluster import CoarseMap
from ..errors import CtfgenError
from ..tokenizer.artifact import TokenizerArtifact
from ..tokenizer.model import VQModel

# (B, C, H, W) in [-1, 1] -> features (B, F), or (features, logits)
FeatureFn = Callable[[torch.Tensor], "torch.Tensor | tuple[torch.Tensor, torch.Tensor]"]


@dataclass
class RedundancyRow:
    swap: str  # "same_cluster" | "random_code"
    method: str  # clustering method ("-" for random_code)
    k: int  # number of coarse labels (0 for random_code)
    mse: float
    psnr: float
    changed: float  # fraction of tokens altered
    feat_dist: float | None = None
    feat_rel: float | None = None
    pred_agree: float | None = None


@dataclass
class RedundancyResult:
    rows: list[RedundancyRow]
    n_images: int
    recon_psnr: float  # clean reconstruction vs input, for context
    examples: dict[str, torch.Tensor]  # condition name -> (n_show, C, H, W) in [-1, 1]

    def to_json(self) -> dict:
        return {"n_images": self.n_images, "recon_psnr": self.recon_psnr, "rows": [asdict(r) for r in self.rows]}


def condition_name(row: RedundancyRow) -> str:
    return "random code" if row.swap == "random_code" else f"{row.method} K={row.k}"


def psnr_per_image(x_BCHW: torch.Tensor, ref_BCHW: torch.Tensor) -> torch.Tensor:
    mse_B = (x_BCHW - ref_BCHW).pow(2).flatten(1).mean(1)
    # Identical images would give infinity; cap at 100 dB so averages stay finite.
    return 10 * torch.log10(4.0 / mse_B.clamp_min(4e-10))


def same_cluster_swap(codes: torch.Tensor, cmap: CoarseMap, *, generator: torch.Generator) -> torch.Tensor:
    return cmap.random_member(cmap.coarse_of(codes), generator=generator)


def random_code_swap(codes: torch.Tensor, num_codes: int, *, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, num_codes, codes.shape, generator=generator).to(codes.device)


@torch.no_grad()
def measure_redundancy(
    tokenizer: VQModel | TokenizerArtifact,
    images_NCHW: torch.Tensor,
    coarse_maps: Sequence[CoarseMap],
    *,
    seed: int = 0,
    batch_size: int = 128,
    n_show: int = 8,
    feature_fn: FeatureFn | None = None,
    progress: bool = False,
) -> RedundancyResult:
    """Distortion of same-cluster and random-code swaps for every map (see the module doc).
    `tokenizer`: a TokenizerArtifact, whose fingerprint the maps must record (ArtifactError
    otherwise), or a bare VQModel (maps not checked).

    Cost: one decode of every image per map, plus one; with the fmnist tokenizer preset that is
    ~30 s per 512 images on one busy CPU core, so prefer a GPU tokenizer or a smaller N there.
    """
    from ..progress import progress_bar

    loaded = tokenizer if isinstance(tokenizer, TokenizerArtifact) else None
    tokenizer = loaded.module if loaded else tokenizer
    num_codes = tokenizer.config.codebook_size
    for cmap in coarse_maps:
        if cmap.num_codes != num_codes:
            raise CtfgenError(f"coarse map has {cmap.num_codes} codes, tokenizer codebook has {num_codes}")
        if loaded is not None:  # a loaded tokenizer: refuse maps of another one (a bare module has no record)
            cmap.check_tokenizer(loaded.fingerprint)
    batches = list(torch.split(images_NCHW, batch_size))
    codes = [tokenizer.encode_codes(x) for x in batches]
    clean = [tokenizer.decode_codes(c).clamp(-1, 1) for c in codes]
    clean_N = torch.cat(clean)
    recon_psnr = float(psnr_per_image(clean_N, images_NCHW.clamp(-1, 1)).mean())

    clean_feats = _features(feature_fn, clean) if feature_fn else None
    examples = {"input": images_NCHW[:n_show].clamp(-1, 1), "clean": clean_N[:n_show]}
    bar = progress_bar(total=len(coarse_maps) + 1, desc="token swaps", show=progress)

    def evaluate(swap: str, method: str, k: int, swap_fn) -> RedundancyRow:
        # Every condition draws from the same seed, so conditions differ only by the grouping.
        gen = torch.Generator().manual_seed(seed)
        swapped_codes = [swap_fn(c, gen) for c in codes]
        decoded = [tokenizer.decode_codes(c).clamp(-1, 1) for c in swapped_codes]
        dec_N = torch.cat(decoded)
        changed = float(torch.cat([(s != c).flatten() for s, c in zip(swapped_codes, codes)]).float().mean())
        row = RedundancyRow(
            swap=swap, method=method, k=k,
            mse=float((dec_N - clean_N).pow(2).mean()),
            psnr=float(psnr_per_image(dec_N, clean_N).mean()),
            changed=changed,
        )
        if clean_feats is not None:
            _add_feature_stats(row, clean_feats, _features(feature_fn, decoded))
        examples[condition_name(row)] = dec_N[:n_show]
        bar.update()
        return row

    rows = [
        evaluate("same_cluster", cmap.method, cmap.k, lambda c, g, m=cmap: same_cluster_swap(c, m, generator=g))
        for cmap in coarse_maps
    ]
    rows.append(evaluate("random_code", "-", 0, lambda c, g: random_code_swap(c, num_codes, generator=g)))
    bar.close()
    return RedundancyResult(rows=rows, n_images=len(images_NCHW), recon_psnr=recon_psnr, examples=examples)


def _features(feature_fn: FeatureFn, batches: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    outs = [feature_fn(x) for x in batches]
    if isinstance(outs[0], tuple):
        return torch.cat([o[0] for o in outs]).float(), torch.cat([o[1] for o in outs]).float()
    return torch.cat(outs).float(), None


def _add_feature_stats(row: RedundancyRow, clean, swapped) -> None:
    (f_clean_NF, logits_clean), (f_swap_NF, logits_swap) = clean, swapped
    row.feat_dist = float((f_swap_NF - f_clean_NF).norm(dim=1).mean())
    # Scale: distance between *different* clean images (each to the next one).
    between = float((f_clean_NF - f_clean_NF.roll(1, 0)).norm(dim=1).mean()) if len(f_clean_NF) > 1 else math.nan
    row.feat_rel = row.feat_dist / between if between and between > 0 else None
    if logits_clean is not None and logits_swap is not None:
        row.pred_agree = float((logits_clean.argmax(1) == logits_swap.argmax(1)).float().mean())


# ---------------------------------------------------------------- reports


def markdown_table(result: RedundancyResult) -> str:
    has_feat = any(r.feat_dist is not None for r in result.rows)
    head = ["swap", "method", "K", "PSNR (dB)", "MSE", "tokens changed"]
    if has_feat:
        head += ["feature dist", "rel. to other images", "same prediction"]
    lines = [
        f"Token-swap distortion against the clean reconstruction ({result.n_images} images; "
        f"clean reconstruction vs input: {result.recon_psnr:.2f} dB PSNR).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in result.rows:
        cells = [r.swap, r.method, str(r.k) if r.k else "-", f"{r.psnr:.2f}", f"{r.mse:.5f}", f"{r.changed:.3f}"]
        if has_feat:
            cells += [_fmt(r.feat_dist, ".3f"), _fmt(r.feat_rel, ".3f"), _fmt(r.pred_agree, ".3f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def save_figure(result: RedundancyResult, path, *, title: str = "") -> None:
    """One row per condition (input, clean, each same-cluster swap, random code), one column per image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result.examples)
    n_show = len(result.examples["clean"])
    rows = {"input": "input", "clean": f"clean\n{result.recon_psnr:.1f} dB vs input"}
    fig, axes = plt.subplots(len(names), n_show, figsize=(1.1 * n_show + 1.6, 1.1 * len(names) + 0.4), squeeze=False)
    psnr = {condition_name(r): r.psnr for r in result.rows}
    for i, name in enumerate(names):
        for j in range(n_show):
            ax = axes[i][j]
            img_CHW = (result.examples[name][j].clamp(-1, 1) + 1) / 2
            if img_CHW.shape[0] == 1:
                ax.imshow(img_CHW[0].numpy(), cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(img_CHW.permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
        label = rows.get(name) or f"{name}\n{psnr[name]:.1f} dB"
        axes[i][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97 if title else 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
