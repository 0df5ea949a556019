"""The tokenizer's configs: the VQ model (`VQConfig`, stored in every tokenizer folder) and a
training run (`TokenizerTrainConfig`). Torch-free, so the command line reads them without torch."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..data import DataConfig
from ..errors import CtfgenError


@dataclass
class VQConfig:
    codebook_size: int = 16384
    codebook_dim: int = 8
    channels: int = 3  # image channels in and out (1 for grayscale data)
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # one level per entry; each but the last halves H and W
    num_res_blocks: int = 2  # the decoder uses one more per level, as LlamaGen does
    z_channels: int = 256
    norm_groups: int = 32
    dropout: float = 0.0
    commit_beta: float = 0.25
    resolution: int = 256  # the image size it is meant for (tokens = (resolution / downsample)^2)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def grid(self) -> int:
        return self.resolution // self.downsample

    def validate(self) -> "VQConfig":
        if self.resolution % self.downsample:
            raise CtfgenError(f"tokenizer config: resolution {self.resolution} is not divisible by the downsample factor {self.downsample}")
        for c in {self.ch * m for m in self.ch_mult} | {self.z_channels}:
            if c % self.norm_groups:
                raise CtfgenError(f"tokenizer config: channel count {c} is not divisible by norm_groups {self.norm_groups}")
        if self.codebook_size < 2 or self.codebook_dim < 1:
            raise CtfgenError(f"tokenizer config: codebook_size {self.codebook_size} / codebook_dim {self.codebook_dim} out of range")
        return self


PRESETS = {
    # Fashion-MNIST at 32x32 -> 8x8 = 64 tokens; the codebook is deliberately large for the data,
    # as 16384 is for ImageNet, so that clustering it into coarse labels is meaningful. Channels are
    # few at 32x32 and grow towards 8x8, where convolutions are cheap: it trains on a 2-core CPU.
    "fmnist": VQConfig(codebook_size=4096, codebook_dim=8, channels=1, ch=16, ch_mult=(1, 2, 4),
                       num_res_blocks=1, z_channels=64, norm_groups=16, resolution=32),
    # LlamaGen VQ-16 exactly: 256x256 -> 16x16 tokens, codebook 16384 x 8.
    "vq16": VQConfig(),
    # LlamaGen VQ-8: the same with one level less, 256x256 -> 32x32 tokens.
    "vq8": VQConfig(ch_mult=(1, 2, 2, 4)),
}
# LlamaGen's own names (its VQ_models registry, the `vq_model` its checkpoints record)
LLAMAGEN_NAMES = {"VQ-16": "vq16", "VQ-8": "vq8"}


def vq_preset(name: str, **overrides) -> VQConfig:
    name = LLAMAGEN_NAMES.get(name, name)
    if name not in PRESETS:
        raise CtfgenError(f"unknown tokenizer preset '{name}'; choose one of {sorted(PRESETS)} "
                          f"(or LlamaGen's {sorted(LLAMAGEN_NAMES)})")
    return replace(PRESETS[name], **overrides).validate()


@dataclass
class TokenizerTrainConfig:
    vq: VQConfig = field(default_factory=VQConfig)
    data: DataConfig = field(default_factory=DataConfig)
    steps: int = 3000
    minutes: float = 0.0  # stop early when this much wall time has passed (0: no limit)
    batch_size: int = 32  # small batches: more updates per image seen, which is what a CPU budget limits
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05  # cosine decay from lr to lr * this, reached at the last step
    flip: bool = True  # random horizontal flips
    restart_every: int = 50  # steps between dead-code restarts (0: off)
    gan_weight: float = 0.0  # adversarial loss weight (0: off)
    gan_start: int = 2000  # step at which the adversary starts
    lpips_weight: float = 0.0  # perceptual loss weight (0: off); needs local weights, see lpips.py
    lpips_vgg: str | None = None  # VGG16 weights, torchvision layout
    lpips_lin: str | None = None  # LPIPS linear heads (LlamaGen's / taming's vgg.pth)
    seed: int = 0
    eval_limit: int = 0  # test images used for the final report (0: the whole split)
