"""The stage-2 contract: what CTF's sampler, likelihood and pipelines ask of any stage 2.

Stage 2 turns a coarse-label sequence (B, L) and the class (B,) into one codebook index per
position, each drawn from the members of that position's cluster. A stage 2 is an nn.Module with
a `code_to_coarse` buffer (V,) and a `config` naming `vocab_size` and `coarse_vocab`, deriving
from `Stage2`, which gives it the cluster tables (models/members.py) and asks for:

- `stage2_log_probs(coarse_BL, class_B)`: (B, L, M) float32 normalised log-probabilities of each
  position's cluster members, column j = `member_tables().members_KM[coarse, j]`, -inf past the
  cluster's size. The one input of the exact likelihood (evaluate/nll.py: stage2_nll).
- `stage2_logits(coarse_BL, class_B, guidance_scale)`: (B, L, C) float32 logits the sampler draws a
  column from (sample/sampler.py: sample_fine), and `stage2_codes(coarse_N, col_N)` that maps the
  drawn columns back to codes. By default C = M and these are the member log-probabilities.

and implemented by the learned stage 2 (models/aux.py: AuxTransformer, a `TrainedModel` folder) and
the parameter-free priors (models/member_prior.py: MemberPrior, a `MemberPriorArtifact` folder).
Their folders are found by kind through `models/config.py: STAGE2_FOLDERS`; `load_stage2` loads
any of them. Adding a stage 2 is a module with a `Stage2` subclass and its artifact class, and one
line in STAGE2_FOLDERS (docs/ARCHITECTURE.md; tests/test_stage2.py does it).
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar, Mapping

import torch

from ..artifacts import MANIFEST, ModuleArtifact, fingerprint_tensors, read_manifest
from ..config import check_fields
from ..errors import ArtifactError, CtfgenError
from .config import STAGE2_FOLDERS, resolve
from .members import MemberTables


class Stage2(MemberTables):
    """The contract (see the module's docstring). Subclasses are nn.Modules."""

    # whether the class changes the distribution: only then does stage-2 guidance mean anything,
    # and then the stage 2 must implement it (`stage2_logits`) or refuse the setting
    sees_class: bool = True
    CONFIG: ClassVar[type]  # its config dataclass (for a `Stage2Artifact` folder)

    def keep_map(self, cfg: Any, code_to_coarse_V: torch.Tensor) -> None:
        """Keep `cfg` as the config and code_to_coarse (V,) as a buffer (after nn.Module.__init__)."""
        self.config = cfg
        self.register_buffer("code_to_coarse", torch.as_tensor(code_to_coarse_V).long().clone())

    @classmethod
    def empty(cls, cfg: Any) -> "Stage2":
        """A module of `cfg` whose tensors a folder's weights then fill (`Stage2Artifact.build`):
        by default `cls(cfg, code_to_coarse)` with its other tensors left to their defaults."""
        return cls(cfg, torch.zeros(cfg.vocab_size, dtype=torch.long))

    @property
    def stage2_name(self) -> str:
        """What a likelihood result records as its stage 2 ("aux", "uniform", ...)."""
        raise NotImplementedError

    @classmethod
    def describe(cls, cfg: Any) -> str:
        """What this stage 2 of config `cfg` does, as a clause of a model card's sentence ("stage 2 ...")."""
        return f"stage 2 ({cls.__name__}) draws each token's code among the members of its coarse cluster"

    @property
    def members_only(self) -> bool:
        """Whether the sampler draws only members of each position's cluster (the codes then give
        back the coarse labels). False for a learned stage 2 trained without the cluster mask, whose
        `stage2_log_probs` renormalise over the members a distribution over the whole codebook."""
        return True

    @property
    def renormalised(self) -> bool:
        """True when `stage2_log_probs` renormalise (see `members_only`)."""
        return not self.members_only

    def check_length(self, L: int) -> None:
        """Refuse sequences of L tokens when the stage 2 has a fixed length (CtfgenError)."""

    def stage2_log_probs(self, coarse_BL: torch.Tensor, class_B: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def stage2_logits(self, coarse_BL: torch.Tensor, class_B: torch.Tensor | None,
                      guidance_scale: float = 1.0) -> torch.Tensor:
        """(B, L, C) float32 sampling logits; default: the member log-probabilities (C = M).

        Guidance (`guidance_scale` != 1, the setting stage2_guidance_scale) needs the null class's
        distribution, which the contract does not give: the default ignores the scale for a stage 2
        that does not see the class (`sees_class` False: guidance would change nothing) and raises
        CtfgenError for one that does; such a stage 2 implements guidance by overriding this method
        (as models/aux.py: AuxTransformer does)."""
        self.check_guidance(guidance_scale)
        return self.stage2_log_probs(coarse_BL, class_B)

    def check_guidance(self, guidance_scale: float) -> None:
        """Refuse a stage-2 guidance scale this stage 2 cannot apply (CtfgenError; see `stage2_logits`).
        The pipeline asks before stage 1 runs, so a refused setting costs no sampling."""
        own = type(self).stage2_logits is not Stage2.stage2_logits
        if guidance_scale != 1.0 and self.sees_class and not own:
            raise CtfgenError(f"stage2_guidance_scale {guidance_scale:g}: stage 2 '{self.stage2_name}' "
                              f"({type(self).__name__}) sees the class but implements no guidance "
                              "(no stage2_logits of its own); use stage2_guidance_scale 1")

    def stage2_codes(self, coarse_N: torch.Tensor, col_N: torch.Tensor) -> torch.Tensor:
        """(N,) the codes of the drawn columns of `stage2_logits` (default: cluster members)."""
        return self.member_tables().codes(coarse_N, col_N)

    def stage2_rows(self, B: int, L: int, guidance_scale: float, max_logits: int) -> int:
        """How many sequences the sampler passes per `stage2_logits` call (default: all of them)."""
        return max(1, B)

    def member_table_log_probs(self, log_prob_V: torch.Tensor, coarse_BL: torch.Tensor) -> torch.Tensor:
        """(B, L, M) float32: a fixed per-code log-probability table (V,) laid out as each position's
        members, -inf past the cluster's size (for stage 2s whose distribution is such a table)."""
        t = self.member_tables()
        coarse_N = coarse_BL.flatten().to(t.members_KM.device)
        out_NM = log_prob_V.float()[t.members_KM[coarse_N]].masked_fill(t.padding(coarse_N), float("-inf"))
        return out_NM.view(*coarse_BL.shape, -1)

    @property
    def stage2_device(self) -> torch.device:
        return self.code_to_coarse.device


class Stage2Artifact(ModuleArtifact):
    """The folder of a stage 2 that its config and tensors make (a prior, tests/stage2_example.py):
    manifest config[CONFIG_KEY] holds the module's config (`MODULE.CONFIG`), the weights file its
    tensors; MODULE ("package.module:Class") is the `Stage2` class, rebuilt with `empty(cfg)`."""

    CONFIG_KEY: ClassVar[str] = "stage2"
    MODULE: ClassVar[str] = ""

    @classmethod
    def module_class(cls) -> type:
        return resolve(cls.MODULE)

    @classmethod
    def config_of(cls, module: torch.nn.Module) -> dict[str, Any]:
        return {cls.CONFIG_KEY: asdict(module.config)}

    @classmethod
    def fingerprint_of(cls, state: Mapping[str, torch.Tensor], module: torch.nn.Module) -> str:
        return fingerprint_tensors(state, extra=cls.config_of(module))

    @classmethod
    def stage2_config(cls, manifest: dict, folder: str | Path = "stage 2") -> Any:
        """The manifest's config as `MODULE.CONFIG`, its fields checked by their rules (config.py:
        check_fields): CtfgenError naming the manifest file and the field."""
        cfg = cls.typed_config(folder, manifest, cls.module_class().CONFIG, key=cls.CONFIG_KEY)
        return check_fields(cfg, where=f"{Path(folder) / MANIFEST}: config.{cls.CONFIG_KEY}")

    @classmethod
    def check_weights(cls, folder: Path, manifest: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> None:
        """The fingerprint of the config and weights as written must be the manifest's: an edited
        config (another rule) would otherwise pass for the folder it was made as (ArtifactError)."""
        config = {cls.CONFIG_KEY: asdict(cls.stage2_config(manifest, folder))}
        if fingerprint_tensors(state, extra=config) != manifest["fingerprint"]:
            raise ArtifactError(f"{folder / MANIFEST}: config.{cls.CONFIG_KEY} and {folder / cls.WEIGHTS} do not "
                                f"match the manifest's fingerprint (config or weights edited); {cls.REDO}")

    @classmethod
    def build(cls, folder: Path, manifest: dict) -> torch.nn.Module:
        return cls.module_class().empty(cls.stage2_config(manifest, folder))

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu", *, ema: bool | None = None,
             **kwargs: Any) -> "Stage2Artifact":
        """The stage 2 on `device`, its folder checked (weights file, finite values). `ema` is
        ignored: such a stage 2 has no training run."""
        return super().load(folder, device, **kwargs)


def stage2_folder_class(kind: str, where: str | Path = "stage 2") -> type:
    """The artifact class of the stage-2 folder kind `kind` (STAGE2_FOLDERS); ArtifactError otherwise."""
    if kind not in STAGE2_FOLDERS:
        raise ArtifactError(f"{where}: a '{kind}' folder cannot be a stage 2; expected one of {tuple(STAGE2_FOLDERS)}")
    return resolve(STAGE2_FOLDERS[kind])


def read_stage2_manifest(folder: str | Path) -> dict:
    """The manifest of a stage-2 folder of any kind in STAGE2_FOLDERS (ArtifactError otherwise)."""
    return read_manifest(folder, tuple(STAGE2_FOLDERS))


def stage2_config(manifest: dict, folder: str | Path = "stage 2") -> Any:
    """The config of a stage-2 manifest: `vocab_size`, `coarse_vocab`, and `grid` / `num_classes`
    (None for a stage 2 that does not depend on them), read by its artifact class's `stage2_config`."""
    return stage2_folder_class(manifest.get("kind", ""), folder).stage2_config(manifest, folder)


def stage2_description(manifest: dict, folder: str | Path = "stage 2") -> str:
    """What the stage 2 of a stage-2 manifest does, in its class's words (`Stage2.describe`), read
    without loading its weights: a model card's line (sample/model_card.py)."""
    art = stage2_folder_class(manifest.get("kind", ""), folder)
    cfg = art.stage2_config(manifest, folder)
    # a Stage2Artifact names its module; a trained model's class is its kind's (models/config.py: KINDS)
    module = art.module_class() if issubclass(art, Stage2Artifact) else resolve(cfg.spec.model)
    return module.describe(cfg)


def load_stage2(folder: str | Path, device: str | torch.device = "cpu", *, ema: bool | None = None):
    """The artifact of a stage-2 folder of any registered kind, its module a `Stage2` on `device`.
    `ema`: for a learned stage 2 (see TrainedModel.load); a stage 2 without weights ignores it."""
    art = stage2_folder_class(read_stage2_manifest(folder)["kind"], folder).load(folder, device, ema=ema)
    if not isinstance(art.module, Stage2):
        raise ArtifactError(f"{folder} holds a '{getattr(art, 'kind', art.KIND)}' model, not a stage 2 (expected 'aux')")
    return art
