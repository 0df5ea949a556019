"""`ctfgen bench edit` (the bench: benchmarks/edit.py): CTF's and the baseline's edits on real
test images, written to a folder (result.json, tables.md, a figure per edit)."""
from __future__ import annotations

import sys

from ...benchmarks.edit_config import EditBenchConfig
from ._util import add_command, add_config_flags, add_data_args, add_device_args


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
    p.add_argument("--classifier", required=True, metavar="DIR", help="the domain classifier (`ctfgen classifier train`)")
    add_config_flags(p, EditBenchConfig, only=("images", "seeds", "gibbs_images", "gibbs_sweeps", "vary_images",
                                                "vary_n", "batch_size"))
    p.add_argument("--out", required=True, metavar="DIR", help="folder for result.json, tables.md and the figures")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_data_args(p, sized=False)
    _add_sampling_args(p)
    add_device_args(p)


def _run_edit(args) -> int:
    import hashlib
    import json

    from ...artifacts import artifact_dir, atomic_write_json, write_manifest
    from ...benchmarks.edit import markdown, run_edit_bench
    from ...data import DataConfig, load_dataset
    from ...evaluate import ClassifierArtifact
    from ...sample import SamplingConfig, load_pipeline
    from ...sample.outputs import png_bytes
    from ._util import config_from_args, given_flags, setup_device

    device = setup_device(args)
    ctf = load_pipeline(args.pipeline, device=device)
    base = load_pipeline(args.baseline_pipeline, device=device)
    clf = ClassifierArtifact.load(args.classifier, device).module
    tok = ctf.tokenizer.config
    data = load_dataset(DataConfig(source=args.data, path=args.data_path, resolution=tok.resolution,
                                   channels=tok.channels, skip_bad=args.skip_bad,
                                   allow_empty_classes=args.allow_empty_classes), "test")
    cfg = config_from_args(EditBenchConfig, args, settings=given_flags(SamplingConfig, args))
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
