"""`ctfgen bench lasting`: does CTF's advantage last when the models train far longer, grow, or see
longer sequences? The units of LastingConfig (config.py), each measured as follows:

- its pipeline: a tokenizer (grid 8 or 16), the codes of the first `code_images` training images, of
  the last `val_images` training images (the validation split, never trained on) and of the test
  split, and k-means coarse labels (K = V / k_ratio), all made with the unit's pipeline seed;
- CTF's stage 1 and stage 2 and the baseline, trained with a warm-up, stable, decay schedule (the
  curve up to the decay is the one any longer budget passes through), in segments that end at every
  `eval_every` steps; there the validation bits per token of every method (CTF with the learned and
  the uniform stage 2) are measured, and a method's best point so far is kept as a snapshot folder
  (early stopping's checkpoint);
- at each method's best checkpoint: bits per token on the test split, and the sampling sweep of
  `bench scaling` (best-against-best classifier-FID, fresh sets at the pick and at the defaults);
- FLOPs per training step, the first step and FLOP count at which the baseline matches CTF's curve,
  and a fitted asymptote per method (curves.py).

Every artifact is reused on rerun (tokenizers, codes, model segments, snapshots, NLL and evaluation
JSONs), and each finished unit's results are written at once to `results_dir/<unit>.json`; a rerun
anywhere that finds that file skips the unit, so committed results let a later machine continue.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from ....artifacts import MANIFEST, atomic_write_json
from ....errors import CtfgenError
from ...workspace import NotMade, Workspace
from .config import AXES, LastingConfig, Unit
from .curves import at_equal_compute, best_point, first_match, fit_asymptote, fit_window, train_flops_per_step
from .sampling import best_vs_best

# the models each method is made of (Workspace.train kinds), as kept in its snapshot folder
PARTS = {"ctf": ("ar", "aux"), "ctf-uniform": ("ar",), "baseline": ("baseline",)}


class LastingStudy:
    def __init__(self, cfg: LastingConfig, out: str | Path, *, results_dir: str | Path, device="cpu",
                 progress: bool = True, log: Callable[[str], None] = print):
        import torch

        self.cfg = cfg.check()
        self.ws = Workspace(self.cfg, out, name="lasting", device=device, progress=progress, log=log, seed=0,
                            log_reuse=False)
        self.out, self.device = self.ws.out, device
        self.on_gpu = torch.device(device).type == "cuda"
        self.results_dir = Path(results_dir)
        self._n_train: int | None = None

    # ------------------------------------------------------------ plan

    def methods(self) -> list[str]:
        arms = self.cfg.arm_list()
        return (["ctf"] if "learned" in arms else []) + (["ctf-uniform"] if "uniform" in arms else []) + ["baseline"]

    def units(self, only_seeds: list[int] | None = None) -> list[Unit]:
        bad = [s for s in (only_seeds or []) if not 0 <= s < self.cfg.pipeline_seeds]
        if bad:
            raise CtfgenError(f"only_seeds: {bad} are not pipeline seeds of this plan (0..{self.cfg.pipeline_seeds - 1})")
        return [u for u in self.cfg.units(self.on_gpu) if only_seeds is None or u.seed in only_seeds]

    def result_path(self, unit: Unit) -> Path:
        return self.results_dir / f"{unit.key}.json"

    def settings(self) -> dict:
        """The settings a unit's results depend on beyond its key (the axes): a unit in the results
        directory made with others is not this plan's."""
        from ....config import to_dict

        return {k: v for k, v in to_dict(self.cfg).items() if k not in AXES | {"classifier", "sample_batch"}}

    def finished(self, unit: Unit) -> bool:
        """True when the results directory holds `unit` made with these settings; CtfgenError when it
        holds it made with others."""
        path = self.result_path(unit)
        if not path.is_file():
            return False
        there = json.loads(path.read_text()).get("settings", {})
        diff = sorted(k for k in set(there) | set(self.settings()) if there.get(k) != self.settings().get(k))
        if diff:
            k = diff[0]
            raise CtfgenError(f"{path} was made with other settings ({k}: {there.get(k)!r} there, "
                              f"{self.settings().get(k)!r} now); use another --results-dir or the same settings")
        return True

    # ------------------------------------------------------------ the pipeline of one seed

    def train_split(self) -> tuple[int, int]:
        """(training images encoded, first validation image): the validation images are the last
        `val_images` of the training split, the training codes come from before them."""
        c = self.cfg
        if self._n_train is None:
            from ....data import load_dataset

            self._n_train = len(load_dataset(c.data, "train"))
        first_val = self._n_train - c.val_images
        n_codes = c.code_images or first_val
        if first_val < 1 or n_codes > first_val:
            raise CtfgenError(f"code_images {c.code_images} + val_images {c.val_images} exceed the {self._n_train} "
                              "training images; the validation images must stay out of the training codes")
        return n_codes, first_val

    def pipeline(self, unit: Unit) -> dict[str, Path]:
        c, ws = self.cfg, self.ws
        root = self.out / unit.pipeline_dir
        tok = ws.tokenizer(root=root, codebook_size=unit.V, seed=unit.seed, vq=c.tokenizer_levels(unit.grid))
        n_codes, first_val = self.train_split()
        return {"root": root, "tokenizer": tok,
                "train": ws.codes(tok, root=root, split="train", views="none", limit=n_codes),
                "val": ws.codes(tok, root=root, split="train", views="none", images=(first_val, first_val + c.val_images),
                                name="val"),
                "test": ws.codes(tok, root=root, split="test", views="none"),
                "coarse": ws.coarse_map(tok, root=root, method="kmeans", k=unit.V // c.k_ratio, seed=unit.seed)}

    # ------------------------------------------------------------ one unit

    def run_unit(self, unit: Unit, clf: Path | None) -> dict:
        c = self.cfg
        t0 = time.time()
        pipe = self.pipeline(unit)
        mroot = self.out / unit.models_dir
        methods = self.methods()
        kinds = sorted({k for m in methods for k in PARTS[m]})
        folders = {k: mroot / {"ar": "stage1", "aux": "stage2", "baseline": "baseline"}[k] for k in kinds}
        recipe = {"batch_size": unit.batch, "cosine": False, "wsd_decay": c.wsd_decay}
        precision = "auto" if c.dtype == "auto" else c.dtype
        curves: dict[str, list[dict]] = {m: [] for m in methods}
        flops: dict[str, float] = {}
        for step in c.eval_steps():
            todo = [m for m in methods if not self._val_path(unit, m, step).is_file()]
            if todo:
                for kind, folder in folders.items():
                    self.ws.train(kind, pipe["train"], pipe["coarse"], folder=folder, preset=unit.preset,
                                  steps=unit.steps, seed=unit.seed, stop_after=step, recipe=recipe, precision=precision)
            if not flops:
                flops = self._flops(folders, unit.batch)
            shared: dict = {}  # stage 1's nats, shared by the stage 2s of this checkpoint
            for m in methods:
                path = self._val_path(unit, m, step)
                if path.is_file():
                    r = json.loads(path.read_text())
                else:
                    r = self._nll(m, {k: folders[k] for k in PARTS[m]}, pipe, "val", 0, shared)
                    if not curves[m] or r["bits_per_token"] < best_point(curves[m])["bits_per_token"]:
                        self._snapshot(mroot, m, step, folders)
                    atomic_write_json(path, r)
                curves[m].append({"step": step, "flops": flops[m] * step, **r})
            self.ws.log(f"{unit.key} step {step}: " + ", ".join(f"{m} {curves[m][-1]['bits_per_token']:.4f}"
                                                              for m in methods) + " bits/token (validation)")
        for m in methods:  # only now: a rerun reloads the points in order, so an early best is not the last word
            self._drop_stale_snapshots(mroot, m, best_point(curves[m])["step"])
        result = self._measure(unit, pipe, mroot, curves, flops, clf)
        result["seconds_this_run"] = round(time.time() - t0, 1)
        return result

    def _measure(self, unit: Unit, pipe: dict, mroot: Path, curves: dict, flops: dict, clf: Path | None) -> dict:
        c = self.cfg
        best, test, fits, samples = {}, {}, {}, {}
        complete = True
        for m, curve in curves.items():
            b = best_point(curve)
            snap = mroot / f"best-{m}-step{b['step']}"
            if not snap.is_dir():
                raise CtfgenError(f"{snap}: the best checkpoint of {m} is missing; delete {mroot} to retrain the unit")
            best[m] = {k: b.get(k) for k in ("step", "bits_per_token", "stage1_bits_per_token", "stage2_bits_per_token")}
            path = self.out / "nll" / f"{unit.key}-{m}-test-step{b['step']}.json"
            if not path.is_file():
                atomic_write_json(path, self._nll(m, {k: snap / k for k in PARTS[m]}, pipe, "test", c.test_images, {}))
            test[m] = json.loads(path.read_text())
            window = fit_window(curve, c.warmup, c.decay_start())
            fits[m] = fit_asymptote([p["step"] for p in window], [p["bits_per_token"] for p in window])
            if c.sampling:
                s = best_vs_best(self, unit, m, snap, pipe, clf, b["step"])
                complete &= s is not None
                samples[m] = s
        match = {}
        for m in (x for x in curves if x != "baseline"):
            match[m] = {"step": first_match(curves[m], curves["baseline"], "step"),
                        "flops": first_match(curves[m], curves["baseline"], "flops"),
                        "equal_compute": at_equal_compute(curves[m], curves["baseline"])}
        tok = json.loads((pipe["tokenizer"] / MANIFEST).read_text())
        report = tok["info"]["report"]
        return {"unit": unit.key, "recipe": unit.recipe, "V": unit.V, "K": unit.V // c.k_ratio, "grid": unit.grid,
                "tokens": unit.grid ** 2, "preset": unit.preset, "steps": unit.steps, "batch": unit.batch,
                "seed": unit.seed, "seed_kind": "pipeline", "device": str(self.device), "dtype": c.dtype,
                "settings": self.settings(),
                "schedule": {"lr_per_256": c.lr, "warmup": c.warmup, "wsd_decay": c.wsd_decay,
                             "decay_start": c.decay_start(), "eval_every": c.eval_every},
                "train_images": self.train_split()[0],
                "validation": {"images": c.val_images, "from": "the last images of the training split"},
                "tokenizer": {"vq": tok["config"], **{k: report.get(k) for k in ("psnr_db", "codes_used",
                                                                                 "codebook_usage", "perplexity")}},
                "params": self._params(mroot), "flops_per_step": flops, "curves": curves, "best": best,
                "test": test, "fit": fits, "baseline_matches": match, "samples": samples, "complete": complete}

    # ------------------------------------------------------------ measurements

    def _val_path(self, unit: Unit, m: str, step: int) -> Path:
        return self.out / "nll" / f"{unit.key}-{m}-val-step{step}.json"

    def _nll(self, m: str, folders: dict[str, Path], pipe: dict, split: str, images: int, shared: dict) -> dict:
        from ....codes import CodeStore
        from ....evaluate.nll import heldout_nll, store_sequences
        from ....models.artifact import TrainedModel

        models: dict[str, Any] = {k: TrainedModel.load(f, self.device).module for k, f in folders.items()}
        if m == "ctf-uniform":
            models["aux"] = self.prior(pipe)
        codes_NL, labels_N = store_sequences(CodeStore.open(pipe[split]), max_images=images)
        keep = shared if m != "baseline" else None
        return heldout_nll(models, codes_NL, labels_N, stage1_N=(keep or {}).get("stage1_N"), keep=keep)

    def prior(self, pipe: dict):
        """The uniform member prior of the pipeline's coarse map: the parameter-free stage 2."""
        from ....cluster import CoarseMap
        from ....models.member_prior import MemberPriorArtifact

        return MemberPriorArtifact.from_map("uniform", CoarseMap.load(pipe["coarse"])).module.to(self.device)

    def _flops(self, folders: dict[str, Path], batch: int) -> dict[str, float]:
        """Training FLOPs per step of each method, from its models' saved configs."""
        from ....config import from_dict
        from ....models.config import ModelConfig

        cfgs = {k: from_dict(ModelConfig, json.loads((f / MANIFEST).read_text())["config"]["model"])
                for k, f in folders.items()}
        return {m: train_flops_per_step([cfgs[k] for k in PARTS[m]], batch) for m in self.methods()}

    def _params(self, mroot: Path) -> dict[str, int]:
        from ....models.artifact import TrainedModel

        out = {}
        for kind, name in (("ar", "stage1"), ("aux", "stage2"), ("baseline", "baseline")):
            if (mroot / name / MANIFEST).is_file():
                out[kind] = sum(p.numel() for p in TrainedModel.load(mroot / name, "cpu").module.parameters())
        return out

    def _snapshot(self, mroot: Path, m: str, step: int, folders: dict[str, Path]) -> None:
        """Copy the models of method `m` at `step` to best-<m>-step<step> (written aside, then renamed)."""
        dest = mroot / f"best-{m}-step{step}"
        tmp = mroot / f".{dest.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        for kind in PARTS[m]:
            shutil.copytree(folders[kind], tmp / kind)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)

    def _drop_stale_snapshots(self, mroot: Path, m: str, best_step: int) -> None:
        for old in mroot.glob(f"best-{m}-step*"):
            if old.name != f"best-{m}-step{best_step}":
                shutil.rmtree(old, ignore_errors=True)

    # ------------------------------------------------------------ all

    def run(self, only_seeds: list[int] | None = None) -> Path:
        """Every unit of the plan not in the results directory yet (or only those of `only_seeds`), in
        seed order; each finished unit's JSON goes to the results directory at once. Processes may run
        other seeds or axes on the same folder at the same time. Returns the report page."""
        from .report import write_report

        units = self.units(only_seeds)
        t0 = self.ws.begin(extendable=AXES)
        self.results_dir.mkdir(parents=True, exist_ok=True)
        clf = self.ws.classifier(existing=self.cfg.classifier) if self.cfg.sampling else None
        for unit in units:
            if self.finished(unit):
                self.ws.log(f"{unit.key}: results in {self.result_path(unit)}; skipped")
                continue
            try:
                result = self.run_unit(unit, clf)
            except NotMade:
                continue
            atomic_write_json(self.out / "units" / f"{unit.key}.json", result)
            if result["complete"]:
                atomic_write_json(self.result_path(unit), result)
                self.ws.log(f"{unit.key}: done -> {self.result_path(unit)}")
        self.ws.end(t0)
        return write_report(self.results_dir, self.cfg, self.units())


def gpu_section(folder: Path, device, cfg: LastingConfig | None = None) -> dict:
    """`ctfgen bench gpu --lasting`: the plan of `cfg` (default: the command's defaults) on `device`,
    in folder/study with its unit JSONs in folder/results; what ran, the report and the seconds."""
    t0 = time.time()
    study = LastingStudy(cfg or LastingConfig(), folder / "study", results_dir=folder / "results", device=device,
                         progress=False)
    page = study.run()
    done = [u.key for u in study.units() if study.finished(u)]
    return {"report": str(page), "units_done": done, "units_planned": len(study.units()),
            "seconds": round(time.time() - t0, 1)}
