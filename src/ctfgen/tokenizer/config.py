"""The tokenizer's configs: the VQ model (`VQConfig`, stored in every tokenizer folder) and a
training run (`TokenizerTrainConfig`). Torch-free, so the command line reads them without torch."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..config import check_fields, option
from ..data import DataConfig
from ..errors import CtfgenError


@dataclass
class VQConfig:
    codebook_size: int = option(16384, "codebook size", min=2, max=65536)  # codes are stored as uint16
    codebook_dim: int = option(8, "code dimension", min=1)
    channels: int = 3  # image channels in and out (1 for grayscale data)
    ch: int = option(128, "base channel count", min=1)
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
        return check_fields(self, where="tokenizer config")


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
# every name a tokenizer `--preset` takes
PRESET_NAMES = (*PRESETS, *LLAMAGEN_NAMES)


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
    steps: int = option(3000, "training steps", min=1)
    minutes: float = option(0.0, "stop after this much wall time", min=0.0, note="0 = no limit")
    # small batches: more updates per image seen, which is what a CPU budget limits
    batch_size: int = option(32, "images per step", min=1)
    lr: float = option(1e-3, "peak learning rate, Adam", min=0.0, min_open=True)
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05  # cosine decay from lr to lr * this, reached at the last step
    flip: bool = option(True, "random horizontal flips while training (the tokenizer learns to reconstruct mirrored "
                              "images too; what the generator learns is set by `encode --views`)")
    restart_every: int = 50  # steps between dead-code restarts (0: off)
    gan_weight: float = option(0.0, "adversarial (PatchGAN hinge) loss weight", min=0.0, note="0 = off")
    gan_start: int = option(2000, "step at which the adversarial loss starts", min=0)
    # needs local weights, see lpips.py
    lpips_weight: float = option(0.0, "perceptual (LPIPS) loss weight", min=0.0, note="0 = off")
    lpips_vgg: str | None = option(None, "local VGG16 weights in torchvision's layout (e.g. vgg16-397923af.pth)")
    lpips_lin: str | None = option(None, "local LPIPS linear heads (LlamaGen's/taming's vgg.pth)")
    seed: int = option(0, "seed of the weights, batches and flips", min=0, max=2**63 - 1)
    eval_limit: int = option(0, "test images for the final report", min=0, note="0 = all")
