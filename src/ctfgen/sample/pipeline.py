"""Class -> image pipelines with the diffusers calling convention:

    pipe = CTFPipeline.from_pretrained("runs/pipe")          # or BaselinePipeline
    images = pipe(class_labels=[0, 1], guidance_scale=2.0, temperature=1.1, seed=0)  # list[PIL.Image]

A pipeline folder (kind "pipeline", pipeline_folder.py; written by `save_pretrained` / `ctfgen pipeline
make`) copies or references the tokenizer and model folders and records their fingerprints; loading refuses folders
that changed since, and components that do not belong together (another tokenizer, another coarse map).
A pipeline built in memory (`CTFPipeline(tokenizer, ar=..., aux=...)`) writes its component folders
from its modules, so it loads back like any other:

    CTFPipeline(tok, ar=ar, aux=aux).to(dtype=torch.bfloat16).save_pretrained("runs/pipe")
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..artifacts import Artifact
from ..config import check_class_ids
from ..dist import all_gather_objects, joined_group
from ..errors import ArtifactError, CtfgenError
from ..models.config import resolve
from ..tokenizer.artifact import TokenizerArtifact
from .pipeline_folder import (ROLES, STAGE2_ROLE, PipelineFolder, check_components, load_component,
                              make_pipeline, read_component_manifest)
from .sampler import generate_tokens, sample_fine, sample_seed, sample_uniforms
from .settings import SamplingConfig

# torch.profiler ranges the pipeline opens around its stages ("ctfgen/stage1", "ctfgen/stage2",
# "ctfgen/decode"); their seconds come back in `Samples.timings` (benchmarks/speed.py reads both)
RANGE = "ctfgen/"


@dataclass
class Samples:
    """What a generation run made, in sample-index order."""

    images: np.ndarray  # uint8 (N, H, W, C), C = 1 (grey) or 3
    codes: np.ndarray  # (N, L) codebook indices
    labels: np.ndarray  # (N,) class of each sample
    seeds: list[int]  # per-sample seeds (sample_seed(seed, index))
    settings: SamplingConfig
    coarse: np.ndarray | None = None  # (N, L) CTF: stage 1's coarse labels (the baseline has none)
    # seconds per stage of this process's share of the run, summed over batches ("stage1_s",
    # "stage2_s" for CTF, "decode_s"): the `RANGE` ranges, synchronised on a GPU
    timings: dict[str, float] = field(default_factory=dict)


def artifact_of(module, cls: type | None = None) -> Artifact:
    """An artifact itself, or a bare module as an artifact of `cls` (default: its class's ARTIFACT,
    "package.module:Class") made in memory, with no parents: provenance comes only with artifacts
    (what `Kind.load` returns), so pass those to keep what a folder was made from."""
    if isinstance(module, Artifact):
        return module
    return (cls or resolve(type(module).ARTIFACT)).of(module)


@contextlib.contextmanager
def timed(stage: str, timings: dict[str, float] | None, device: torch.device | None = None):
    """A torch.profiler range RANGE + stage; with `timings`, add its seconds to timings[stage + "_s"]
    (after synchronising `device` when it is a GPU: the kernels' time, not their launches')."""
    from torch.profiler import record_function

    with record_function(RANGE + stage):
        t0 = time.perf_counter()
        yield
        if timings is not None:
            if device is not None:
                _sync(device)
            timings[stage + "_s"] = timings.get(stage + "_s", 0.0) + time.perf_counter() - t0


# ---------------------------------------------------------------- pipelines

class Pipeline:
    """What CTFPipeline and BaselinePipeline share: loading and saving, settings, decoding, and
    `generate` / `__call__` over the subclass's `sample_codes`."""

    type = ""

    def __init__(self, tokenizer, models: dict[str, Any], *, sampling: SamplingConfig | None = None,
                 fingerprints: dict[str, str] | None = None, folders: dict[str, Path] | None = None,
                 dtype: torch.dtype | None = None, compile: bool | str = False):
        """tokenizer and models (by role): modules, or their artifacts (TokenizerArtifact, TrainedModel,
        a stage-2 prior's, ...) as loaded from folders; `artifacts` keeps them, `models` their modules."""
        self.artifacts: dict[str, Artifact] = {role: artifact_of(m) for role, m in models.items()}
        if tokenizer is not None:
            self.artifacts = {"tokenizer": artifact_of(tokenizer, TokenizerArtifact), **self.artifacts}
        self.tokenizer = self.artifacts["tokenizer"].module.eval() if tokenizer is not None else None  # None: codes only
        self.models = {role: self.artifacts[role].module.eval() for role in models}
        if dtype is not None:
            self.to(dtype=dtype)
        self.sampling = (sampling or self.default_sampling()).check()
        self.fingerprints = dict(fingerprints or {})
        self.folders = {**{r: a.folder for r, a in self.artifacts.items() if a.folder is not None}, **(folders or {})}
        from .decoding import resolve_mode

        resolve_mode(compile)  # a bad value is refused here, not at the first batch
        self.compile = compile
        self._step_fn = None
        first = next(iter(self.models.values())).config
        self.num_classes, self.seq_len = first.num_classes, first.seq_len

    @staticmethod
    def default_sampling() -> SamplingConfig:
        return SamplingConfig()

    @property
    def coarse_to_fine(self) -> bool:
        """Whether the pipeline has a stage 2 (CTF: coarse labels, then codes) or not (the baseline)."""
        return STAGE2_ROLE in ROLES[self.type]

    @property
    def device(self) -> torch.device:
        return next(iter(self.models.values())).tok_embeddings.weight.device

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "Pipeline":
        """Move the models and the tokenizer to `device`; cast the floating-point tensors of the models
        with weights to `dtype` (the tokenizer, and a stage 2 of fixed tables such as a prior's
        log-probabilities, stay in float32). Returns self."""
        for m in self.models.values():
            m.to(device=device, dtype=dtype if any(True for _ in m.parameters()) else None)
        if device is not None and self.tokenizer is not None:
            self.tokenizer.to(device)
        self._step_fn = None  # a compiled step belongs to the old weights
        return self

    # ---- loading and saving

    @classmethod
    def from_folders(cls, *, tokenizer: str | Path, device: str | torch.device = "cpu", ema: bool | None = None,
                     dtype: torch.dtype | None = None, compile: bool = False,
                     sampling: SamplingConfig | None = None, **model_dirs: str | Path):
        """Load the tokenizer and model folders directly (ar= and aux=, or baseline=); aux= may be a
        stage-2 folder of any kind (a trained model, a prior: models/config.py STAGE2_FOLDERS)."""
        roles = ROLES[cls.type]
        if sorted(model_dirs) != sorted(roles):
            raise CtfgenError(f"{cls.__name__}.from_folders needs the folders {list(roles)}, got {sorted(model_dirs)}")
        dirs = {role: Path(model_dirs[role]) for role in roles}
        manifests = {role: read_component_manifest(role, d) for role, d in dirs.items()}
        fps = check_components(TokenizerArtifact.read_manifest(tokenizer), manifests)
        models = {role: load_component(role, d, device, ema=ema) for role, d in dirs.items()}
        return cls(TokenizerArtifact.load(tokenizer, device), models=models, sampling=sampling, fingerprints=fps,
                   dtype=dtype, compile=compile)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device = "cpu", ema: bool | None = None,
                        dtype: torch.dtype | None = None, compile: bool = False):
        """Load a pipeline folder, or a Hub repository id "user/name" from the local Hugging Face cache
        (never the network; hub.py); every component must still have the fingerprint recorded in it."""
        return cls._from_folder(PipelineFolder.load(path), device=device, ema=ema, dtype=dtype, compile=compile)

    @classmethod
    def _from_folder(cls, folder: PipelineFolder, **kwargs):
        if folder.config.type != cls.type:
            raise ArtifactError(f"{folder.folder} is a '{folder.config.type}' pipeline; load it with "
                                f"{PIPELINES[folder.config.type].__name__}")
        return cls.from_folders(tokenizer=folder.component("tokenizer"), sampling=folder.config.sampling,
                                **{r: folder.component(r) for r in ROLES[cls.type]}, **kwargs)

    def save_pretrained(self, path: str | Path, *, copy: bool = True, overwrite: bool = False,
                        evaluations: Sequence[Any] = (), license: str | None = None) -> Path:
        """Write a pipeline folder. Loaded from folders: copies (copy=True) or references them, as
        `ctfgen pipeline make` does. Built in memory: writes the tokenizer and model folders from the
        artifacts (weights in their current dtype), each with its manifest and fingerprint. Either way
        with a model card, README.md (model_card.py): `evaluations` are `ctfgen eval` result files of
        this pipeline's samples, `license` a Hub license id."""
        needed = ("tokenizer", *ROLES[self.type])
        card = dict(copy=copy, sampling=self.sampling, overwrite=overwrite, evaluations=evaluations, license=license)
        if all(r in self.folders for r in needed):
            return make_pipeline(path, **card, **{r: self.folders[r] for r in needed})
        if self.tokenizer is None:
            raise CtfgenError("save_pretrained: this pipeline has no tokenizer, so it cannot make a pipeline folder")
        tok = _fresh(self.artifacts["tokenizer"])
        parents = {"tokenizer": tok.fingerprint, **self._made_from()}
        # recorded parents win, so that a model of another tokenizer is refused, not relabelled
        arts = {role: _fresh(self.artifacts[role], {**parents, **self.artifacts[role].made_from}) for role in self.models}
        return make_pipeline(path, tokenizer=tok, **arts, **card)

    def _made_from(self) -> dict[str, str]:
        """What the models were made from besides the tokenizer (CTF: the coarse map)."""
        return {}

    # ---- generation

    def settings(self, **overrides: Any) -> SamplingConfig:
        known = {f.name for f in fields(SamplingConfig)}
        unknown = sorted(k for k in overrides if k not in known)
        if unknown:
            raise CtfgenError(f"unknown sampling setting(s) {unknown}; known: {sorted(known)}")
        return replace(self.sampling, **{k: v for k, v in overrides.items() if v is not None}).check()

    def check_labels(self, labels: Sequence[int], where: str = "class_labels") -> torch.Tensor:
        """(N,) long tensor of `labels`; CtfgenError naming `where` for ids outside [0, num_classes)."""
        labels_N = torch.as_tensor(list(labels), dtype=torch.long)
        check_class_ids(labels_N, self.num_classes, where=where)
        return labels_N

    def sample_codes(self, labels_B: torch.Tensor, seeds: list[int], s: SamplingConfig,
                     progress: bool = False) -> torch.Tensor:
        """One batch of (B, L) codes; sample b draws its randomness from seeds[b] only."""
        return self.sample_tokens(labels_B, seeds, s, progress)[0]

    def sample_tokens(self, labels_B: torch.Tensor, seeds: list[int], s: SamplingConfig, progress: bool = False,
                      timings: dict[str, float] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(codes (B, L), CTF's coarse labels (B, L) or None): `sample_codes` with stage 1's output.
        `timings`: a dict that receives each stage's seconds (added to what it holds; see `timed`)."""
        raise NotImplementedError

    def clear_caches(self) -> None:
        """Free the causal models' KV caches (a run sets them up for its batch)."""
        for m in self.models.values():
            if hasattr(m, "clear_cache"):
                m.clear_cache()

    def _decode_step(self, model):
        """The compiled decoding step (sample/decoding.py) when `compile` asks for one, else None."""
        from .decoding import make_step_fn, resolve_mode

        mode = resolve_mode(self.compile)
        if mode is None:
            return None
        if self._step_fn is None:
            self._step_fn = make_step_fn(model, mode)
        return self._step_fn

    @torch.inference_mode()
    def decode(self, codes_NL: torch.Tensor, batch_size: int = 64) -> np.ndarray:
        from ..tokenizer.report import to_uint8

        if self.tokenizer is None:
            raise CtfgenError("this pipeline has no tokenizer: it can sample codes but not decode images")
        tok_dev = next(self.tokenizer.parameters()).device
        out = [to_uint8(self.tokenizer.decode_codes(codes_NL[i:i + batch_size].to(tok_dev)))
               for i in range(0, len(codes_NL), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, 1, 1, 1), np.uint8)

    def generate(self, labels: Sequence[int], *, seed: int = 0, batch_size: int = 64, progress: bool = False,
                 **settings: Any) -> Samples:
        """Samples for `labels` (sample i has class labels[i] and seed sample_seed(seed, i)).

        Under torchrun every rank makes the indices i = rank, rank + world, ... and all ranks get the
        whole result in index order; the images are the same for any batch size and process count.
        """
        s = self.settings(**settings)
        if batch_size < 1:
            raise CtfgenError(f"batch_size must be >= 1, got {batch_size}")
        labels_N = self.check_labels(labels)
        N = len(labels_N)
        group = joined_group()
        rank, world = group.rank, group.world_size
        mine = list(range(rank, N, world))
        seeds = [sample_seed(seed, i) for i in range(N)]
        codes, coarse, images, timings = [], [], [], {}
        batches = range(0, len(mine), batch_size)
        if progress and len(batches) > 1:
            from ..progress import progress_bar

            batches = progress_bar(batches, desc=f"{self.type} batches", show=(rank == 0))
        try:
            for b in batches:
                idx = mine[b:b + batch_size]
                codes_BL, coarse_BL = self.sample_tokens(labels_N[idx], [seeds[i] for i in idx], s,
                                                         progress and rank == 0, timings=timings)
                codes.append(codes_BL.cpu())
                if coarse_BL is not None:
                    coarse.append(coarse_BL.cpu())
                with timed("decode", timings, self.device):
                    images.append(self.decode(codes_BL))
        finally:
            self.clear_caches()
        L = self.seq_len
        codes_np = torch.cat(codes).numpy() if codes else np.zeros((0, L), np.int64)
        coarse_np = (torch.cat(coarse).numpy() if coarse else np.zeros((0, L), np.int64)) if self.coarse_to_fine else None
        images_np = np.concatenate(images) if images else None
        if world > 1:
            codes_np, coarse_np, images_np = _in_index_order(
                all_gather_objects((mine, codes_np, coarse_np, images_np), group), N)
        if images_np is None:
            images_np = np.zeros((0, 1, 1, 1), np.uint8)
        return Samples(images=images_np, codes=codes_np, labels=labels_N.numpy(), seeds=seeds, settings=s,
                       coarse=coarse_np, timings=timings)

    # ---- editing (sample/editing.py: what each edit keeps, and what the causal model cannot see)

    def vary(self, source, *, n: int = 4, labels=None, seed: int = 0, batch_size: int = 64, progress: bool = False,
             **settings: Any):
        """Detail variations (CTF only): n images per source image that keep its coarse-label map and
        redraw stage 2 (`stage2_temperature` sets how far they stray). `source`: `Samples`, an
        `edit_sources.EditSource`, codes (N, L) or uint8 images (N, H, W, C) / PIL images / image paths
        with `labels`. Returns `editing.Edits`; edit m comes from source m // n with seed
        sample_seed(seed, m). Raises CtfgenError on the baseline and on bad input."""
        from .editing import edit

        return edit(self, source, kind="vary", n=n, labels=labels, seed=seed, batch_size=batch_size,
                    progress=progress, **settings)

    def complete(self, source, *, keep_tokens: int, n: int = 1, labels=None, seed: int = 0, batch_size: int = 64,
                 gibbs_sweeps: int = 0, progress: bool = False, **settings: Any):
        """Keep the first `keep_tokens` tokens (0..L, raster order: whole rows are multiples of the
        grid side) of each source image and draw the rest, n times. The kept prefix is fed through
        the KV cache; kept codes stay exactly. Same sources, seeds and result as `vary`; completing
        from 0 tokens gives `generate`'s samples for the same seed."""
        from .editing import edit

        return edit(self, source, kind="complete", n=n, labels=labels, keep_tokens=keep_tokens, seed=seed,
                    batch_size=batch_size, gibbs_sweeps=gibbs_sweeps, progress=progress, **settings)

    def inpaint(self, source, *, region: Sequence[int], mode: str = "layout", gibbs_sweeps: int = 0, n: int = 1,
                labels=None, seed: int = 0, batch_size: int = 64, progress: bool = False, **settings: Any):
        """Redraw the tokens inside `region` = (top, left, height, width), in token-grid units; every
        code outside stays exactly. mode "detail" (CTF): stage 2 redraws the region's fine tokens under
        the kept coarse labels. mode "layout": the causal model redraws the region in raster order with
        the outside teacher-forced; it does not see the kept tokens after each position, which
        `gibbs_sweeps` sweeps of the exact full conditional then take into account (cost: |region| x
        vocabulary sequence forward passes per sweep and image; sample/gibbs.py)."""
        from .editing import edit

        return edit(self, source, kind="inpaint", n=n, labels=labels, region=region, mode=mode,
                    gibbs_sweeps=gibbs_sweeps, seed=seed, batch_size=batch_size, progress=progress, **settings)

    def __call__(self, class_labels: Sequence[int] | int | None = None, *, num_images_per_class: int = 1,
                 seed: int = 0, batch_size: int = 64, output_type: str = "pil", progress: bool = False,
                 **settings: Any):
        """Images for each class in `class_labels` (default: every class), num_images_per_class each,
        class by class. Settings: guidance_scale, temperature, top_k, top_p, ... (see SamplingConfig)."""
        if output_type not in ("pil", "np"):
            raise CtfgenError(f"output_type must be 'pil' or 'np', got {output_type!r}")
        if num_images_per_class < 0:
            raise CtfgenError(f"num_images_per_class must be >= 0, got {num_images_per_class}")
        if class_labels is None:
            class_labels = range(self.num_classes)
        elif isinstance(class_labels, int):
            class_labels = [class_labels]
        labels = [int(c) for c in class_labels for _ in range(num_images_per_class)]
        out = self.generate(labels, seed=seed, batch_size=batch_size, progress=progress, **settings)
        return to_pil(out.images) if output_type == "pil" else out.images


class CTFPipeline(Pipeline):
    """Coarse-to-fine: stage 1 samples coarse labels, stage 2 their codes, the tokenizer decodes."""

    type = "ctf"

    def __init__(self, tokenizer, ar=None, aux=None, **kwargs):
        models = kwargs.pop("models", None) or {"ar": ar, "aux": aux}
        super().__init__(tokenizer, models, **kwargs)

    def _made_from(self) -> dict[str, str]:
        # the coarse map both stages recorded when they were loaded from folders; else one that names
        # stage 2's own table (code_to_coarse), which is what ties the two stages together
        from ..cluster import CoarseMap

        recorded = {self.artifacts[role].made_from.get("coarse_map") for role in ROLES[self.type]}
        if len(recorded) == 1 and None not in recorded:
            return {"coarse_map": recorded.pop()}
        stage2 = self.models[STAGE2_ROLE]
        return {"coarse_map": CoarseMap.from_labels(stage2.code_to_coarse.cpu(), k=stage2.config.coarse_vocab).fingerprint}

    def sample_tokens(self, labels_B, seeds, s, progress=False, timings=None):
        ar = self.models["ar"]
        L = self.seq_len
        self.models[STAGE2_ROLE].check_guidance(s.stage2_guidance_scale)
        u_BN = sample_uniforms(seeds, 2 * L)  # stage 1 uses the first L, stage 2 the rest
        with timed("stage1", timings, self.device):
            coarse_BL = generate_tokens(ar, labels_B, u_BN[:, :L], s, step_fn=self._decode_step(ar), progress=progress)
        with timed("stage2", timings, self.device):
            codes_BL = self.stage2(coarse_BL, labels_B, u_BN[:, L:], s)
        return codes_BL, coarse_BL

    def stage2(self, coarse_BL: torch.Tensor, labels_B: torch.Tensor, u_BL: torch.Tensor,
               s: SamplingConfig) -> torch.Tensor:
        """Codes (B, L) for coarse labels (B, L), position i drawn with the uniform u_BL[:, i], by
        whichever stage 2 the pipeline holds (models/stage2.py)."""
        return sample_fine(self.models[STAGE2_ROLE], coarse_BL, labels_B, u_BL, s)


class BaselinePipeline(Pipeline):
    """LlamaGen's one-stage sampler over the full codebook."""

    type = "baseline"

    def __init__(self, tokenizer, baseline=None, **kwargs):
        models = kwargs.pop("models", None) or {"baseline": baseline}
        super().__init__(tokenizer, models, **kwargs)

    @staticmethod
    def default_sampling() -> SamplingConfig:
        return SamplingConfig.baseline()

    def sample_tokens(self, labels_B, seeds, s, progress=False, timings=None):
        m = self.models["baseline"]
        u_BL = sample_uniforms(seeds, self.seq_len)
        with timed("tokens", None):  # one stage: a profiler range, no separate timing
            return generate_tokens(m, labels_B, u_BL, s, step_fn=self._decode_step(m), progress=progress), None


PIPELINES = {cls.type: cls for cls in (CTFPipeline, BaselinePipeline)}  # by pipeline type (PipelineFolderConfig.type)


def _fresh(art: Artifact, made_from: dict | None = None) -> Artifact:
    """A copy of a module artifact to write again (its current weights): `made_from` (default: its
    own) and the info its folder recorded."""
    fresh = type(art)(art.module, made_from=art.made_from if made_from is None else made_from)
    fresh.info = (art.manifest or {}).get("info") if art.manifest is not None else art.info
    return fresh


def load_pipeline(path: str | Path, **kwargs) -> Pipeline:
    """CTFPipeline or BaselinePipeline, whichever the folder (or cached Hub repository "user/name") holds."""
    folder = PipelineFolder.load(path)  # read once: the class it names loads from it
    return PIPELINES[folder.config.type]._from_folder(folder, **kwargs)


def to_pil(images_NHWC: np.ndarray) -> list:
    from PIL import Image

    return [Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im) for im in images_NHWC]


# ---------------------------------------------------------------- processes

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _in_index_order(parts: list[Any], n: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Every rank's (indices, codes, coarse labels or None, images) put back together as samples 0..n-1."""
    codes, coarse = parts[0][1], parts[0][2]
    shape = next((p[3].shape[1:] for p in parts if p[3] is not None and len(p[3])), (1, 1, 1))
    codes_all = np.zeros((n, codes.shape[1]), codes.dtype)
    coarse_all = None if coarse is None else np.zeros((n, coarse.shape[1]), coarse.dtype)
    images_all = np.zeros((n, *shape), np.uint8)
    for idx, c, k, im in parts:
        if idx:
            codes_all[idx], images_all[idx] = c, im
            if coarse_all is not None:
                coarse_all[idx] = k
    return codes_all, coarse_all, images_all
