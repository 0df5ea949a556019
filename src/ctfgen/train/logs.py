"""Metric records: a JSONL file in the run folder, TensorBoard when installed, and a loss-curve PNG."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

METRICS = "metrics.jsonl"


class MetricsLog:
    """Keeps every record in memory (one per log step: small) and appends each to out/metrics.jsonl.

    On resume the records past the checkpoint's step are dropped, so the file and the curve show one
    continuous run even when the previous process died between checkpoints.
    """

    def __init__(self, out_dir: str | Path, *, enabled: bool = True, tensorboard: bool = True):
        self.out = Path(out_dir)
        self.enabled = enabled
        self.records: list[dict[str, Any]] = []
        self._tb = None
        self._tb_wanted = tensorboard and enabled

    def resume(self, step: int) -> None:
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
        tb = self._writer()
        if tb is not None:
            for key, value in record.items():
                if key not in ("step", "epoch") and isinstance(value, (int, float)):
                    tb.add_scalar(f"train/{key}", value, record["step"])

    def _writer(self):
        if self._tb is None and self._tb_wanted:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                self._tb_wanted = False
                return None
            self._tb = SummaryWriter(str(self.out / "tensorboard"))
        return self._tb

    def close(self) -> None:
        """Release the TensorBoard files (before the folder is swapped; reopened on the next write)."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def plot(self, path: str | Path, title: str = "") -> None:
        if not self.records:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [r["step"] for r in self.records]
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, height_ratios=[3, 1])
        ax1.plot(steps, [r["loss"] for r in self.records], label="loss")
        ax1.set_ylabel("training loss (cross-entropy)")
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
