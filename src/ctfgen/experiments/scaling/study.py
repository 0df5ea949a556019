"""`ctfgen bench scaling`: does CTF beat the baseline as the codebook grows, and why?

For each codebook size V (tokenizers of one recipe), K = V / k_ratio coarse labels; CTF (stage 1
+ stage 2) and the baseline with the same stage-1 architecture and the same steps, for several
training seeds. Measured for every model:

- exact held-out bits per token (evaluate/nll.py) on the test split's codes at every `nll_every`
  steps: the convergence curves;
- at the last checkpoint, a sampling sweep (guidance scale x temperature; for CTF then stage-2
  temperature at the best pair) on `sweep_samples_per_class` images per class, scored by the
  domain classifier's FID; the best setting of each method is then evaluated afresh (another
  sampling seed, so the pick's luck does not carry over) on `final_samples_per_class`, and so are
  the paper's default settings. Sweeps run for the first `sweep_seeds` training seeds; later seeds
  reuse the settings picked on seed 0 (stated in the report);
- arms beyond the paper, at V = `arms_vocab`: other clusterings of the codebook (balanced k-means,
  average linkage, random) with their own stage 1 and stage 2, and two stage 2s without parameters
  (uniform / frequency members, models/member_prior.py) on the k-means stage 1 of every unit.

Seeds are training seeds (model initialisation and batch order; one tokenizer and one clustering
per V, made with seed 0) or, with `pipeline_seeds`, whole-pipeline seeds: seed s trains its own
tokenizer (initial weights, batch order) and clusters its codebook (k-means++ initialisation) with
seed s too, so the intervals include what the tokenizer and the clustering vary. Folders: V<V>/
holds the tokenizer, codes and coarse labels of a training-seed study and V<V>/seed<s>/ the models;
with pipeline seeds V<V>/seed<s>/ holds all of them.

Every artifact is a folder or JSON file under `out`, written atomically and reused by a rerun, so an
interrupted study continues at the model, checkpoint or evaluation where it stopped. Work runs in
order of seed, then V, so a partial study already holds every V for the first seeds.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ...artifacts import MANIFEST, atomic_write_json
from ...config import check_fields, option, option_of, to_dict
from ...errors import CtfgenError
from ..workspace import NotMade, Workspace
from ..recipe import GIVEN_EPOCHS, GivenClassifier, OnePreset, Recipe
from . import sweep as sweeping
from .sweep import DEFAULTS, PRIOR_ARMS, tag_of
from .sweep_settings import StudyAxes, SweepSettings

CLUSTER_ARMS = ("balanced", "average", "random")  # beside the main arm, k-means
ARMS = CLUSTER_ARMS + PRIOR_ARMS
PARTS = ("all", "main", "arms", "report")
# more seeds, vocabs or arms extend a study; any other changed setting would mix two recipes
EXTENDABLE = {"seeds", "vocabs", "arms", "arm_seeds", "inception"}


@dataclass
class ScalingConfig(Recipe, OnePreset, GivenClassifier, SweepSettings, StudyAxes):
    vocabs: str = option("1024,4096,16384", "codebook sizes V, comma-separated (one tokenizer each)", items=int,
                         min=2, max=65536)
    k_ratio: int = option(32, "K = V / this many codes per coarse label (the paper: 16384 / 512)", min=1)
    seeds: int = option(3, "seeds per arm (training seeds, or whole-pipeline seeds with --pipeline-seeds)", min=1)
    pipeline_seeds: bool = option(False, "whole-pipeline seeds: seed s also trains its own tokenizer (initial "
                                         "weights, batch order) and clustering (k-means++ initialisation), so the "
                                         "intervals include them (default: one tokenizer and clustering per V, seed 0)")
    arms: str = option(",".join(ARMS), "rows beyond CTF (k-means) and the baseline: balanced, average, random "
                                       "(clusterings), uniform, frequency (stage 2 without parameters); '' for none",
                       items=str, choices=ARMS, allow_empty=True)
    arms_vocab: int = option(4096, "codebook size at which the clustering arms are trained", min=1)
    arm_seeds: int = option(1, "training seeds of the clustering arms", min=1)
    tokenizer_steps: int = option_of(Recipe, "tokenizer_steps", 500, help="training steps of each tokenizer")
    steps: int = option_of(Recipe, "steps", 300, help="optimizer steps of every model")
    batch_size: int = option_of(Recipe, "batch_size", 32)
    lr: float = option_of(Recipe, "lr", 8e-3, help="learning rate per 256 samples (the quality bench's tuned rate)")
    nll_every: int = option(50, "held-out NLL every this many steps (and at the end)", min=1)
    nll_images: int = option(2000, "test images of the NLL curve (the last checkpoint scores all)", min=1)
    sweep_seeds: int = option_of(SweepSettings, "sweep_seeds", 1, help="training seeds with a sweep of their own "
                                                                       "(later seeds reuse seed 0's picks)")
    classifier_epochs: int = option_of(Recipe, "classifier_epochs", 3, help=GIVEN_EPOCHS)

    def check(self) -> "ScalingConfig":
        bad = [a for a in self.arm_list() if a not in ARMS]
        if bad:
            raise CtfgenError(f"arms: unknown {bad}; choose from {', '.join(ARMS)}")
        check_fields(self)
        for v in self.vocab_list():
            if v % self.k_ratio or v // self.k_ratio < 2:
                raise CtfgenError(f"vocabs: V={v} is not a multiple of k_ratio={self.k_ratio} giving K >= 2")
        if any(a in CLUSTER_ARMS for a in self.arm_list()) and self.arms_vocab not in self.vocab_list():
            raise CtfgenError(f"arms_vocab {self.arms_vocab} is not one of the vocabs {self.vocab_list()}")
        return self

    def nll_steps(self) -> list[int]:
        return sorted({*range(self.nll_every, self.steps, self.nll_every), self.steps})


class ScalingStudy:
    """The study, made of the steps of a `Workspace` named "scaling" (one folder per V; tokenizers,
    coarse labels and the classifier with seed 0; the models with each training seed)."""

    def __init__(self, cfg: ScalingConfig, out: str | Path, *, device="cpu", progress: bool = True,
                 log: Callable[[str], None] = print):
        self.cfg = cfg.check()
        self.ws = Workspace(self.cfg, out, name="scaling", device=device, progress=progress, log=log, seed=0,
                            preset=self.cfg.preset, log_reuse=False)
        self.out, self.device = self.ws.out, device

    # ------------------------------------------------------------ artifacts

    @property
    def seed_kind(self) -> str:
        return "pipeline" if self.cfg.pipeline_seeds else "training"

    def pipeline_seed(self, seed: int) -> int:
        """The seed of the tokenizer and clustering under models of `seed` (0 for training seeds)."""
        return seed if self.cfg.pipeline_seeds else 0

    def shared_root(self, V: int, seed: int) -> Path:
        """The folder of the tokenizer, codes and coarse labels under the models of `seed`."""
        return self.out / f"V{V}" / f"seed{seed}" if self.cfg.pipeline_seeds else self.out / f"V{V}"

    def tokenizer(self, V: int, seed: int = 0) -> Path:
        return self.ws.tokenizer(root=self.shared_root(V, seed), codebook_size=V, seed=self.pipeline_seed(seed))

    def codes(self, V: int, tok: Path, split: str, seed: int = 0) -> Path:
        return self.ws.codes(tok, root=self.shared_root(V, seed), split=split, views="none")

    def coarse_map(self, V: int, tok: Path, method: str, seed: int = 0) -> Path:
        return self.ws.coarse_map(tok, root=self.shared_root(V, seed), method=method, k=V // self.cfg.k_ratio,
                                  seed=self.pipeline_seed(seed))

    # ------------------------------------------------------------ measurements

    def nll(self, tag: str, models: Callable[[], dict], test_codes: Path, *, images: int,
            stage1: dict | None = None) -> dict:
        """Held-out bits per token, cached as nll/<tag>.json. `stage1`, a dict shared by the CTF
        variants of one stage 1 at one checkpoint, carries stage 1's nats from one to the next."""
        from ...codes import CodeStore
        from ...evaluate.nll import heldout_nll, store_sequences

        path = self.out / "nll" / f"{tag}.json"
        if path.is_file():
            return json.loads(path.read_text())
        if not self.ws.make:
            raise NotMade(tag)
        codes_NL, labels_N = store_sequences(CodeStore.open(test_codes), max_images=images)
        stage1 = {} if stage1 is None else stage1
        result = heldout_nll(models(), codes_NL, labels_N, stage1_N=stage1.get("stage1_N"), keep=stage1)
        atomic_write_json(path, result)
        return result

    def evaluate(self, tag: str, pipe: Callable[[], Any], clf: Path, settings: dict, *, final: bool,
                 metadata: dict) -> dict:
        return sweeping.evaluate(self.ws, self.cfg, tag, pipe, clf, settings, final=final, metadata=metadata)

    def sweep(self, name: str, unit: str, pipe: Callable[[], Any], clf: Path, meta: dict) -> dict:
        return sweeping.sweep(self.ws, self.cfg, name, unit, pipe, clf, meta)

    def _load_picks(self) -> dict:
        path = self.out / "picks.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def _save_pick(self, key: str, sweep: dict) -> None:
        """Seed 0's picks, for processes that run later seeds (--only-seeds) at the same time."""
        atomic_write_json(self.out / "picks.json", {**self._load_picks(), key: sweep})

    # ------------------------------------------------------------ one unit: (V, seed, clustering)

    def unit(self, V: int, seed: int, method: str, tok: Path, codes: dict[str, Path], clf: Path,
             with_baseline: bool, priors: list[str], picks: dict) -> dict:
        from ...models.member_prior import MemberPriorArtifact
        from ...sample import BaselinePipeline, CTFPipeline
        from ...models.artifact import TrainedModel

        c = self.cfg
        unit = f"V{V}-{'p' if c.pipeline_seeds else 's'}{seed}-{method}"
        coarse = self.coarse_map(V, tok, method, seed)
        root = self.out / f"V{V}" / f"seed{seed}"
        folders = {"ar": root / f"stage1-{method}", "aux": root / f"stage2-{method}"}
        if with_baseline:
            folders["baseline"] = root / "baseline"
        priors_built: dict[str, Any] = {}

        def prior(rule: str):
            """The parameter-free stage 2 of this unit's coarse map (its artifact, `pipeline make
            --stage2`'s), built once per rule; the training codes count for the rules that use them."""
            if rule not in priors_built:
                from ...cluster import CoarseMap
                from ...codes import CodeStore

                priors_built[rule] = MemberPriorArtifact.from_map(rule, CoarseMap.load(coarse),
                                                                  train_codes=CodeStore.open(codes["train"]))
                priors_built[rule].module.to(self.device)
            return priors_built[rule]

        curves: dict[str, list] = {}
        for step in c.nll_steps():
            last = step == c.steps
            images = 0 if last else c.nll_images
            names = [("ctf" if method == "kmeans" else f"ctf-{method}")] + (["baseline"] if with_baseline else [])
            names += [f"ctf-{p}" for p in priors]
            todo = [n for n in names if not (self.out / "nll" / f"{unit}-{n}-step{step}.json").is_file()]
            if todo and (not self.ws.make or min(_trained_step(f) for f in folders.values()) > step):
                # an arm added to a study whose models are past this checkpoint: only later points
                why = "not measured yet" if not self.ws.make else "the models are past it"
                self.ws.log(f"{unit}: {', '.join(todo)} have no NLL at step {step} ({why})")
                names = [n for n in names if n not in todo]
            elif todo:
                t0 = time.time()
                for kind, folder in folders.items():
                    self.ws.train(kind, codes["train"], coarse, folder=folder, seed=seed, stop_after=step)
                self.ws.log(f"{unit}: trained to step {step} ({time.time() - t0:.0f} s)")
            shared_stage1: dict = {}  # one stage 1 under every stage 2 of this checkpoint
            for n in names:
                def models(n=n):
                    if n == "baseline":
                        return {"baseline": TrainedModel.load(folders["baseline"], self.device).module}
                    ar = TrainedModel.load(folders["ar"], self.device).module
                    rule = _prior_rule(n)
                    return {"ar": ar, "aux": (prior(rule) if rule else TrainedModel.load(folders["aux"], self.device)).module}
                try:
                    r = self.nll(f"{unit}-{n}-step{step}", models, codes["test"], images=images,
                                 stage1=None if n == "baseline" else shared_stage1)
                except NotMade:
                    continue
                curves.setdefault(n, []).append({"step": step, **r})

        def pipeline(n: str):
            if n == "baseline":
                return lambda: BaselinePipeline.from_folders(tokenizer=tok, baseline=folders["baseline"],
                                                             device=self.device)
            rule = _prior_rule(n)
            if rule:
                def make():  # the pipeline's artifacts, as `ctfgen pipeline make --stage2 RULE` would hold them
                    from ...models.artifact import TrainedModel
                    from ...tokenizer.artifact import TokenizerArtifact

                    return CTFPipeline(TokenizerArtifact.load(tok, self.device),
                                       ar=TrainedModel.load(folders["ar"], self.device), aux=prior(rule))
                return make
            return lambda: CTFPipeline.from_folders(tokenizer=tok, ar=folders["ar"], aux=folders["aux"],
                                                    device=self.device)

        samples: dict[str, dict] = {}
        for n in curves:
            meta = {"unit": unit, "V": V, "K": V // c.k_ratio, "train_seed": seed, "seed_kind": self.seed_kind,
                    "clustering": method, "method": n,
                    "train_steps": c.steps, "preset": c.preset}
            key = f"V{V}-{method}-{n}"
            own_sweep = seed < c.sweep_seeds
            if n.endswith(PRIOR_ARMS):  # no sweep of its own: the learned CTF's stage-1 pick, stage 2 at 1.0
                ctf_pick = picks.get(f"V{V}-{method}-ctf") or self._load_picks().get(f"V{V}-{method}-ctf")
                if ctf_pick is None:
                    self.ws.log(f"{unit}: {n} samples wait for the learned CTF's sweep; rerun to make them")
                    continue
                best = {k: v for k, v in ctf_pick["best"].items() if k != "stage2_temperature"}
                best = {**best, "stage2_temperature": 1.0}
                sweep = {"best": best, "sweep": {}, "from": "the learned CTF's stage-1 pick"}
            elif own_sweep:
                try:
                    sweep = self.sweep(n, unit, pipeline(n), clf, meta)
                except NotMade:
                    continue
                picks[key] = sweep
                self._save_pick(key, sweep)
            elif key in picks or key in self._load_picks():
                sweep = {**(picks.get(key) or self._load_picks()[key]), "from": f"seed 0's sweep ({key})"}
            else:  # seed 0 runs in another process and has not swept yet: a later run makes these
                self.ws.log(f"{unit}: {n} samples wait for seed 0's sweep; rerun to make them")
                continue
            out = {"best_settings": sweep["best"], "sweep": sweep.get("sweep", {}), "picked_on": sweep.get("from", "own sweep")}
            try:
                for pick, s in (("best", sweep["best"]), ("default", DEFAULTS["baseline" if n == "baseline" else "ctf"])):
                    if n.endswith(PRIOR_ARMS) and pick == "default":
                        continue
                    r = self.evaluate(f"{unit}-{n}-final-{pick}-{tag_of(s)}", pipeline(n), clf, s, final=True,
                                      metadata={**meta, "pick": pick})
                    out[pick] = {"settings": s, "metrics": r["metrics"]}
            except NotMade:
                continue
            samples[n] = out
        return {"unit": unit, "V": V, "seed": seed, "seed_kind": self.seed_kind, "clustering": method, "nll": curves,
                "samples": samples}

    # ------------------------------------------------------------ all

    def run(self, parts: str = "all", only_seeds: list[int] | None = None, noise_reference: str | Path | None = None
            ) -> Path:
        """The whole study, or one part of it: "main" (CTF and the baseline with k-means, and the
        parameter-free stage 2s) or "arms" (the other clusterings); `only_seeds` limits it to those
        training seeds. Parts and seeds may run at the same time, in separate processes on one folder;
        a last run of "all" then gathers them, reusing everything. "report" makes nothing: it writes
        the report of what is measured so far. `noise_reference`: the results.json of a study with the
        other kind of seeds, whose spread the report compares with this one's."""
        from .report import write_scaling_report

        if parts not in PARTS:
            raise CtfgenError(f"parts must be one of {PARTS}, got {parts!r}")
        bad = [s for s in (only_seeds or []) if not 0 <= s < self.cfg.seeds]
        if bad:
            raise CtfgenError(f"only_seeds: {bad} are not training seeds of this study (0..{self.cfg.seeds - 1})")
        reference = None
        if noise_reference:  # read first: a bad path fails now, not after hours of training
            from .noise import read_results

            reference = read_results(noise_reference)
            if reference.get("seed_kind", "training") == self.seed_kind:
                raise CtfgenError(f"noise reference {noise_reference}: it uses {self.seed_kind} seeds too; give "
                                  "a study with the other kind")
        self.ws.make = parts != "report"
        c = self.cfg
        t0 = self.ws.begin(extendable=EXTENDABLE)
        if not self.ws.make and not (self.out / "classifier" / MANIFEST).is_file() and not c.classifier:
            raise CtfgenError(f"{self.out}: nothing measured yet (no domain classifier)")
        clf = self.ws.classifier(existing=c.classifier)
        tokenizers = {}
        units, picks = [], {}
        for seed in (only_seeds if only_seeds else range(c.seeds)):
            for V in c.vocab_list():
                try:
                    self._run_one(V, seed, parts, tokenizers, clf, units, picks)
                except NotMade:  # gathering: this V is not made yet
                    continue
                atomic_write_json(self.out / "results.json", self.results(units, tokenizers, time.time() - t0))
        results = self.results(units, tokenizers, time.time() - t0)
        atomic_write_json(self.out / "results.json", results)
        page = write_scaling_report(self.out, results, reference=reference)
        self.ws.log(f"done in {time.time() - t0:.0f} s: {page}")
        return page

    def _run_one(self, V: int, seed: int, parts: str, tokenizers: dict, clf: Path, units: list, picks: dict) -> None:
        c = self.cfg
        key = (V, self.pipeline_seed(seed))
        if key not in tokenizers:
            tokenizers[key] = self.tokenizer(V, seed)
        tok = tokenizers[key]
        codes = {s: self.codes(V, tok, s, seed) for s in ("train", "test")}
        priors = [a for a in c.arm_list() if a in PRIOR_ARMS]
        if parts in ("all", "main", "report"):
            units.append(self.unit(V, seed, "kmeans", tok, codes, clf, True, priors, picks))
        if parts in ("all", "arms", "report") and V == c.arms_vocab and seed < c.arm_seeds:
            for method in (a for a in c.arm_list() if a in CLUSTER_ARMS):
                try:
                    units.append(self.unit(V, seed, method, tok, codes, clf, False, [], picks))
                except NotMade:
                    continue

    def results(self, units: list[dict], tokenizers: dict[tuple[int, int], Path], seconds: float) -> dict:
        """results.json: the config, the seed kind, each tokenizer's quality (keyed "V", or "V-seedS"
        with pipeline seeds) and the units."""
        toks = {}
        for (V, seed), folder in sorted(tokenizers.items()):
            rep = json.loads((folder / MANIFEST).read_text())["info"]["report"]
            key = f"{V}-seed{seed}" if self.cfg.pipeline_seeds else str(V)
            toks[key] = {"V": V, "seed": seed, **{k: rep.get(k) for k in ("psnr_db", "codes_used", "codebook_usage",
                                                                            "perplexity", "images")}}
        return {"config": to_dict(self.cfg), "seed_kind": self.seed_kind, "tokenizers": toks, "units": units,
                "seconds_this_run": round(seconds, 1)}


def _prior_rule(name: str) -> str | None:
    """"uniform" for "ctf-uniform": the rule of a parameter-free stage 2, None for a learned one."""
    rule = name.split("-", 1)[-1]
    return rule if rule in PRIOR_ARMS else None


def _trained_step(folder: Path) -> int:
    """Optimizer steps a training folder holds (0: none yet)."""
    m = folder / MANIFEST
    return int(json.loads(m.read_text())["info"]["step"]) if m.is_file() else 0
