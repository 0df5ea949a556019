"""The pipeline folder (kind "pipeline"): which tokenizer and model folders make one CTF or baseline
pipeline, copied into it or referenced by path, with their fingerprints and the default sampling
settings. `make_pipeline` writes one from component folders (`ctfgen pipeline make`), refusing
components that do not belong together; pipeline.py's classes load and save them.

    out/manifest.json    config {type: "ctf" | "baseline", components: {role: folder}, sampling},
                         made_from {tokenizer, ar, aux | baseline, coarse_map}: fingerprints
    out/tokenizer/, out/ar/, out/aux/ | out/baseline/   the copied folders (weights, no training state)

A CTF pipeline's stage 2 ("aux" role) is a folder of any kind in models/config.py: STAGE2_FOLDERS:
a trained stage-2 model, or a parameter-free prior that `make_pipeline` writes from its artifact.
    out/README.md        the model card (model_card.py): Hub front matter, provenance, measured metrics
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

from ..artifacts import MANIFEST, Artifact, ModuleArtifact, artifact_dir, check_made_from, fingerprint_tensors, read_manifest
from ..config import from_dict, to_dict
from ..errors import ArtifactError, CtfgenError
from ..filecheck import verify_file
from ..models.artifact import TrainedModel
from ..models.stage2 import load_stage2, read_stage2_manifest, stage2_config, stage2_folder_class
from ..tokenizer.artifact import TokenizerArtifact
from .settings import SamplingConfig

KIND = "pipeline"
ROLES = {"ctf": ("ar", "aux"), "baseline": ("baseline",)}
STAGE2_ROLE = "aux"  # the role a stage 2 of any kind fills (its folder kind: models/config.py STAGE2_FOLDERS)
# the sampling settings a new pipeline folder of each type starts from (the paper's, LlamaGen's)
DEFAULT_SAMPLING = {"ctf": SamplingConfig, "baseline": SamplingConfig.baseline}
# classes.json (data/classes.py's CLASSES_FILE, written by `tokenizer train`) names the classes on the
# serve page; imported tokenizers have none, which copy_files allows.
TOKENIZER_FILES = (MANIFEST, TokenizerArtifact.WEIGHTS, "classes.json")


@dataclass
class PipelineFolderConfig:
    """What a pipeline folder's manifest holds as its config."""

    type: str  # "ctf" or "baseline"
    components: dict[str, str]  # role -> its folder: a name inside the pipeline folder, or an absolute path
    sampling: SamplingConfig  # the settings a loaded pipeline starts from


class PipelineFolder(Artifact):
    """A pipeline folder: which component folders make the pipeline (copied in or referenced), their
    fingerprints by role (`made_from`) and the default sampling settings."""

    KIND: ClassVar[str] = KIND

    def __init__(self, config: PipelineFolderConfig, fingerprints: dict[str, str], *, copied: bool,
                 folder: Path | None = None, manifest: dict | None = None):
        if config.type not in ROLES:
            raise CtfgenError(f"pipeline type must be one of {sorted(ROLES)}, got {config.type!r}")
        self.config, self.fingerprints, self.copied = config, dict(fingerprints), copied
        self.folder, self.manifest = folder, manifest

    @property
    def fingerprint(self) -> str:
        return fingerprint_tensors({}, extra=self.fingerprints)

    @property
    def made_from(self) -> dict[str, Any]:
        return dict(self.fingerprints)

    @property
    def coarse_to_fine(self) -> bool:
        """Whether the pipeline has a stage 2 (CTF) or not (the baseline)."""
        return STAGE2_ROLE in ROLES[self.config.type]

    def write(self, tmp: Path, *, name: str, evaluations: Sequence[Any] = (), license: str | None = None) -> dict:
        """The model card (model_card.py: README.md named `name`, with `evaluations` and `license`),
        then the manifest, last, inside `artifact_dir` (the component folders are already in `tmp`)."""
        from .model_card import write_model_card

        write_model_card(tmp, self, evaluations=evaluations, license=license, name=name)
        return self.write_manifest(tmp, config=to_dict(self.config), info={"copied": self.copied})

    @classmethod
    def load(cls, folder: str | Path) -> "PipelineFolder":
        """The folder's description, refusing one whose component folders changed since it was made
        (another fingerprint) or are missing. `folder` may be a Hub repository id "user/name" in the
        local Hugging Face cache (hub.py); a local folder of that name wins."""
        from .hub import check_shareable, resolve_pipeline_folder

        given, folder = folder, resolve_pipeline_folder(folder)
        m = cls.read_manifest(folder)
        cfg = cls.typed_config(folder, m, PipelineFolderConfig)
        self = cls(cfg, m.get("made_from", {}), copied=bool(m.get("info", {}).get("copied")), folder=folder,
                   manifest=m)
        if str(given) != str(folder):
            check_shareable(folder, self.copied, str(given))
        for role in ("tokenizer", *ROLES[cfg.type]):
            if role not in cfg.components:
                raise ArtifactError(f"{folder / MANIFEST}: config.components lacks '{role}'")
            where = self.component(role)
            check_made_from(f"{role} of pipeline {folder}", self.fingerprints.get(role, "<none>"),
                            read_manifest(where)["fingerprint"],
                            hint=f"{where} changed since the pipeline was made; run `ctfgen pipeline make` again")
        return self

    def component(self, role: str) -> Path:
        ref = Path(self.config.components[role])
        return ref if ref.is_absolute() else self.folder / ref


# ---------------------------------------------------------------- checking components

def check_components(tokenizer: dict, models: dict[str, dict]) -> dict[str, str]:
    """Refuse manifests that do not belong together; returns every fingerprint by role."""
    from ..tokenizer.model import VQConfig

    tcfg = from_dict(VQConfig, tokenizer.get("config", {}), where="tokenizer manifest: config")
    for role, m in models.items():
        mcfg = model_config(role, m)
        if mcfg.vocab_size != tcfg.codebook_size:
            raise ArtifactError(f"{role}: vocab_size {mcfg.vocab_size} != the tokenizer's codebook_size {tcfg.codebook_size}")
        if mcfg.grid is not None and mcfg.grid != tcfg.grid:
            raise ArtifactError(f"{role}: grid {mcfg.grid} != the tokenizer's {tcfg.grid} tokens per side")
    return check_stages(models, tokenizer["fingerprint"])


def model_config(role: str, manifest: dict, folder: str | Path | None = None):
    """The config of a component manifest of role `role`: the stage 2's (any folder kind of
    STAGE2_FOLDERS, models/stage2.py: stage2_config), else a ModelConfig of kind `role`.
    ArtifactError otherwise."""
    from ..models.config import ModelConfig

    where = role if folder is None else f"{role} {folder}"
    if role == STAGE2_ROLE:
        return stage2_config(manifest, where)
    kind = manifest.get("config", {}).get("model", {}).get("kind")
    if kind != role:
        raise ArtifactError(f"{where}: expected a '{role}' model, got kind {kind!r}")
    return from_dict(ModelConfig, manifest["config"]["model"], where=f"{where} manifest: config.model")


def component_class(role: str, manifest: dict | None = None) -> type:
    """The artifact class of a pipeline component: the tokenizer's, the stage 2's folder kind, or TrainedModel."""
    if role == "tokenizer":
        return TokenizerArtifact
    if role == STAGE2_ROLE and manifest is not None:
        return stage2_folder_class(manifest.get("kind", ""), role)
    return TrainedModel


def read_component_manifest(role: str, folder: str | Path) -> dict:
    """A model component's manifest: a stage-2 folder of any registered kind, else a model folder."""
    return read_stage2_manifest(folder) if role == STAGE2_ROLE else TrainedModel.read_manifest(folder)


def load_component(role: str, folder: str | Path, device, *, ema: bool | None = None):
    """The artifact of a model component folder (`Kind.load(folder)`), refusing another role's kind."""
    if role == STAGE2_ROLE:
        return load_stage2(folder, device, ema=ema)
    return TrainedModel.load(folder, device, ema=ema, expect_kind=role)


def check_stages(models: dict[str, dict], tokenizer_fingerprint: str, *, folders: dict[str, str | Path] | None = None,
                 tokenizer_name: str = "tokenizer") -> dict[str, str]:
    """Refuse model manifests (by role: "ar", "aux", "baseline") that do not belong together: each
    must be of its role's kind and made from `tokenizer_fingerprint`; stage 1 and stage 2, when both
    are given, must agree on coarse_vocab and num_classes and be made from the same coarse map.
    `folders` (by role) and `tokenizer_name` name the inputs in the errors (ArtifactError). Returns
    every fingerprint by role: "tokenizer", each model's, and "coarse_map" for a CTF pair."""
    at = {role: f" ({folders[role]})" if folders and role in folders else "" for role in models}
    fps = {"tokenizer": tokenizer_fingerprint}
    mcfgs = {}
    for role, m in models.items():
        mcfgs[role] = model_config(role, m, folders.get(role) if folders else None)
        made = m.get("made_from", {})
        if "tokenizer" not in made:
            raise ArtifactError(f"{role}{at[role]}: its manifest records no made_from.tokenizer, so it cannot be "
                                f"checked against the {tokenizer_name}")
        check_made_from(f"{role} model{at[role]} / {tokenizer_name}", tokenizer_fingerprint, made["tokenizer"],
                        hint=f"the {role} model was trained on codes of another tokenizer")
        fps[role] = m["fingerprint"]
    if "ar" in models and "aux" in models:
        pair = f"stage 1{at['ar']} / stage 2{at['aux']}"
        for key in ("coarse_vocab", "num_classes"):
            a, b = getattr(mcfgs["ar"], key), getattr(mcfgs["aux"], key)
            if b is not None and a != b:  # None: a stage 2 that does not read the class
                raise ArtifactError(f"stage 1{at['ar']} and stage 2{at['aux']} disagree on {key}: {a} vs {b}")
        cm = [models[r].get("made_from", {}).get("coarse_map") for r in ("ar", "aux")]
        if None in cm:
            raise ArtifactError(f"{pair}: made_from.coarse_map missing in a model manifest")
        check_made_from(f"{pair} coarse map", cm[0], cm[1],
                        hint="both stages must be trained with the same `ctfgen cluster` output")
        fps["coarse_map"] = cm[0]
    return fps


def copy_files(src: Path, dst: Path, names: Sequence[str]) -> None:
    dst.mkdir(parents=True)
    for name in names:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def make_pipeline(out: str | Path, *, tokenizer: str | Path | ModuleArtifact,
                  ar: str | Path | ModuleArtifact | None = None, aux: str | Path | ModuleArtifact | None = None,
                  baseline: str | Path | ModuleArtifact | None = None, copy: bool = True,
                  sampling: SamplingConfig | None = None, overwrite: bool = False,
                  evaluations: Sequence[Any] = (), license: str | None = None) -> Path:
    """Write a pipeline folder: CTF (ar + aux) or the baseline, plus the tokenizer, and its model card
    (README.md, model_card.py) with `evaluations` (`ctfgen eval` result files of its samples) and
    `license` (a Hub license id; left out when None).

    Each component is a folder or an artifact in memory (e.g. aux = a `MemberPriorArtifact`, or the
    models of a pipeline built in memory), which is written into the pipeline folder. copy=True
    copies the folders' weights (not the training state) into the folder; copy=False records their
    absolute paths instead, and loading checks they still hold the same fingerprints.
    """
    if (ar is None) != (aux is None) or (ar is None) == (baseline is None):
        raise CtfgenError("a pipeline is either CTF (both ar and aux folders) or the baseline (a baseline folder)")
    kind = "ctf" if ar is not None else "baseline"
    models = {"ar": ar, "aux": aux, "baseline": baseline}
    given = {"tokenizer": tokenizer, **{role: models[role] for role in ROLES[kind]}}
    sources = {role: src if isinstance(src, Artifact) else Path(src) for role, src in given.items()}
    manifests = {role: src.pending_manifest() if isinstance(src, Artifact) else
                 (TokenizerArtifact.read_manifest(src) if role == "tokenizer" else read_component_manifest(role, src))
                 for role, src in sources.items()}
    fps = check_components(manifests["tokenizer"], {r: m for r, m in manifests.items() if r != "tokenizer"})
    for role, src in sources.items():
        if isinstance(src, Path):  # a damaged weights file must not go into a pipeline that looks fine
            _verify(src, manifests[role], component_class(role, manifests[role]))
    sampling = (sampling or DEFAULT_SAMPLING[kind]()).check()
    with artifact_dir(out, overwrite=overwrite) as tmp:
        refs = {}
        for role, src in sources.items():
            if isinstance(src, Artifact):
                src.save(tmp / role)
            elif copy:
                copy_files(src, tmp / role, TOKENIZER_FILES if role == "tokenizer" else
                           component_class(role, manifests[role]).FILES)
            refs[role] = role if copy or isinstance(src, Artifact) else str(src.resolve())
        inside = copy or all(isinstance(src, Artifact) for src in sources.values())
        PipelineFolder(PipelineFolderConfig(kind, refs, sampling), fps, copied=inside).write(
            tmp, name=Path(out).name, evaluations=evaluations, license=license)
    return Path(out)


def _verify(src: Path, manifest: dict, cls: type) -> None:
    for name in (TOKENIZER_FILES if cls is TokenizerArtifact else cls.FILES):
        if name.endswith(".safetensors") and (src / name).is_file():
            verify_file(src, manifest, name, redo=f"repair or remake {src} before making the pipeline")
