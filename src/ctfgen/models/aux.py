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
        logits_BLV = self(coarse_BL, label_B)
        if c.mask_to_cluster:
            logits_BLV = self.mask_logits(logits_BLV, coarse_BL)
        # noised positions get target -100 (ignored): masked to the wrong cluster, their loss is inf
        target_BL = codes_BL.masked_fill(~keep_BL, -100)
        loss = F.cross_entropy(logits_BLV.flatten(0, 1), target_BL.flatten(), ignore_index=-100)
        with torch.no_grad():
            hit_BL = (logits_BLV.argmax(-1) == codes_BL) & keep_BL
            acc = hit_BL.sum() / keep_BL.sum().clamp(min=1)
        return loss, {"loss": loss.detach(), "acc": acc}
