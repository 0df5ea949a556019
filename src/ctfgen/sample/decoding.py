"""Compiled decoding: the per-token step of stage 1 / the baseline without Python and launch overhead.

A decode step at batch 128 is a few hundred small kernels; on a GPU their launches, not their math,
set the speed. Both modes run `GPT.decode_step_static` (static shapes: the whole KV cache attended
with a mask, the position a device tensor), so one graph serves all 256 positions:

- "cudagraph": the step captured once into a CUDA graph per KV cache and batch, then replayed
  (no compiler; capture costs about two steps);
- "inductor": torch.compile(mode="reduce-overhead", fullgraph=True): fused kernels, replayed from
  CUDA graphs on a GPU (the first batch pays the compile, tens of seconds for an XL model).
"""
from __future__ import annotations

from typing import Callable

import torch

from ..errors import CtfgenError

MODES = ("cudagraph", "inductor")


def resolve_mode(compile: bool | str | None) -> str | None:
    """None (eager), "cudagraph" or "inductor" from a pipeline's `compile` (True = "inductor")."""
    if compile is None or compile is False:
        return None
    if compile is True:
        return "inductor"
    if compile not in MODES:
        raise CtfgenError(f"compile must be one of {MODES} (or True for inductor), got {compile!r}")
    return compile


def make_step_fn(model, mode: str | None) -> Callable | None:
    """step_fn(tokens_B, pos) for generate_tokens, or None for the model's own decode_step."""
    if mode is None:
        return None
    device = model.tok_embeddings.weight.device
    if mode == "cudagraph":
        if device.type != "cuda":
            raise CtfgenError(f"compile 'cudagraph' needs a CUDA device; the model is on {device}")
        return GraphedDecoder(model)
    compiled = torch.compile(model.decode_step_static, mode="reduce-overhead", fullgraph=True)
    pos_t = torch.zeros((), dtype=torch.long, device=device)

    def step(tokens_B: torch.Tensor, pos: int) -> torch.Tensor:
        pos_t.fill_(pos)
        # the compiled graph's output lives in its memory pool, overwritten by the next replay
        return compiled(tokens_B, pos_t).clone()
    return step


class GraphedDecoder:
    """`model.decode_step_static` replayed from a CUDA graph, captured again whenever the KV cache
    is replaced (setup_cache) or the batch changes: the graph holds the cache's addresses."""

    def __init__(self, model):
        self.model = model
        self._key: tuple | None = None
        self._graph = None

    def __call__(self, tokens_B: torch.Tensor, pos: int) -> torch.Tensor:
        # the graph is valid while every tensor it reads sits where it was captured
        attns = [layer.attention for layer in self.model.layers]
        key = (tokens_B.shape[0], tuple(attns[0].k_cache.shape), attns[0].k_cache.dtype,
               self.model.output.weight.data_ptr(), self.model.tok_embeddings.weight.data_ptr(),
               *(a.k_cache.data_ptr() for a in attns), *(a.v_cache.data_ptr() for a in attns))
        if key != self._key:
            self._capture(tokens_B, pos)
            self._key = key
        self._tokens.copy_(tokens_B)
        self._pos.fill_(pos)
        self._graph.replay()
        return self._out.clone()

    def _capture(self, tokens_B: torch.Tensor, pos: int) -> None:
        self._graph = None  # release the previous graph's memory pool first
        device = tokens_B.device
        self._tokens = tokens_B.clone()
        # warm-up and capture write this step's keys/values at this step's slot: the real ones
        self._pos = torch.full((), pos, dtype=torch.long, device=device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # lazy initialisation (cuBLAS workspaces) outside the capture
            for _ in range(2):
                self.model.decode_step_static(self._tokens, self._pos)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._out = self.model.decode_step_static(self._tokens, self._pos)
        self._graph = graph
