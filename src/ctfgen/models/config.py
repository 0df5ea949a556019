"""The model kinds (KINDS) and the one config type shared by their models, which travels inside
checkpoints (to_dict/from_dict). Torch-free: the command line reads both to make its parsers."""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass

from ..errors import CtfgenError


def resolve(path: str):
    """The object named by "package.module:Name", imported on first use (this module stays torch-free)."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Kind:
    """What the trainer, its data checks and the command line need to know of a model kind. The
    tokens of a batch are its entries "codes" (codebook indices, fine labels) and "coarse" (their
    cluster labels, from a coarse map)."""

    about: str  # what the model is, in a few words
    reads: str  # the batch entry the model takes as input tokens
    predicts: str  # the batch entry its head predicts
    model: str  # its nn.Module class, "package.module:Class" (imported on first use: this table is torch-free)

    @property
    def model_class(self) -> type:
        """The class that builds and runs models of this kind: `model_class(cfg, code_to_coarse=None)`."""
        return resolve(self.model)

    @property
    def batch_keys(self) -> tuple[str, ...]:
        """The batch entries a training step of this kind reads: its tokens, its targets, the class."""
        return tuple(dict.fromkeys((self.reads, self.predicts, "label")))

    @property
    def help(self) -> str:
        """One line for `ctfgen train KIND --help` and the list of `ctfgen train --help`."""
        return self.about + (" (needs --coarse-map)" if self.needs_coarse_map else " (no coarse map)")

    @property
    def needs_coarse_map(self) -> bool:
        """Reads or predicts coarse labels: training needs a coarse map, the config coarse_vocab."""
        return "coarse" in (self.reads, self.predicts)

    @property
    def member_head(self) -> bool:
        """Predicts fine labels given their coarse labels (stage 2): the model holds the coarse map's
        code_to_coarse to restrict its head to each cluster's members, and trains with
        aux_coarse_noise and the --aux-loss implementations."""
        return self.reads == "coarse" and self.predicts == "codes"


# The one list of model kinds, in this order in error messages. A new kind is a row here and its model
# class (docs/ARCHITECTURE.md, "Adding a model"); code elsewhere asks the row, never the kind's name.
KINDS: dict[str, Kind] = {
    "baseline": Kind("LlamaGen's class-conditional GPT over the full codebook", reads="codes", predicts="codes",
                     model="ctfgen.models.gpt:GPT"),
    "ar": Kind("stage 1: causal transformer over the K coarse labels", reads="coarse", predicts="coarse",
               model="ctfgen.models.gpt:GPT"),
    "aux": Kind("stage 2: bidirectional transformer, coarse labels in, codebook indices out", reads="coarse",
                predicts="codes", model="ctfgen.models.aux:AuxTransformer"),
}
# The parameter-free stage 2s (models/member_prior.py), by rule: `ctfgen pipeline make --stage2 RULE`.
PRIOR_RULES = ("uniform", "frequency")
# The folder kinds that can be a CTF pipeline's stage 2 ("aux" role), and the artifact class that loads
# each (models/stage2.py: load_stage2). A new stage 2 is its module and one line here.
STAGE2_FOLDERS: dict[str, str] = {
    "model": "ctfgen.models.artifact:TrainedModel",  # a trained stage 2, `ctfgen train aux`
    "stage2_prior": "ctfgen.models.member_prior:MemberPriorArtifact",  # `ctfgen pipeline make --stage2 RULE`
}
CLS_ROPE = ("zero", "identity")
# stage 2's loss formulations (models/member_loss.py; `--aux-loss` offers them and "auto")
AUX_LOSS_IMPLS = ("loop", "gather", "masked")


def find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - n % k


@dataclass
class ModelConfig:
    """What a model is. `kind` (a key of KINDS) picks the vocabularies (in_vocab, out_vocab) and
    the model class: GPT (causal) for "baseline" and "ar", AuxTransformer (bidirectional) for "aux"."""

    kind: str = "baseline"
    vocab_size: int = 16384  # codebook size V (fine labels)
    coarse_vocab: int | None = None  # K clusters; required by the kinds that need a coarse map
    num_classes: int = 1000  # the embedding has one more row, index num_classes = null class for CFG
    grid: int = 16  # tokens form a grid x grid raster
    n_layer: int = 12
    n_head: int = 12
    dim: int = 768
    multiple_of: int = 256  # SwiGLU hidden size is rounded up to this
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02
    token_dropout: float = 0.1
    attn_dropout: float = 0.0
    resid_dropout: float = 0.1
    ffn_dropout: float = 0.1
    class_dropout_prob: float = 0.1  # labels replaced by the null class in compute_loss (training only)
    # Rotary table row for the class prefix. "zero" (cos=0, sin=0) is LlamaGen's: the class token's
    # q and k vanish, so it is reached only through its value; needed to reproduce LlamaGen
    # checkpoints. "identity" (cos=1, sin=0) leaves q and k unrotated, the clean alternative.
    cls_rope: str = "zero"
    # stage 2 ("aux") only
    use_class: bool = True  # prepend the class token
    mask_to_cluster: bool = True  # fine logits restricted to the members of each position's coarse label
    coarse_noise: float = 0.0  # fraction of coarse inputs replaced by random labels in training
    preset: str = ""  # informative only: the preset it was built from

    def __post_init__(self) -> None:
        self.check()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def check(self) -> None:
        where = "model config"
        if self.kind not in KINDS:
            raise CtfgenError(f"{where}: kind {self.kind!r} is not one of {tuple(KINDS)}")
        if self.cls_rope not in CLS_ROPE:
            raise CtfgenError(f"{where}: cls_rope {self.cls_rope!r} is not one of {CLS_ROPE}")
        if KINDS[self.kind].needs_coarse_map and not self.coarse_vocab:
            raise CtfgenError(f"{where}: kind {self.kind!r} needs coarse_vocab (the number of clusters K)")
        for name in ("vocab_size", "num_classes", "grid", "n_layer", "n_head", "dim"):
            if getattr(self, name) < 1:
                raise CtfgenError(f"{where}: {name} must be >= 1, got {getattr(self, name)}")
        if self.dim % self.n_head:
            raise CtfgenError(f"{where}: dim {self.dim} is not divisible by n_head {self.n_head}")
        if self.head_dim % 4:
            # 2D RoPE splits the rotary pairs in two halves (rows, columns)
            raise CtfgenError(f"{where}: head_dim {self.head_dim} (dim/n_head) must be a multiple of 4")
        for name in ("token_dropout", "attn_dropout", "resid_dropout", "ffn_dropout",
                     "class_dropout_prob", "coarse_noise"):
            p = getattr(self, name)
            if not 0.0 <= p < 1.0:
                raise CtfgenError(f"{where}: {name} must be in [0, 1), got {p}")

    @property
    def spec(self) -> Kind:
        """The properties of this config's kind (KINDS)."""
        return KINDS[self.kind]

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def ffn_hidden(self) -> int:
        return find_multiple(int(2 * 4 * self.dim / 3), self.multiple_of)

    @property
    def seq_len(self) -> int:
        """Image tokens per sample."""
        return self.grid * self.grid

    @property
    def n_prefix(self) -> int:
        """Class tokens before the image tokens (0 for an aux model without the class)."""
        return 0 if (self.spec.member_head and not self.use_class) else 1

    @property
    def in_vocab(self) -> int:
        return self._vocab(self.spec.reads)

    @property
    def out_vocab(self) -> int:
        return self._vocab(self.spec.predicts)

    def _vocab(self, entry: str) -> int:
        return int(self.coarse_vocab) if entry == "coarse" else self.vocab_size
