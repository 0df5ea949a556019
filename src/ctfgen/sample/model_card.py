"""The model card of a pipeline folder: README.md with the Hugging Face Hub's YAML front matter.

`save_pretrained` and `ctfgen pipeline make` write it; `ctfgen pipeline card` rewrites it with the
metrics `ctfgen eval` measured on the pipeline's samples. Everything on it comes from the folder's
manifests (what the tokenizer and models were made from, their fingerprints, how long they trained)
or from `ctfgen eval` result files, each with the command that measured it: a card never shows a
number that was not measured.

Front matter (huggingface_hub's ModelCardData renders and parses it):
    library_name: ctfgen, pipeline_tag, tags, datasets (a Hub id when the data set has one), license
    (only when given), model-index (the measured metrics), and ctfgen: {type, fingerprint, components:
    {role: {fingerprint, made_from}}, evaluations: [{metrics, command, reference, samples}]}.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from ..errors import ArtifactError, CtfgenError

if TYPE_CHECKING:
    from .pipeline_folder import PipelineFolder

CARD = "README.md"
# The Hub's tasks (huggingface.js, packages/tasks/src/pipelines.ts) generate images from text
# (text-to-image), from an image (image-to-image) or from nothing (unconditional-image-generation);
# none takes a class label. Class-conditional generators on the Hub (MAR, PAR: ImageNet classes, tagged
# by the Hub's own staff) carry this one, so that is where such a model is looked for; the
# "class-conditional" tag says what the input really is.
PIPELINE_TAG = "unconditional-image-generation"
HUB_DATASETS = {"fashion-mnist": "zalando-datasets/fashion_mnist"}  # ctfgen data source -> Hub data set id
METRIC_NAMES = {"fid_inception": "FID (Inception features)", "fid_classifier": "FID (domain classifier features)",
                "is_classifier": "Inception score (domain classifier)", "is_classifier_std": "Inception score std",
                "precision": "precision (k-NN)", "recall": "recall (k-NN)",
                "classifier_agreement": "classifier agreement with the requested class"}
SETTINGS = ("pr_k",)  # numbers in a result's metrics that are settings, not measurements
ROLE_NAMES = {"tokenizer": "tokenizer (VQ)", "ar": "stage 1 (coarse labels, autoregressive)",
              "aux": "stage 2 (codes given the coarse map)", "baseline": "baseline (LlamaGen, full codebook)"}


@dataclass(frozen=True)
class Evaluation:
    """Metrics `ctfgen eval` measured on samples of a pipeline, and the command that measured them.

    metrics: name -> value (result["metrics"], settings such as pr_k left out); reference: the real
    images compared against (source, split, count); samples: their count, sampling settings, seeds
    and the fingerprints of the models that made them; source: the result file."""

    metrics: dict[str, float]
    command: str
    reference: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    warnings: list[str] = field(default_factory=list)  # what `ctfgen eval` warned about (a weak classifier)

    @classmethod
    def read(cls, path: str | os.PathLike, *, command: str | None = None) -> "Evaluation":
        """A `ctfgen eval` result file. `command` is needed only for a result that does not record
        its own (written before `ctfgen eval` did). Raises CtfgenError naming the file and field."""
        from ..artifacts import read_json

        path = Path(path)
        r = read_json(path, what="ctfgen eval result")
        if not isinstance(r, dict) or not isinstance(r.get("metrics"), dict):
            raise CtfgenError(f"{path}: not a `ctfgen eval` result (no 'metrics' object)")
        command = command or r.get("command")
        if not command:
            raise CtfgenError(f"{path}: the result records no 'command'; give the command that measured it, or "
                              "rerun `ctfgen eval`, which records it")
        meta = r.get("metadata") or {}
        metrics = {k: float(v) for k, v in r["metrics"].items()
                   if k not in SETTINGS and isinstance(v, (int, float)) and not isinstance(v, bool)}
        ref = r.get("reference") or {}
        # the samples' manifest config: the global seed, the settings, the classes (not the per-sample
        # seeds, which follow from the global one and would fill the card)
        made = meta.get("sampling") or {}
        samples = {"count": (r.get("samples") or {}).get("count"), "made_from": meta.get("made_from") or {},
                   "seed": made.get("seed"), "settings": made.get("sampling") or {},
                   **{k: made[k] for k in ("classes", "per_class", "dtype", "command") if made.get(k) is not None}}
        reference = {k: ref[k] for k in ("source", "split", "path", "used", "fingerprint") if k in ref}
        if reference.get("source") == "npz" and "path" in reference:  # its folder says nothing off this machine
            reference["path"] = Path(reference["path"]).name
        return cls(metrics, str(command), reference, samples, str(path), [str(w) for w in r.get("warnings") or []])

    @property
    def dataset(self) -> str:
        """What the samples were compared against, in words: "fashion-mnist test" or "npz ref.npz"."""
        ref = self.reference
        return " ".join(str(x) for x in (ref.get("source", "unknown"), ref.get("split") or ref.get("path")) if x)

    def check_made_by(self, fingerprints: dict[str, str]) -> None:
        """Refuse metrics of samples that other models made (ArtifactError naming the role)."""
        made = self.samples.get("made_from") or {}
        if not made:
            raise ArtifactError(f"{self.source}: the evaluated samples record no model fingerprints, so they cannot be "
                                "tied to this pipeline; evaluate a `ctfgen sample --png-dir` folder of it")
        for role, fp in fingerprints.items():
            if made.get(role) != fp:
                raise ArtifactError(f"{self.source}: the samples were made by {role} {made.get(role)}, this pipeline's "
                                    f"{role} is {fp}; its metrics belong on another pipeline's card")

    def to_dict(self) -> dict[str, Any]:
        out = {"metrics": self.metrics, "command": self.command, "reference": self.reference,
               "samples": {k: v for k, v in self.samples.items() if k != "made_from"}}
        return {**out, "warnings": self.warnings} if self.warnings else out


def as_evaluations(items: Iterable[str | os.PathLike | Evaluation]) -> list[Evaluation]:
    return [e if isinstance(e, Evaluation) else Evaluation.read(e) for e in items]


# ---------------------------------------------------------------- the card

def component_manifests(folder: Path, components: dict[str, str]) -> dict[str, dict]:
    """Each role's manifest: inside `folder` (copied) or at its recorded absolute path."""
    from ..artifacts import read_manifest

    return {role: read_manifest(Path(ref) if Path(ref).is_absolute() else folder / ref)
            for role, ref in components.items()}


def card_data(pf: "PipelineFolder", manifests: dict[str, dict], evaluations: Sequence[Evaluation] = (),
              *, name: str, license: str | None = None):
    """The front matter (huggingface_hub.ModelCardData) of pipeline folder `pf`."""
    from huggingface_hub import EvalResult, ModelCardData

    data = data_description(manifests["tokenizer"])
    source = data.get("source", "")
    hub_data = HUB_DATASETS.get(source)
    results = [EvalResult(task_type=PIPELINE_TAG, dataset_type=HUB_DATASETS.get(e.reference.get("source"),
                                                                                  e.reference.get("source", "unknown")),
                          dataset_name=e.dataset, dataset_split=e.reference.get("split"),
                          metric_type=k, metric_name=METRIC_NAMES.get(k, k), metric_value=v)
               for e in evaluations for k, v in e.metrics.items()]
    components = {role: {"fingerprint": m["fingerprint"], "made_from": made_from_fingerprints(m)}
                  for role, m in manifests.items()}
    return ModelCardData(
        library_name="ctfgen", pipeline_tag=PIPELINE_TAG, license=license, model_name=name if results else None,
        tags=["ctfgen", "class-conditional", "autoregressive", "vq", "coarse-to-fine" if pf.coarse_to_fine else "llamagen"],
        datasets=[hub_data] if hub_data else None, eval_results=results or None,
        ctfgen={"type": pf.config.type, "fingerprint": pf.fingerprint, "made_from": parents(pf, manifests),
                "components": components, "evaluations": [e.to_dict() for e in evaluations]})


def parents(pf: "PipelineFolder", manifests: dict[str, dict]) -> dict[str, str]:
    """The pipeline's parents by role: tokenizer, the models, the coarse map (CTF), and the code
    store the models trained on ("codes", or "codes_<role>" when the models name different ones)."""
    out = dict(pf.fingerprints)
    codes = {role: (m.get("made_from") or {}).get("codes") for role, m in manifests.items() if role != "tokenizer"}
    known = {c for c in codes.values() if c}
    if len(known) == 1:
        out["codes"] = known.pop()
    else:
        out.update({f"codes_{role}": c for role, c in codes.items() if c})
    return out


def data_description(tokenizer_manifest: dict) -> dict:
    return dict((tokenizer_manifest.get("made_from") or {}).get("data_description") or {})


def made_from_fingerprints(manifest: dict) -> dict[str, str]:
    """A manifest's parents by role, fingerprints only (descriptions stay in the manifest)."""
    return {k: v for k, v in (manifest.get("made_from") or {}).items() if isinstance(v, str)}


def card_text(pf: "PipelineFolder", manifests: dict[str, dict], evaluations: Sequence[Evaluation] = (),
              *, name: str, license: str | None = None) -> str:
    """The whole README.md: front matter, then what it is, how to load it, how it was made and what
    was measured."""
    from ..config import to_dict
    from ..models.stage2 import stage2_description
    from .pipeline_folder import STAGE2_ROLE

    data = card_data(pf, manifests, evaluations, name=name, license=license)
    tok = manifests["tokenizer"].get("config", {})
    first = next(m["config"]["model"] for m in manifests.values() if "model" in m.get("config", {}))
    side = tok.get("resolution", "?")
    desc = data_description(manifests["tokenizer"])
    kind = ("It is CTF (coarse-to-fine token prediction): stage 1 predicts a coarse label per token in raster "
            f"order, {stage2_description(manifests[STAGE2_ROLE])}, and the tokenizer decodes the codes."
            if pf.coarse_to_fine else
            "It is the LlamaGen baseline: one autoregressive model predicts every token's code over the full "
            "codebook, and the tokenizer decodes the codes.")
    colour = {1: "grey", 3: "RGB"}.get(tok.get("channels"), f"{tok.get('channels')}-channel")
    lines = [
        f"# {name}", "",
        f"A class-conditional image generator made with ctfgen: {side}x{side} {colour} images of "
        f"{first.get('num_classes')} classes, each made of {first.get('grid')}x{first.get('grid')} tokens "
        f"(a codebook of {tok.get('codebook_size')} codes). {kind}", "",
        "## Use", "",
        "```python",
        "from ctfgen.sample import load_pipeline",
        "",
        "pipe = load_pipeline(\"user/name\")  # this folder: a local path, or the Hub repository it was pushed to",
        "images = pipe(class_labels=[0, 1], num_images_per_class=4, seed=0)  # list of PIL images",
        "```", "",
        "A repository id is read from the local Hugging Face cache only: fetch it once with `hf download user/name`. "
        "On the command line: `ctfgen sample --pipeline user/name --grid grid.png`.", "",
        "## How it was made", "",
        f"Training data: {describe_data(desc)}.", "",
        "| component | fingerprint | made from | training |",
        "|---|---|---|---|",
        *(f"| {ROLE_NAMES.get(role, role)} | `{m['fingerprint']}` | "
          f"{', '.join(f'{k} `{v}`' for k, v in made_from_fingerprints(m).items()) or '-'} | {describe_training(m)} |"
          for role, m in manifests.items()),
        "",
        f"Pipeline fingerprint `{pf.fingerprint}`. Loading refuses components whose fingerprints differ from "
        "these. Default sampling settings: "
        + ", ".join(f"{k}={v}" for k, v in to_dict(pf.config.sampling).items()) + ".", "",
        "## Evaluation", "",
        *evaluation_lines(evaluations),
        "",
        f"License: {license}." if license else "License: not stated by the person who made this pipeline.",
        "",
    ]
    from huggingface_hub import ModelCard

    # parsing the whole text back checks the front matter before the card is written
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))


def describe_data(desc: dict) -> str:
    if not desc:
        return "not recorded in the tokenizer's manifest"
    what = f"{desc.get('source', '?')}, split {desc.get('split', '?')}, {desc.get('n', '?')} images"
    hub = HUB_DATASETS.get(desc.get("source", ""))
    return what + (f" (on the Hub: [{hub}](https://huggingface.co/datasets/{hub}))" if hub else "") + \
        f", data fingerprint `{desc.get('fingerprint', '?')}`"


def describe_training(m: dict) -> str:
    from ..models.member_prior import MemberPriorArtifact

    if m.get("kind") == MemberPriorArtifact.KIND:  # a table made from the coarse map (and counts): nothing trained
        return "none (parameter-free)"
    train = (m.get("config") or {}).get("train") or (m.get("info") or {}).get("train_config") or {}
    if not train:
        return "not recorded"
    parts = [f"{train['steps']} steps"] if train.get("steps") else []
    if train.get("batch_size"):
        parts.append(f"batch size {train['batch_size']}")
    if train.get("preset"):
        parts.append(f"preset {train['preset']}")
    return ", ".join(parts) or "not recorded"


def evaluation_lines(evaluations: Sequence[Evaluation]) -> list[str]:
    if not evaluations:
        return ["No metrics yet. This card shows only numbers `ctfgen eval` measured on this pipeline's samples: "
                "add them with `ctfgen pipeline card DIR --eval RESULT.json` (or save_pretrained(evaluations=[...]))."]
    out = []
    for i, e in enumerate(evaluations, 1):
        s = e.samples
        settings = ", ".join(f"{k}={v}" for k, v in s.get("settings", {}).items()) or "not recorded"
        classes = f", classes {json.dumps(s['classes'])} x {s.get('per_class', '?')}" if "classes" in s else ""
        made = ["Samples made by", "", "```", s["command"], "```", ""] if s.get("command") else []
        out += [f"Measurement {i}: {s.get('count')} samples (seed {s.get('seed')}{classes}; {settings}) against "
                f"{e.reference.get('used', '?')} images of {e.dataset}.", "", *made, "Measured by", "",
                "```", e.command, "```", "",
                *(f"Warning from `ctfgen eval`: {w}" for w in e.warnings), *([""] if e.warnings else []),
                "| metric | value |", "|---|---|",
                *(f"| {METRIC_NAMES.get(k, k)} | {v:.4g} |" for k, v in e.metrics.items()), ""]
    return out


def write_model_card(folder: str | os.PathLike, pf: "PipelineFolder", *,
                     evaluations: Sequence[str | os.PathLike | Evaluation] = (), license: str | None = None,
                     name: str | None = None) -> Path:
    """Write folder/README.md for the pipeline folder `pf` (its components in `folder` or at their
    recorded paths). Evaluations are `ctfgen eval` result files (or Evaluation objects) of samples
    this pipeline's models made; anything else is refused (ArtifactError) before writing."""
    from ..artifacts import atomic_write_bytes

    folder = Path(folder)
    evals = as_evaluations(evaluations)
    models = {role: fp for role, fp in pf.fingerprints.items() if role != "coarse_map"}
    for e in evals:
        e.check_made_by(models)
    text = card_text(pf, component_manifests(folder, pf.config.components), evals,
                     name=name or folder.name, license=license)
    atomic_write_bytes(folder / CARD, text.encode())
    return folder / CARD
