"""What a kind of training run brings to the one `Trainer` (train/trainer.py): the task interface.

The Trainer owns what every run shares: the loop and its steps (`train_step`, `log_metrics`, `save`,
`fit`), gradient accumulation and DDP / FSDP, clipping, the EMA, the metric window and live logs,
divergence stops, the time budget, and checkpoints (train/checkpoint_manager.py) that resume exactly.
A task owns what differs, as torchtitan's TrainSpec does: the model it builds, its optimizer and
learning-rate schedule, the batch of each step, the loss, the updates that follow an optimizer step
(a discriminator, dead-code restarts), the state those keep, and the checkpoint folder's format.

Two tasks exist: `train/model_task.py: ModelTask` (baseline, stage 1 and stage 2 over a code store;
`BenchTask` is it over one fixed batch, for the benchmarks) and `train/tokenizer_task.py: TokenizerTask`.
A new kind of run is a class with these members (deriving from `Task` gives the optional ones),
passed to `Trainer(task, run, dist, out)`; tests/test_train.py trains a line through one.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol

if TYPE_CHECKING:
    import torch

    from ..dist import DistInfo


class CheckpointFormat(Protocol):
    """How a task's run folder is recognised, checked and written (train/checkpoint.py does the rest:
    the training state beside the weights, the atomic swap)."""

    def open(self, out: Path) -> dict | None:
        """The manifest of the checkpoint in `out` that this run resumes, None for a fresh start.
        Raises ArtifactError naming the setting or input that differs, or a folder it must not touch."""

    def write_folder(self, tmp: Path, model_state: Mapping[str, torch.Tensor], *, info: Mapping[str, Any],
                     also: Callable[[Path], None]) -> None:
        """Write the weights and the manifest of a checkpoint into `tmp`; `also(tmp)` writes the
        training state and must run before the manifest (which lists every file's checksum)."""

    def load(self, out: Path, manifest: dict, param_names: list[str]) -> dict | None:
        """A checkpoint in a format of an earlier release, as checkpoint.load_training_state returns
        it (optimizer state keyed by `param_names`); None when `out` holds the current format."""


class TrainTask(Protocol):
    """One kind of training run. The Trainer calls, in order: `build`, (`format.open` and the
    loading of a checkpoint), `optimizer`, `seed` or `load_state`; then for each step `lr_at`,
    `batches`, `count`, `loss` per micro-batch, and `after_step`; `log_fields` at each record and
    `state` at each checkpoint."""

    what: str  # the run in messages: "training", "tokenizer training"
    name: str  # the progress bar's and loss curve's label
    loss_label: str  # what the loss is, on the loss curve's axis
    total: int  # optimizer steps of the whole run
    steps_per_epoch: int
    tokens_per_step: int  # for the records' tokens_per_s
    grad_clip: float  # maximum gradient norm (math.inf: measured, not clipped)
    ema: float  # decay of an EMA of the weights (0: none)
    uniform_loss: float  # a record's loss above this + 1 warns of divergence (math.inf: never)
    extra_check: str  # what the value after_step returns is, in a divergence message ("" if none)
    advice: str  # what to change after a divergence
    # the next three may be set by build(), the first call
    config: dict  # recorded in every checkpoint manifest; a resume must match it
    made_from: dict  # fingerprints of the inputs, likewise
    format: CheckpointFormat
    time_limit_s: float  # stop (checkpoint, return) once this much training time has passed (0: none)

    def build(self) -> torch.nn.Module:
        """The model to train, on the CPU or the device (the Trainer moves it), seeded."""

    def optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        """The optimizer over `model` (already wrapped for FSDP when it is sharded)."""

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step `step` (0-based)."""

    def seed(self, rank: int, start: int) -> None:
        """Seed the RNGs of a fresh start (start 0) or of a resume whose RNG states were written by
        another number of ranks."""

    def batches(self, step: int, dist: DistInfo, grad_accum: int) -> list[dict[str, torch.Tensor]]:
        """This rank's micro-batches of step `step`, on the device."""

    def count(self, model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        """What `loss` sums over in these micro-batches (positions, or micro-batches for a mean loss):
        the Trainer divides each loss by the total over all ranks, so a step's loss is one mean."""

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """(the loss summed over what `count` counts, metrics as scalar device tensors); runs inside
        the wrapped module's forward, so DDP sees it."""

    def after_step(self, step: int) -> torch.Tensor | None:
        """Updates after optimizer step `step` (extra optimizers, restarts); a scalar to check for
        divergence with the loss (named extra_check), or None."""

    def log_fields(self) -> dict[str, Any]:
        """Entries added to each metrics record (measured at log time)."""

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The task's own resumable state: tensors (safetensors) and JSON."""

    def load_state(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        """Restore what `state` returned."""


class Task:
    """Defaults for a TrainTask's optional members: no EMA, no uniform-guess warning, no extra
    check, no time limit, the loss a mean per micro-batch, nothing after the step, no state of its
    own, no extra record entries. A new task derives from it and gives the rest (`what`, `name`,
    `total`, `steps_per_epoch`, `tokens_per_step`, `grad_clip`, `config`, `made_from`, `format`,
    `build`, `optimizer`, `lr_at`, `batches`, `loss`)."""

    loss_label = "training loss"
    ema = 0.0
    uniform_loss = math.inf
    extra_check = ""
    advice = "use a lower learning rate"
    time_limit_s = 0.0

    def seed(self, rank: int, start: int) -> None:
        pass

    def count(self, model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        import torch

        device = next(iter(batches[0].values())).device
        return torch.tensor(float(len(batches)), dtype=torch.float64, device=device)  # each loss is a mean

    def after_step(self, step: int) -> torch.Tensor | None:
        return None

    def log_fields(self) -> dict[str, Any]:
        return {}

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return {}, {}

    def load_state(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        pass
