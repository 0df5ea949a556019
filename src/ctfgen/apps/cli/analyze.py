"""`ctfgen analyze redundancy`: how much do same-cluster token swaps change the decoded image?"""
from __future__ import annotations

import argparse
import json
import time

from ...cluster import METHODS as CLUSTER_METHODS
from ._util import (add_background_arg, add_config_flags, add_group, int_range, nonempty, nonneg_int,
                    positive_int, seed_int)

ORDER = 45

DESCRIPTION = """Encode N real images, replace every token by a random member of its own coarse cluster
(for each clustering method and K) or by a random code from the whole codebook, decode, and
report the distortion against the clean reconstruction (PSNR, MSE; optionally classifier-feature
distance). Writes redundancy.json, redundancy.md and redundancy.png to --out.
Cost: one decode of the N images per (method, K) pair, plus one; on CPU with the fmnist preset
that is roughly 30 s per pair at N=512 (use --threads, or fewer images/pairs)."""


def register(sub) -> None:
    group = add_group(sub, "analyze", "measurements of the tokenizer and its coarse labels")
    p = group.add_parser(
        "redundancy", help="distortion from swapping tokens within a cluster vs across the codebook",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="tokenizer artifact folder")
    from ...data import DataConfig

    add_config_flags(p, DataConfig, only=("source", "path"), dests={"source": "data", "path": "data_path"},
                     helps={"source": "data source of the real images"},
                     shown={"path": "none; fashion-mnist has its own"})
    add_config_flags(p, DataConfig, only=("allow_empty_classes",), switches=True)
    add_background_arg(p)
    p.add_argument("--split", default="test", type=nonempty, help="data split to draw the images from (default test)")
    p.add_argument("--n", type=positive_int, default=512, help="number of images, drawn at random with --seed (default 512)")
    p.add_argument("--k", type=int_range(2), nargs="+", default=[32, 128, 512],
                   help="numbers of coarse labels to try (default 32 128 512)")
    p.add_argument("--methods", nargs="+", default=["kmeans", "balanced", "random", "agglomerative"],
                   choices=CLUSTER_METHODS,
                   help="clustering methods to try, each at every --k (default: kmeans balanced random agglomerative)")
    p.add_argument("--coarse-map", action="append", default=[], metavar="DIR",
                   help="also measure a saved coarse map (repeatable); it must come from --tokenizer")
    p.add_argument("--classifier", default=None, metavar="DIR",
                   help="domain classifier folder (ctfgen classifier train): adds feature distance and prediction agreement")
    p.add_argument("--seed", type=seed_int, default=0, help="seed for the image subset, the clustering and the swaps (default 0)")
    p.add_argument("--batch-size", type=positive_int, default=128, help="images per encode/decode batch")
    p.add_argument("--show", type=positive_int, default=8, help="images per row in the figure (default 8)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=nonneg_int, default=0, help="CPU threads for torch (0: its default)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the report")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it already exists")
    p.set_defaults(func=run_redundancy)


def _load_images(args, resolution: int, channels: int):
    import numpy as np
    import torch

    from ...data import DataConfig, load_dataset

    ds = load_dataset(DataConfig(source=args.data, path=args.data_path, resolution=resolution, channels=channels,
                                 allow_empty_classes=args.allow_empty_classes, background=args.background), args.split)
    n = min(args.n, len(ds))
    picks = np.sort(np.random.default_rng(args.seed).choice(len(ds), size=n, replace=False))
    return torch.stack([ds[int(i)][0] for i in picks]), ds


def classifier_feature_fn(folder: str):
    """Features and logits of a domain classifier, fed exactly as evaluation feeds samples (uint8)."""
    import torch

    try:
        from ...evaluate import ClassifierArtifact
        from ...evaluate.classifier import to_input
    except ImportError as e:  # the evaluation package is optional for this command
        from ...errors import CtfgenError

        raise CtfgenError(f"--classifier needs ctfgen.evaluate, which cannot be imported: {e}") from None
    model = ClassifierArtifact.load(folder).module

    @torch.no_grad()
    def features(x_BCHW):
        uint8_BHWC = ((x_BCHW.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
        f_BF = model.features(to_input(uint8_BHWC, model.cfg.resolution, model.cfg.channels))
        return f_BF, model.head(f_BF)

    return features


def run_redundancy(args) -> int:
    from pathlib import Path

    import torch

    from ...artifacts import artifact_dir, atomic_write_json, fingerprint_tensors, write_manifest
    from ...cluster import CoarseMap, build_coarse_map
    from ...errors import CtfgenError
    from ...experiments.analyze import markdown_table, measure_redundancy, save_figure
    from ...tokenizer.artifact import TokenizerArtifact

    if Path(args.out).exists() and not args.overwrite:
        raise CtfgenError(f"{args.out} already exists; choose another folder or pass --overwrite")
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    tok = TokenizerArtifact.load(args.tokenizer)
    tok_cfg = tok.module.config
    images, _ = _load_images(args, tok_cfg.resolution, tok_cfg.channels)
    codebook_VD = tok.module.quantize.embedding.weight.detach().float()

    maps = []
    for k in args.k:
        for method in args.methods:
            t0 = time.perf_counter()
            maps.append(build_coarse_map(codebook_VD, k, method=method, seed=args.seed, tokenizer_fingerprint=tok.fingerprint))
            print(f"clustered: {method} K={k} ({time.perf_counter() - t0:.1f} s)")
    maps += [CoarseMap.load(d) for d in args.coarse_map]
    feature_fn = classifier_feature_fn(args.classifier) if args.classifier else None

    result = measure_redundancy(tok, images, maps, seed=args.seed, batch_size=args.batch_size, n_show=args.show,
                                feature_fn=feature_fn, progress=not args.quiet)
    table = markdown_table(result)
    report = {
        **result.to_json(),
        "tokenizer": {"folder": str(args.tokenizer), "fingerprint": tok.fingerprint, "codebook_size": tok_cfg.codebook_size},
        "data": {"source": args.data, "split": args.split, "path": args.data_path},
        "coarse_maps": [{"method": m.method, "k": m.k, "fingerprint": m.fingerprint, "options": m.options} for m in maps],
        "seed": args.seed,
        "classifier": args.classifier,
        "seconds": round(time.perf_counter() - start, 2),
    }
    with artifact_dir(args.out, overwrite=args.overwrite) as tmp:
        atomic_write_json(tmp / "redundancy.json", report)
        (tmp / "redundancy.md").write_text(table)
        save_figure(result, tmp / "redundancy.png", title=f"token swaps, {result.n_images} {args.data} {args.split} images")
        fp = fingerprint_tensors({}, extra=json.loads(json.dumps(report["rows"])))
        write_manifest(tmp, kind="redundancy_report", fingerprint=fp, made_from={"tokenizer": tok.fingerprint},
                       config={"n": result.n_images, "k": args.k, "methods": args.methods, "seed": args.seed})
    print(table, end="")
    print(f"time: {report['seconds']:.1f} s")
    print(f"saved: {args.out} (redundancy.json, redundancy.md, redundancy.png)")
    return 0
