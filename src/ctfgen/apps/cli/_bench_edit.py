"""`ctfgen bench edit` (the bench: benchmarks/edit.py): CTF's and the baseline's edits on real
test images, written to a folder (result.json, tables.md, a figure per edit)."""
from __future__ import annotations

import sys

from ._util import add_command, add_data_args, add_device_args, nonneg_int, positive_int, seed_int, typed_list


def add_edit(group) -> None:
    from .sample import _add_sampling_args

    p = add_command(group, "edit", _run_edit,
                    help="edits on real test images: completion, region resampling, detail variations (CTF vs baseline)",
                    description="Encode the first test images with the pipelines' tokenizer; keep the top half and "
                                "complete the bottom half, resample a central square (CTF: detail only, layout+detail, "
                                "layout with Gibbs sweeps on a subset; the baseline: raster order) and make CTF detail "
                                "variations. Prints and writes classifier-FID and agreement against the real test "
                                "images per sampling seed, the exactness of the kept positions and the time per edit.")
    p.add_argument("--pipeline", required=True, metavar="DIR", help="the CTF pipeline folder")
    p.add_argument("--baseline-pipeline", required=True, metavar="DIR", help="the baseline pipeline folder")
    p.add_argument("--classifier", required=True, metavar="DIR", help="the domain classifier (`ctfgen eval classifier`)")
    p.add_argument("--images", type=positive_int, default=1000, help="test images edited (default: 1000)")
    p.add_argument("--seeds", type=typed_list(seed_int), default=(0, 1), help="sampling seeds (default: 0,1)")
    p.add_argument("--gibbs-images", type=nonneg_int, default=100, help="images that also get Gibbs sweeps (default: 100)")
    p.add_argument("--gibbs-sweeps", type=nonneg_int, default=1, help="sweeps on them (default: 1)")
    p.add_argument("--vary-images", type=positive_int, default=200, help="sources of detail variations (default: 200)")
    p.add_argument("--vary-n", type=int, default=4, choices=range(2, 33), metavar="N",
                   help="variations and fresh samples per source, 2..32 (default: 4)")
    p.add_argument("--batch-size", type=positive_int, default=128, help="edits per batch (default: 128)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for result.json, tables.md and the figures")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_data_args(p, sized=False)
    _add_sampling_args(p)
    add_device_args(p)


def _run_edit(args) -> int:
    import hashlib
    import json

    from ...artifacts import artifact_dir, atomic_write_json, write_manifest
    from ...benchmarks.edit import EditBenchConfig, markdown, run_edit_bench
    from ...data import DataConfig, load_dataset
    from ...evaluate import ClassifierArtifact
    from ...sample import SamplingConfig, load_pipeline
    from ...sample.outputs import png_bytes
    from ._util import given_flags, setup_device

    device = setup_device(args)
    ctf = load_pipeline(args.pipeline, device=device)
    base = load_pipeline(args.baseline_pipeline, device=device)
    clf = ClassifierArtifact.load(args.classifier, device).module
    tok = ctf.tokenizer.config
    data = load_dataset(DataConfig(source=args.data, path=args.data_path, resolution=tok.resolution,
                                   channels=tok.channels, skip_bad=args.skip_bad,
                                   allow_empty_classes=args.allow_empty_classes), "test")
    cfg = EditBenchConfig(images=args.images, seeds=args.seeds,
                          batch_size=args.batch_size, gibbs_images=args.gibbs_images, gibbs_sweeps=args.gibbs_sweeps,
                          vary_images=args.vary_images, vary_n=args.vary_n,
                          settings=given_flags(SamplingConfig, args))
    result = run_edit_bench(ctf, base, clf, data.uint8_images(), data.labels, cfg, device=device,
                            progress=False, log=lambda m: print(m, flush=True))
    figures = result.pop("figures")
    table = markdown(result)
    result["command"] = "ctfgen " + " ".join(sys.argv[1:])
    result["pipelines"] = {"ctf": ctf.fingerprints, "baseline": base.fingerprints}
    with artifact_dir(args.out, overwrite=args.overwrite) as tmp:
        atomic_write_json(tmp / "result.json", result)
        (tmp / "tables.md").write_text(table)
        for name, fig in figures.items():
            (tmp / f"edit-{name.replace(' ', '-')}.png").write_bytes(png_bytes(fig))
        fp = hashlib.sha256(json.dumps(result, sort_keys=True).encode()).hexdigest()[:16]
        write_manifest(tmp, kind="bench-edit", fingerprint=fp, config={"command": result["command"]},
                       made_from={"ctf": ctf.fingerprints, "baseline": base.fingerprints})
    print(table)
    print(f"written to {args.out}")
    return 0
