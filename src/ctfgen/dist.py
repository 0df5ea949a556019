"""torch.distributed helpers: the same code runs as one process or under `torchrun`.

Training (DDP / FSDP), encoding (`ctfgen encode`) and sampling (`ctfgen sample`) share them. A
process is part of a distributed run when torchrun's environment variables (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT) are set; the command joins the process group
(`init_distributed`) and library code that only takes part in a launch reads it (`joined_group`).
CUDA runs use NCCL with one GPU per local rank; CPU runs use gloo, which is also what the tests use.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .errors import CtfgenError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1 or (dist.is_available() and dist.is_initialized())

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CtfgenError(f"device {name!r} requested but CUDA is not available; use --device cpu")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    return dev


def device_name(device: torch.device) -> str:
    """What the device is, for reports: the GPU's name, or the CPU and torch's thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun; otherwise a single-process DistInfo."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo(device=resolve_device(device))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    # A process group even for one process: a one-GPU torchrun then runs the same DDP / FSDP code
    # as eight (the cheapest check of that code, `ctfgen bench gpu`).
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world, **kwargs)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def joined_group() -> DistInfo:
    """Rank and world size of the process group this process has joined (by `init_distributed` or
    its caller), or a one-process DistInfo outside any. For library code that takes part in a launch
    without owning it; `device` is not known here and stays at its default (cpu). Under torchrun
    with more than one process and no group joined, a CtfgenError says so."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size())
    launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if launched > 1:
        # every process would do the whole job and write the same files at once
        raise CtfgenError(f"started by torchrun with {launched} processes (WORLD_SIZE), but this process has not "
                          "joined their process group: call ctfgen.dist.init_distributed() first (the ctfgen "
                          "commands do), or run a single process")
    return DistInfo()


def shutdown(info: DistInfo, *, finished: bool = True) -> None:
    """Leave the process group. `finished`: every rank got here without an error, so they first wait
    for each other: a gloo rank that tears the group down while another still has work in flight can
    abort the process at exit ("terminate called without an active exception", SIGABRT; seen in the
    suite's two-process CPU runs under load). After an error no barrier: the other ranks may never
    reach it."""
    if dist.is_available() and dist.is_initialized():
        if finished and info.world_size > 1:
            dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def leaving_group(info: DistInfo, *, owns: bool = True):
    """`with leaving_group(info):` runs the block, then leaves the process group (when `owns`): with
    the ranks' barrier when the block finished, without it when it raised (see `shutdown`)."""
    try:
        yield info
    except BaseException:
        if owns:
            shutdown(info, finished=False)
        raise
    if owns:
        shutdown(info)


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier()


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The sum of `values` over the ranks (a copy; `values` itself when there is one rank)."""
    if info.world_size > 1:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_reduce_mean(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    return all_reduce_sum(values, info) / info.world_size if info.world_size > 1 else values


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """One object per rank, in rank order (small ones: the RNG states a checkpoint saves, sampled codes)."""
    if info.world_size == 1:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's value everywhere (e.g. whether to resume, decided by the rank that reads the files)."""
    if info.world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def no_sync(model: torch.nn.Module, skip: bool):
    """DDP/FSDP's no_sync for intermediate micro-steps, so gradients are reduced once per step."""
    if skip and hasattr(model, "no_sync"):
        return model.no_sync()
    return contextlib.nullcontext()
