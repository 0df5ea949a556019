"""Stage 2 of CTF: a bidirectional transformer that reads the whole coarse-label sequence (and,
by default, the class as a prefix token) and predicts every position's fine label (codebook index)
in one forward pass.

Choices the paper leaves open, as switches on the config:
- `use_class`: prefix the class token (default) or not;
- `mask_to_cluster`: fine logits restricted to the codes in each position's coarse cluster
  (default), or over the whole codebook;
- `coarse_noise`: in training, replace this fraction of coarse inputs by random labels so the
  model copes with imperfect stage-1 samples. Replaced positions serve as corrupted context only
  and carry no loss, since their true fine label lies outside the cluster they show.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import CtfgenError
from .config import ModelConfig
from .transformer import Trunk


def cluster_blocks(labels_N: torch.Tensor, K: int) -> tuple[torch.Tensor, list[int]]:
    """The order that sorts `labels_N` into contiguous blocks by cluster (stable), and each block's
    size: how stage 2 groups positions (and head rows) so that each cluster is one small matmul."""
    return torch.argsort(labels_N, stable=True), torch.bincount(labels_N, minlength=K).tolist()


class AuxTransformer(Trunk):
    is_causal = False

    def __init__(self, cfg: ModelConfig, code_to_coarse: torch.Tensor | None = None):
        if cfg.kind != "aux":
            raise CtfgenError(f"AuxTransformer is the stage-2 model (kind 'aux'), not {cfg.kind!r}")
        super().__init__(cfg)
        # Saved in the state_dict: a checkpoint then carries the clustering it was trained with.
        # -1 marks "not set yet" (filled by load_state_dict when built from a config alone).
        self.register_buffer("code_to_coarse", torch.full((cfg.vocab_size,), -1, dtype=torch.long))
        if code_to_coarse is not None:
            self.set_code_to_coarse(code_to_coarse)

    def set_code_to_coarse(self, code_to_coarse) -> None:
        c = self.config
        m = torch.as_tensor(code_to_coarse).long()
        if m.shape != (c.vocab_size,):
            raise CtfgenError(f"code_to_coarse: expected shape ({c.vocab_size},), got {tuple(m.shape)}")
        if m.device.type != "meta" and len(m) and (m.min() < 0 or m.max() >= c.coarse_vocab):
            raise CtfgenError(f"code_to_coarse: values must lie in [0, {c.coarse_vocab}), "
                              f"got [{int(m.min())}, {int(m.max())}]")
        with torch.no_grad():
            self.code_to_coarse.copy_(m)

    def forward(self, coarse_BL: torch.Tensor, cond_B: torch.Tensor | None = None) -> torch.Tensor:
        """Unmasked fine logits (B, L, V); see `fine_logits` for the masked ones."""
        if self.config.use_class and cond_B is None:
            raise CtfgenError("this stage-2 model was built with use_class=True: pass the class labels")
        return self.run(self.embed(coarse_BL, cond_B if self.config.use_class else None)
                        )[:, self.config.n_prefix:]

    def mask_logits(self, logits_BLV: torch.Tensor, coarse_BL: torch.Tensor) -> torch.Tensor:
        """-inf at every code outside the position's coarse cluster."""
        if self.code_to_coarse.device.type != "meta" and int(self.code_to_coarse.min()) < 0:
            raise CtfgenError("code_to_coarse is not set: pass it to build_model or load a checkpoint")
        outside_BLV = self.code_to_coarse[None, None, :] != coarse_BL[..., None]
        return logits_BLV.masked_fill(outside_BLV, float("-inf"))

    def fine_logits(self, coarse_BL: torch.Tensor, cond_B: torch.Tensor | None = None) -> torch.Tensor:
        """What the sampler draws from: forward, masked to the clusters when the config says so."""
        logits_BLV = self(coarse_BL, cond_B)
        return self.mask_logits(logits_BLV, coarse_BL) if self.config.mask_to_cluster else logits_BLV

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        c = self.config
        codes_BL, coarse_BL, label_B = batch["codes"], batch["coarse"], batch["label"]
        keep_BL = torch.ones_like(coarse_BL, dtype=torch.bool)
        if self.training:
            if c.use_class:
                label_B = self.cls_embedding.drop(label_B, c.class_dropout_prob)
            if c.coarse_noise > 0:
                noisy_BL = torch.rand(coarse_BL.shape, device=coarse_BL.device) < c.coarse_noise
                random_BL = torch.randint_like(coarse_BL, c.coarse_vocab)
                coarse_BL = torch.where(noisy_BL, random_BL, coarse_BL)
                keep_BL = ~noisy_BL
        if not c.mask_to_cluster:
            logits_BLV = self(coarse_BL, label_B)
            target_BL = codes_BL.masked_fill(~keep_BL, -100)  # noised positions carry no loss
            loss = F.cross_entropy(logits_BLV.flatten(0, 1), target_BL.flatten(), ignore_index=-100)
            with torch.no_grad():
                acc = ((logits_BLV.argmax(-1) == codes_BL) & keep_BL).sum() / keep_BL.sum().clamp(min=1)
            return loss, {"loss": loss.detach(), "acc": acc}
        h_ND = self.features(coarse_BL, label_B)[keep_BL]
        loss, acc = self.member_loss(h_ND, coarse_BL[keep_BL], codes_BL[keep_BL])
        return loss, {"loss": loss.detach(), "acc": acc}

    def features(self, coarse_BL: torch.Tensor, cond_B: torch.Tensor | None) -> torch.Tensor:
        """Final hidden states (B, L, D) of the image positions: the trunk without its head."""
        c = self.config
        h_BLD = self.embed(coarse_BL, cond_B if c.use_class else None)
        S = h_BLD.shape[1]
        for layer in self.layers:
            h_BLD = layer(h_BLD, self.rope_cos[:S], self.rope_sin[:S], is_causal=False)
        return self.norm(h_BLD)[:, c.n_prefix:]

    def member_loss(self, h_ND: torch.Tensor, coarse_N: torch.Tensor, codes_N: torch.Tensor):
        """Cross-entropy of the cluster-masked head, scoring only each position's cluster members.

        Equal to the masked full head's loss (codes outside the cluster have probability 0 there),
        at N*V/K instead of N*V head cost: with K=128 the full head was most of a tiny model's step.
        Positions and head rows are sorted by cluster and split into contiguous blocks, whose
        backward is one concatenation rather than a full-size scatter per cluster.
        """
        if int(self.code_to_coarse.min()) < 0:
            raise CtfgenError("code_to_coarse is not set: pass it to build_model or load a checkpoint")
        K = self.config.coarse_vocab
        code_order_V, members_per_K = cluster_blocks(self.code_to_coarse, K)
        # column of each code inside its cluster's block
        col_V = torch.empty_like(code_order_V)
        starts_K = torch.cumsum(torch.tensor([0] + members_per_K[:-1], device=col_V.device), 0)
        col_V[code_order_V] = torch.arange(len(code_order_V), device=col_V.device) - starts_K[self.code_to_coarse[code_order_V]]
        w_parts = self.output.weight[code_order_V].split(members_per_K)

        pos_order_N, rows_per_K = cluster_blocks(coarse_N, K)
        h_parts = h_ND[pos_order_N].split(rows_per_K)
        t_parts = col_V[codes_N[pos_order_N]].split(rows_per_K)
        total = h_ND.new_zeros((), dtype=torch.float32)
        hits = torch.zeros((), dtype=torch.long, device=h_ND.device)
        for k in range(K):
            if rows_per_K[k] == 0:
                continue
            logits_nM = (h_parts[k] @ w_parts[k].T).float()
            total = total + F.cross_entropy(logits_nM, t_parts[k], reduction="sum")
            with torch.no_grad():
                hits += (logits_nM.argmax(-1) == t_parts[k]).sum()
        n = max(len(coarse_N), 1)
        return total / n, hits.float() / n
