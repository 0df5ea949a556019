"""Metric records: the window of training steps each record averages (MetricsWindow), a JSONL file
in the run folder, a loss-curve PNG, and, when asked for, live logs for watching long runs:
TensorBoard event files (out/tensorboard) and Weights & Biases in offline mode (out/wandb; `wandb
sync` uploads them later). Only rank 0 writes any of them."""
from __future__ import annotations

import contextlib
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from ..dist import DistInfo, all_reduce_mean

METRICS = "metrics.jsonl"
SKIP = ("step", "epoch")  # the x axis, not a metric


class MetricsWindow:
    """The training steps since the last record: per-micro-step metrics summed as device tensors
    (reading them would synchronise the GPU at every step), the gradient norms, and the wall time
    they took, for one record of means."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, Any] = {}
        self.steps = 0
        self.grad_norm_sum = torch.zeros((), device=self.device)
        self.t0 = time.perf_counter()

    def add_micro_step(self, loss_share: torch.Tensor, metrics: Mapping[str, Any], grad_accum: int) -> None:
        """One micro-batch's share of the step's loss (the shares of a step add up to it) and its
        model metrics (numbers or scalar tensors, averaged over the micro-batches; others are skipped)."""
        values = {k: v for k, v in metrics.items() if isinstance(v, (int, float, torch.Tensor)) and k != "loss"}
        for k, v in values.items():
            v = v.detach().float().reshape(()) if isinstance(v, torch.Tensor) else float(v)
            self.sums[k] = self.sums.get(k, 0.0) + v / grad_accum
        self.sums["loss"] = self.sums.get("loss", 0.0) + loss_share.detach().float().reshape(())

    def add_step(self, grad_norm: torch.Tensor) -> None:
        self.grad_norm_sum += grad_norm
        self.steps += 1

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Leave the time spent inside (checkpoints) out of the window's wall time; the window's
        steps before it still count."""
        t = time.perf_counter()
        yield
        self.t0 += time.perf_counter() - t

    def means(self, dist: DistInfo) -> tuple[dict[str, float], float, float]:
        """(mean of each metric per step, mean gradient norm), both averaged over the ranks, and the
        seconds since the window began. Synchronises the device (the only place that does)."""
        keys = sorted(self.sums)
        values = torch.stack([torch.as_tensor(self.sums[k], device=self.device).double() for k in keys]
                             + [self.grad_norm_sum.double()]) / self.steps
        values = all_reduce_mean(values, dist).tolist()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return dict(zip(keys, values)), values[-1], time.perf_counter() - self.t0


class MetricsLog:
    """Keeps every record in memory (one per log step: small) and appends each to out/metrics.jsonl.

    On resume the records past the checkpoint's step are dropped, so the file and the curve show one
    continuous run even when the previous process died between checkpoints.
    """

    def __init__(self, out_dir: str | Path, *, enabled: bool = True, tensorboard: bool = False, wandb: bool = False,
                 run_config: dict | None = None):
        self.out = Path(out_dir)
        self.enabled = enabled
        self.records: list[dict[str, Any]] = []
        self._tb = None
        self._tb_wanted = tensorboard and enabled
        self._wandb = None
        self._wandb_wanted = wandb and enabled
        self._run_config = run_config or {}
        self._purge_step: int | None = None

    def resume(self, step: int) -> None:
        # TensorBoard hides what a killed process logged past the checkpoint
        self._purge_step = step + 1
        path = self.out / METRICS
        if not self.enabled or not path.is_file():
            return
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
            if rec.get("step", 0) <= step:
                self.records.append(rec)
        self._rewrite()

    def reset(self) -> None:
        if self.enabled and (self.out / METRICS).exists():
            (self.out / METRICS).unlink()

    def _rewrite(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / METRICS).write_text("".join(json.dumps(r) + "\n" for r in self.records))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.records.append(record)
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / METRICS, "a") as f:
            f.write(json.dumps(record) + "\n")
        scalars = {f"train/{k}": v for k, v in record.items() if k not in SKIP and isinstance(v, (int, float))}
        if self._tb_wanted:
            tb = self._tensorboard()
            for key, value in scalars.items():
                tb.add_scalar(key, value, record["step"])
            tb.flush()  # watched live: do not wait for the writer's own flush interval
        if self._wandb_wanted:
            self._wandb_run().log({**scalars, "train/epoch": record.get("epoch", 0.0)}, step=record["step"])

    def _tensorboard(self):
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter  # RunOptions checked it is installed

            self._tb = SummaryWriter(str(self.out / "tensorboard"), purge_step=self._purge_step)
            self._purge_step = None
        return self._tb

    def _wandb_run(self):
        if self._wandb is None:
            import wandb

            # one W&B run per run folder, across resumes and the re-opening after each checkpoint
            run_id = "ctfgen-" + hashlib.sha256(str(self.out.resolve()).encode()).hexdigest()[:12]
            (self.out / "wandb").mkdir(parents=True, exist_ok=True)
            self._wandb = wandb.init(project="ctfgen", name=self.out.name, id=run_id, resume="allow",
                                     mode="offline", dir=str(self.out), config=self._run_config)
        return self._wandb

    def close(self) -> None:
        """Release the live-log files (before the folder is swapped; reopened on the next write)."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def plot(self, path: str | Path, title: str = "", loss_label: str = "training loss (cross-entropy)") -> None:
        if not self.records:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [r["step"] for r in self.records]
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, height_ratios=[3, 1])
        ax1.plot(steps, [r["loss"] for r in self.records], label="loss")
        ax1.set_ylabel(loss_label)
        if any("acc" in r for r in self.records):
            acc_ax = ax1.twinx()
            acc_ax.plot(steps, [r.get("acc", float("nan")) for r in self.records], color="tab:orange", alpha=0.7)
            acc_ax.set_ylabel("token accuracy", color="tab:orange")
        ax1.grid(alpha=0.3)
        ax1.set_title(title)
        ax2.plot(steps, [r["lr"] for r in self.records], color="tab:green")
        ax2.set_ylabel("lr")
        ax2.set_xlabel("optimizer step")
        ax2.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
