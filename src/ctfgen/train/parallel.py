"""Wrapping a model for DDP or FSDP, and full (unsharded) state dicts keyed by parameter name.

Optimizer states are saved keyed by parameter name, not by position, so a checkpoint is the same
whether it was written by a plain, a DDP or an FSDP run, and can be resumed under any of them.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from ..dist import DistInfo


class LossModule(nn.Module):
    """forward(batch) = loss(model, batch) (a task's loss, train/task.py: summed over what it counts,
    and metrics): DDP and FSDP hook into forward(), so the loss computation must go through it for
    gradients to be synchronised."""

    def __init__(self, model: nn.Module, loss: Callable[[nn.Module, dict], Any]):
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, batch: dict[str, torch.Tensor]):
        return self.loss(self.model, batch)


def wrap(model: nn.Module, info: DistInfo, *, loss: Callable[[nn.Module, dict], Any], fsdp: bool = False) -> nn.Module:
    """The module to call for the loss: plain, DDP or FSDP (fully_shard on every block, then the root)."""
    root = LossModule(model, loss)
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        # Shard each transformer block on its own so only one block is unsharded at a time.
        for module in list(model.modules()):
            if isinstance(module, nn.ModuleList):
                for block in module:
                    fully_shard(block)
        fully_shard(root)
        return root
    if info.enabled:  # under torchrun, one process too
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [info.device.index] if info.device.type == "cuda" else None
        # buffers (rotary table, code_to_coarse) are built identically on every rank: broadcasting
        # them before every forward would only cost time (and invalidate stage 2's cluster tables)
        return DDP(root, device_ids=ids, broadcast_buffers=False)
    return root


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on parameters with >= 2 dims (matrices, embeddings), none on norms and biases."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def _names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    return [by_id[id(p)] for g in optimizer.param_groups for p in g["params"]]


def full_model_state(model: nn.Module, *, fsdp: bool) -> dict[str, torch.Tensor]:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return model.state_dict()


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, *, fsdp: bool) -> dict:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    sd = optimizer.state_dict()
    names = _names(model, optimizer)
    return {"state": {names[i]: s for i, s in sd["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in sd["param_groups"]]}


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict, *, fsdp: bool) -> None:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
        return
    index = {n: i for i, n in enumerate(_names(model, optimizer))}
    optimizer.load_state_dict({
        "state": {index[n]: s for n, s in state["state"].items()},
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]],
    })


def ema_decay(decay: float, step: int) -> float:
    """The decay of the EMA update after optimizer step `step` (0-based): `decay`, warmed up as
    TensorFlow's tf.train.ExponentialMovingAverage does with num_updates, min(decay, (1 + step) /
    (10 + step)). Without it an EMA at 0.9999 is still 99% the random initial weights after 100
    steps (it averages over ~1 / (1 - decay) steps); with it the average always covers about the
    last tenth of the run so far, until the run is long enough for `decay` itself."""
    return min(decay, (1.0 + step) / (10.0 + step))


def ema_movement(ema: Mapping[str, torch.Tensor], raw: Mapping[str, torch.Tensor],
                 init: Mapping[str, torch.Tensor]) -> float:
    """How far the EMA has moved from the initial weights, as a fraction of how far the trained
    weights have: ||ema - init|| / ||raw - init|| over the tensors of `init` (full state dicts; 1.0
    when the weights have not moved at all). About 1 for an EMA that follows the run; near 0 for
    one still at the initial weights (models/artifact.py EMA_TRUSTED decides which gets loaded)."""
    moved_ema = moved_raw = 0.0
    for n, start in init.items():
        start = start.float().cpu()
        moved_ema += float((ema[n].float().cpu() - start).pow(2).sum())
        moved_raw += float((raw[n].float().cpu() - start).pow(2).sum())
    return 1.0 if moved_raw == 0 else (moved_ema / moved_raw) ** 0.5


class EMA:
    """Exponential moving average of the floating-point parameters (buffers are taken as they are),
    with the decay warmed up over the first steps (`ema_decay`)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.names = [n for n, p in model.named_parameters() if p.dtype.is_floating_point]
        params = dict(model.named_parameters())
        self.shadow = [params[n].detach().clone().float() for n in self.names]

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Move the average towards the weights after optimizer step `step` (0-based)."""
        params = dict(model.named_parameters())
        current = [params[n].detach().float() for n in self.names]
        torch._foreach_lerp_(self.shadow, current, 1.0 - ema_decay(self.decay, step))

    def full_state(self, model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The model's full state dict with the EMA in place of the parameters."""
        out = dict(model_state)
        for n, t in zip(self.names, self.shadow):
            out[n] = _full(t).to(out[n].dtype) if n in out else _full(t)
        return out

    @torch.no_grad()
    def load(self, state: dict[str, torch.Tensor]) -> None:
        for n, t in zip(self.names, self.shadow):
            src = state[n].to(t.device)
            if hasattr(t, "device_mesh"):  # FSDP2: keep only this rank's shard
                from torch.distributed.tensor import distribute_tensor

                src = distribute_tensor(src.float(), t.device_mesh, t.placements)
            t.copy_(src)


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t
