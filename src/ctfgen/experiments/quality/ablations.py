"""The paper's ablations, as options of `ctfgen bench quality --ablate NAME ...`.

Two families:
- training ablations (K, clustering method, stage-2 depth, stage-2 masking) train their own stage 1
  and stage 2 for `ablation_steps`, on the bench's codes. Models are keyed by what makes them, so a
  model two tables need (the k-means K=128 row appears in several) is trained once.
- sampling ablations (CFG scale, temperatures, stage-2 argmax) reuse the comparison's final CTF
  models and change only the sampling settings.

Every variant is evaluated on `ablation_samples_per_class` samples per class with the domain
classifier's metrics (Inception FID would cost ~0.16 s an image on a CPU, per variant); each row
records the settings that made it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import CtfgenError


@dataclass(frozen=True)
class Variant:
    label: str
    train: dict[str, Any] = field(default_factory=dict)  # k, cluster_method, aux_layers, mask_to_cluster
    sample: dict[str, Any] = field(default_factory=dict)  # SamplingConfig overrides


@dataclass(frozen=True)
class Ablation:
    title: str
    variants: tuple[Variant, ...]
    trains: bool  # True: each variant trains models; False: sampling settings only

    def note(self, cfg) -> str:
        if self.trains:
            return (f"Stage 1 and stage 2 trained {cfg.ablation_steps} steps for each row; "
                    f"{cfg.ablation_samples_per_class} samples per class; classifier metrics.")
        return (f"The comparison's final CTF models ({cfg.steps} steps), sampled with the setting shown; "
                f"{cfg.ablation_samples_per_class} samples per class; classifier metrics.")


def _values(name: str, values, key: str) -> tuple[Variant, ...]:
    return tuple(Variant(f"{name} {v}", sample={key: v}) for v in values)


ABLATIONS: dict[str, Ablation] = {
    "k": Ablation("number of coarse labels K", tuple(Variant(f"K={k}", train={"k": k}) for k in (32, 128, 512)), True),
    "cluster": Ablation("clustering method (agglomerative: the method beyond the paper)",
                        tuple(Variant(m, train={"cluster_method": m})
                              for m in ("kmeans", "balanced", "random", "agglomerative")), True),
    "aux-size": Ablation("stage-2 size (layers at the preset's width)",
                         tuple(Variant(f"{n} layers", train={"aux_layers": n}) for n in (2, 4, 8)), True),
    "mask": Ablation("stage-2 logits masked to the coarse label's members, or over the whole codebook",
                     (Variant("masked", train={"mask_to_cluster": True}),
                      Variant("not masked", train={"mask_to_cluster": False})), True),
    "cfg": Ablation("CFG scale (stage 1)", _values("scale", (1.0, 1.5, 2.0, 3.0, 4.0), "guidance_scale"), False),
    "temperature": Ablation("stage-1 temperature", _values("T1", (0.9, 1.0, 1.1, 1.2), "temperature"), False),
    "stage2-temperature": Ablation("stage-2 temperature",
                                   _values("T2", (0.7, 0.9, 1.0, 1.1, 1.3), "stage2_temperature"), False),
    "stage2-argmax": Ablation("stage-2 sampling vs argmax",
                              (Variant("sampling (T2 1.1)"), Variant("argmax", sample={"stage2_argmax": True})), False),
}


def resolve(names: list[str]) -> list[str]:
    if "all" in names:
        return list(ABLATIONS)
    bad = [n for n in names if n not in ABLATIONS]
    if bad:
        raise CtfgenError(f"unknown ablation {bad[0]!r}; choose from {', '.join(ABLATIONS)} or all")
    return list(dict.fromkeys(names))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text).strip("_")


def _train_settings(ws, v: Variant) -> dict[str, Any]:
    c = ws.cfg
    s = {"k": c.k, "cluster_method": c.cluster_method, "aux_layers": None, "mask_to_cluster": True, **v.train}
    if s["aux_layers"] is None:
        from ...models.presets import PRESETS

        s["aux_layers"] = PRESETS[c.preset]["n_layer"]
    return s


def _models(ws, s: dict[str, Any], tok: Path, codes: Path) -> tuple[Path, Path]:
    """Stage 1 and stage 2 for these settings, trained once per distinct key."""
    c = ws.cfg
    coarse = ws.coarse_map(tok, method=s["cluster_method"], k=s["k"])
    base = ws.out / "ablations" / "models"
    key1 = f"{s['cluster_method']}-k{s['k']}-s{c.ablation_steps}"
    key2 = f"{key1}-L{s['aux_layers']}{'' if s['mask_to_cluster'] else '-unmasked'}"
    ar = ws.train("ar", codes, coarse, folder=base / f"stage1-{key1}", steps=c.ablation_steps)
    aux = ws.train("aux", codes, coarse, folder=base / f"stage2-{key2}", steps=c.ablation_steps,
                      overrides={"n_layer": s["aux_layers"], "mask_to_cluster": s["mask_to_cluster"]})
    return ar, aux


def run_ablation(ws, name: str, *, tok: Path, codes: Path, clf: Path) -> dict:
    """One table, evaluated with the steps of the quality bench's Workspace `ws`:
    {"rows": [{"variant", "settings", "metrics", "eval"}]}."""
    from ...sample import CTFPipeline

    ab = ABLATIONS[name]
    c = ws.cfg
    rows = []
    for v in ab.variants:
        tag = f"ablation-{name}-{_slug(v.label)}"
        path = ws.out / "evals" / f"{tag}.json"
        if ab.trains:
            s = _train_settings(ws, v)
            settings = {**s, "train_steps": c.ablation_steps}

            def make(s=s):  # an evaluated row needs neither its models nor a pipeline
                ar, aux = _models(ws, s, tok, codes)
                return CTFPipeline.from_folders(tokenizer=tok, ar=ar, aux=aux, device=ws.device)
        else:
            settings = {"train_steps": c.steps, **v.sample}

            def make():  # the comparison's final CTF models
                return CTFPipeline.from_folders(tokenizer=tok, ar=ws.out / "stage1", aux=ws.out / "stage2",
                                                device=ws.device)
        res = ws.sample_and_score(tag, make, clf, samples_per_class=c.ablation_samples_per_class, inception=False,
                                  settings=v.sample, metadata={"ablation": name, "variant": v.label, "settings": settings})
        sampling = res["metadata"]["sampling"]
        rows.append({"variant": v.label, "settings": {**settings, **{k: sampling[k] for k in
                                                                     ("guidance_scale", "temperature",
                                                                      "stage2_temperature", "stage2_argmax")}},
                     "metrics": res["metrics"], "eval": str(path)})
    return {"rows": rows}
