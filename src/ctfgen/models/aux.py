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
from . import member_loss as _loss
from . import members as _members
from .config import ModelConfig
from .stage2 import Stage2
from .transformer import Trunk


class AuxTransformer(Stage2, Trunk):
    is_causal = False
    # how member_loss computes the cluster-masked loss: "auto", "loop", "gather" or "masked" (same
    # loss and gradients; see models/member_loss.py). A run setting, not part of the config.
    loss_impl = "auto"

    @classmethod
    def describe(cls, cfg: ModelConfig) -> str:
        return "stage 2 predicts every token's code from the whole coarse map in one pass"

    def __init__(self, cfg: ModelConfig, code_to_coarse: torch.Tensor | None = None):
        if not cfg.spec.member_head:
            raise CtfgenError(f"AuxTransformer is the stage-2 model (a member head), not kind {cfg.kind!r}")
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
        """Logits (B, L, V) over the whole codebook; `member_logits` gives the cluster-restricted ones."""
        return self.output(self.features(coarse_BL, cond_B)).float()

    def features(self, coarse_BL: torch.Tensor, cond_B: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states (B, L, D) of the image positions: the trunk without its head."""
        if self.config.use_class and cond_B is None:
            raise CtfgenError("this stage-2 model was built with use_class=True: pass the class labels")
        h_BLD = self.hidden(self.embed(coarse_BL, cond_B if self.config.use_class else None))
        return h_BLD[:, self.config.n_prefix:]

    def member_logits(self, h_ND: torch.Tensor, coarse_N: torch.Tensor, impl: str = "loop") -> torch.Tensor:
        """(N, M) float32 logits of each position's cluster members (M: the largest cluster).

        h_ND: final hidden states (`features`); coarse_N: each position's cluster. Column j scores
        code `member_tables().members_KM[coarse, j]`; columns past the cluster's size are -inf. Equal
        to the full head masked to the cluster, at N*M*D instead of N*V*D. impl: "loop" or "gather"
        (models/members.py), the same logits. Raises CtfgenError when code_to_coarse is not set.
        """
        if impl not in _members.LOGIT_IMPLS:
            raise CtfgenError(f"member logits: impl {impl!r} is not one of {_members.LOGIT_IMPLS}")
        fn = _members.logits_gather if impl == "gather" else _members.logits_loop
        return fn(h_ND, coarse_N, self.output.weight, self.member_tables())

    # ---- the stage-2 contract (models/stage2.py)

    @property
    def sees_class(self) -> bool:
        return self.config.use_class

    @property
    def stage2_name(self) -> str:
        return self.config.kind

    @property
    def members_only(self) -> bool:
        return self.config.mask_to_cluster

    def check_length(self, L: int) -> None:
        if L != self.config.seq_len:
            raise CtfgenError(f"sequences of {L} tokens, but stage 2 makes {self.config.seq_len}")

    def stage2_log_probs(self, coarse_BL: torch.Tensor, class_B: torch.Tensor | None) -> torch.Tensor:
        """(B, L, M) log-softmax of the member logits; an unmasked model's renormalised over the members."""
        h_BLD = self.features(coarse_BL, class_B)
        logits_NM = self.member_logits(h_BLD.flatten(0, 1), coarse_BL.flatten())
        return torch.log_softmax(logits_NM, dim=-1).view(*coarse_BL.shape, -1)

    def stage2_logits(self, coarse_BL: torch.Tensor, class_B: torch.Tensor | None,
                      guidance_scale: float = 1.0) -> torch.Tensor:
        """(B, L, C) logits: the members' (C = M) when masked to the cluster, else the whole codebook's
        (C = V). guidance_scale != 1 runs the batch doubled, [cond, null class], and takes
        uncond + scale * (cond - uncond)."""
        c = self.config
        guided = guidance_scale != 1.0
        if guided and not c.use_class:
            raise CtfgenError("stage2_guidance_scale: this stage-2 model does not see the class (use_class=False), "
                              "so it cannot be guided; use 1.0")
        n, L = coarse_BL.shape
        if guided:
            coarse_BL = torch.cat([coarse_BL, coarse_BL])
            class_B = torch.cat([class_B, torch.full_like(class_B, c.num_classes)])
        h_BLD = self.features(coarse_BL, class_B)
        if c.mask_to_cluster:
            logits_NC = self.member_logits(h_BLD.flatten(0, 1), coarse_BL.flatten())
        else:
            logits_NC = self.output(h_BLD).float().flatten(0, 1)
        if guided:
            uncond_NC, cond_NC = logits_NC[n * L:], logits_NC[:n * L]
            logits_NC = torch.lerp(uncond_NC, cond_NC, guidance_scale)
            # -inf - -inf is nan at the padding of masked rows (both halves pad the same columns); only
            # there: a NaN elsewhere comes from the model and must stay visible to the sampler's check
            logits_NC = logits_NC.masked_fill(torch.isneginf(uncond_NC) & torch.isneginf(cond_NC), float("-inf"))
        return logits_NC.view(n, L, -1)

    def stage2_codes(self, coarse_N: torch.Tensor, col_N: torch.Tensor) -> torch.Tensor:
        return self.member_tables().codes(coarse_N, col_N) if self.config.mask_to_cluster else col_N

    def stage2_rows(self, B: int, L: int, guidance_scale: float, max_logits: int) -> int:
        """All B when masked; an unmasked model's (B, L, V) logits in chunks of at most `max_logits`."""
        if self.config.mask_to_cluster:
            return max(1, B)
        return max(1, max_logits // (L * self.config.vocab_size * (2 if guidance_scale != 1.0 else 1)))

    # ---- training

    def prepare_batch(self, batch: dict) -> dict:
        """The batch with its coarse-noise draws, "coarse_draws" (B, 2, L) uniforms in [0, 1), when
        training with coarse noise. The trainer's data draws them per sample from (seed, step, sample
        index) (train/data.py), so which positions are noised does not depend on how the global batch
        is split into micro-batches and ranks; a batch without them (made by hand) gets a copy with
        draws from torch's global generator."""
        if self.training and self.config.coarse_noise > 0 and "coarse_draws" not in batch:
            B, L = batch["coarse"].shape
            batch = {**batch, "coarse_draws": torch.rand((B, 2, L), device=batch["coarse"].device)}
        return batch

    def noised_positions(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(noised_BL bool, random coarse labels_BL) of a training batch under coarse noise, from its
        "coarse_draws" (see `prepare_batch`), or None without noise."""
        c = self.config
        if not (self.training and c.coarse_noise > 0):
            return None
        if "coarse_draws" not in batch:
            raise CtfgenError("stage 2 with coarse noise: the batch has no 'coarse_draws' (call prepare_batch)")
        draws_B2L = batch["coarse_draws"]
        noisy_BL = draws_B2L[:, 0] < c.coarse_noise
        # a float32 product may round up to coarse_vocab itself
        random_BL = (draws_B2L[:, 1] * c.coarse_vocab).long().clamp_(max=c.coarse_vocab - 1)
        return noisy_BL, random_BL

    def counted_positions(self, batch: dict) -> torch.Tensor:
        """(B, L) bool: every position but those replaced by coarse noise (they carry no loss)."""
        noise = self.noised_positions(batch)
        return torch.ones_like(batch["coarse"], dtype=torch.bool) if noise is None else ~noise[0]

    def loss_sum(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """(cross-entropy summed over the counted positions, {"acc": their mean accuracy})."""
        c = self.config
        batch = self.prepare_batch(batch)
        codes_BL, coarse_BL, label_B = batch["codes"], batch["coarse"], batch["label"]
        noise = self.noised_positions(batch)
        keep_BL = torch.ones_like(coarse_BL, dtype=torch.bool)
        if self.training and c.use_class:
            label_B = self.cls_embedding.drop(label_B, c.class_dropout_prob)
        if noise is not None:
            coarse_BL = torch.where(noise[0], noise[1], coarse_BL)
            keep_BL = ~noise[0]
        if not c.mask_to_cluster:
            logits_BLV = self(coarse_BL, label_B)
            target_BL = codes_BL.masked_fill(~keep_BL, -100)  # noised positions carry no loss
            total = F.cross_entropy(logits_BLV.flatten(0, 1), target_BL.flatten(), ignore_index=-100, reduction="sum")
            with torch.no_grad():
                acc = ((logits_BLV.argmax(-1) == codes_BL) & keep_BL).sum() / keep_BL.sum().clamp(min=1)
            return total, {"acc": acc}
        h_BLD = self.features(coarse_BL, label_B)
        if noise is not None:  # a data-dependent selection: only when needed
            h_ND, coarse_N, codes_N = h_BLD[keep_BL], coarse_BL[keep_BL], codes_BL[keep_BL]
        else:
            h_ND, coarse_N, codes_N = h_BLD.flatten(0, 1), coarse_BL.flatten(), codes_BL.flatten()
        total, acc = self.member_loss(h_ND, coarse_N, codes_N, reduction="sum")
        return total, {"acc": acc}

    def member_loss(self, h_ND: torch.Tensor, coarse_N: torch.Tensor, codes_N: torch.Tensor,
                    impl: str | None = None, reduction: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy (fp32; "mean" or "sum" over the N positions) and mean accuracy of the
        cluster-masked head.

        h_ND: final hidden states; coarse_N: each position's cluster; codes_N: its true code, a
        member of that cluster. Equal to the masked full head's loss (codes outside the cluster
        have probability 0 there). `impl` (default: `self.loss_impl`) picks the formulation
        (models/member_loss.py): "loop" and "gather" score `member_logits`, "masked" the full head.
        """
        # on the meta device (shape checks) there are no values to derive tables from
        tables = None if self.code_to_coarse.is_meta else self.member_tables()
        impl = _loss.resolve_impl(impl or self.loss_impl, h_ND.device, tables)
        self.last_loss_impl = impl  # what "auto" chose, for reports
        if h_ND.shape[0] == 0:  # every position noised: no loss, but keep the graph connected
            zero = (h_ND.sum() * 0).float()
            return zero, zero.detach()
        if impl == "masked":
            return _loss.loss_masked(h_ND, coarse_N, codes_N, self.output.weight, self.code_to_coarse, reduction)
        if tables is None:
            raise CtfgenError(f"aux loss formulation {impl!r} needs the values of code_to_coarse; "
                              "on the meta device only 'masked' runs")
        return _loss.member_cross_entropy(self.member_logits(h_ND, coarse_N, impl), tables.col_V[codes_N], reduction)
