"""Exact held-out likelihood of codebook sequences, for the baseline and for CTF.

The baseline is an autoregressive model over codebook indices, so log p(x | class) is the sum of
its teacher-forced token log-probabilities. For CTF the coarse label is a function of the fine one
(c_i = coarse(x_i)), so a fine sequence has exactly one coarse sequence and

    log p(x | class) = log p_stage1(c | class) + sum_i log p_stage2(x_i | c, class),

with stage 2's distribution confined to the members of each position's cluster (the sampler's).
A stage-2 model trained without the mask (`mask_to_cluster=False`) is scored renormalised over the
members, i.e. as the masked sampler uses it; the result records this.

Everything is class-conditional and without guidance (guidance changes the sampler, not the model).
Bits per token = total nats / (number of tokens * ln 2). tests/test_nll.py checks that both
likelihoods sum to 1 over every sequence of a tiny model.
"""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..config import check_class_ids
from ..errors import CtfgenError

LOGITS_PER_BATCH = 1 << 25  # (rows * L * vocab) floats per forward: ~128 MB of fp32 logits
# and at most this many sequences: on a CPU larger blocks only fault in more memory (10,000 test
# images of V = 4096 through CTF: 46 s at 256 rows, 62 s at 1024, 66 s at 6,000; 2 threads)
MAX_ROWS = 256


def _batches(n: int, rows: int, progress: bool, desc: str):
    starts = range(0, n, rows)
    if progress and len(starts) > 1:
        from ..progress import progress_bar

        return progress_bar(starts, desc=desc, leave=False)
    return starts


def _rows(L: int, vocab: int, batch_size: int) -> int:
    return batch_size or max(1, min(MAX_ROWS, LOGITS_PER_BATCH // max(1, L * vocab)))


@torch.inference_mode()
def gpt_nll(model, targets_NL: torch.Tensor, labels_N: torch.Tensor, *, batch_size: int = 0,
            progress: bool = False) -> torch.Tensor:
    """(N,) nats: -log p(targets | class) under a causal GPT (the baseline, or stage 1 over coarse labels).

    targets_NL: long (N, L), L = the model's seq_len, values in [0, out_vocab). labels_N: long (N,).
    """
    c = model.config
    N, L = targets_NL.shape
    if L != c.seq_len:
        raise CtfgenError(f"sequences of {L} tokens, but the model makes {c.seq_len}")
    device = model.tok_embeddings.weight.device
    out_N = torch.empty(N, dtype=torch.float64)
    rows = _rows(L, c.out_vocab, batch_size)
    for s in _batches(N, rows, progress, f"nll {c.kind}"):
        t_BL = targets_NL[s:s + rows].to(device)
        logits_BLV = model(t_BL[:, :-1], labels_N[s:s + rows].to(device)).float()
        nll_BL = F.cross_entropy(logits_BLV.flatten(0, 1), t_BL.flatten(), reduction="none").view(t_BL.shape)
        out_N[s:s + rows] = nll_BL.double().sum(1).cpu()
    return out_N


@torch.inference_mode()
def stage2_nll(stage2, fine_NL: torch.Tensor, labels_N: torch.Tensor, *, batch_size: int = 0,
               progress: bool = False) -> torch.Tensor:
    """(N,) nats: -sum_i log p_stage2(x_i | coarse(x), class) for any stage 2 (models/stage2.py: the
    learned one or a parameter-free prior), from its member log-probabilities `stage2_log_probs`."""
    c2c_V = stage2.code_to_coarse
    if int(c2c_V.min()) < 0:
        raise CtfgenError("stage 2 has no coarse map (code_to_coarse unset)")
    fine_NL = fine_NL.long()
    N, L = fine_NL.shape
    stage2.check_length(L)
    device = stage2.stage2_device
    tables = stage2.member_tables()
    out_N = torch.empty(N, dtype=torch.float64)
    rows = _rows(L, tables.members_KM.shape[1], batch_size)
    for s in _batches(N, rows, progress, "nll stage 2"):
        x_BL = fine_NL[s:s + rows].to(device)
        coarse_BL = c2c_V[x_BL]
        logp_NM = stage2.stage2_log_probs(coarse_BL, labels_N[s:s + rows].to(device)).flatten(0, 1)
        nll_n = -logp_NM.gather(1, tables.col_V[x_BL.flatten()][:, None]).squeeze(1)
        out_N[s:s + rows] = nll_n.view(x_BL.shape).double().sum(1).cpu()
    return out_N


def ctf_nll(ar, stage2, fine_NL: torch.Tensor, labels_N: torch.Tensor, *, batch_size: int = 0,
            progress: bool = False, stage1_N: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """((N,), (N,)) nats of stage 1 (the coarse sequence) and of stage 2 (fine given coarse);
    their sum is CTF's -log p(fine | class). `stage1_N`: stage 1's nats when already known (several
    stage 2s on one stage 1). Raises CtfgenError when the two stages disagree."""
    if ar.config.coarse_vocab != stage2.config.coarse_vocab:
        raise CtfgenError(f"stage 1 has K={ar.config.coarse_vocab} coarse labels, stage 2 K={stage2.config.coarse_vocab}")
    c2c_V = stage2.code_to_coarse.cpu()
    coarse_NL = c2c_V[fine_NL.long().cpu()]
    s1_N = stage1_N if stage1_N is not None else gpt_nll(ar, coarse_NL, labels_N, batch_size=batch_size,
                                                          progress=progress)
    s2_N = stage2_nll(stage2, fine_NL, labels_N, batch_size=batch_size, progress=progress)
    return s1_N, s2_N


def bits(nats_N: torch.Tensor, tokens_per_sequence: int) -> float:
    """Mean bits per token of per-sequence nats."""
    return float(nats_N.sum()) / (len(nats_N) * tokens_per_sequence * math.log(2)) if len(nats_N) else float("nan")


def heldout_nll(models: dict[str, Any], fine_NL: torch.Tensor, labels_N: torch.Tensor, *,
                batch_size: int = 0, progress: bool = False, stage1_N: torch.Tensor | None = None,
                keep: dict | None = None, where: str = "labels") -> dict[str, Any]:
    """Bits per token of a CTF pair (models {"ar", "aux"}) or of the baseline (models {"baseline"}).

    Class ids in `labels_N` outside a model's [0, num_classes) raise a CtfgenError naming `where`
    (their file): the id num_classes would be scored as the unconditional (null) class.

    Returns {"bits_per_token", "nats_per_image", "images", "tokens_per_image", "seconds"} and, for
    CTF, "stage1_bits_per_token" / "stage2_bits_per_token" (per image token; they add up) and
    "stage2": its `stage2_name` ("aux" or a MemberPrior rule). `stage1_N` reuses stage 1's nats of
    an earlier call on the same sequences; `keep`, a dict, receives them as keep["stage1_N"].
    """
    t0 = time.perf_counter()
    N, L = fine_NL.shape
    if N == 0:
        raise CtfgenError("no sequences to score")
    for role, model in models.items():
        classes = getattr(model.config, "num_classes", None)
        if classes is not None and getattr(model.config, "use_class", True):
            check_class_ids(labels_N, classes, where=f"{where} (scored by the {role} model, {classes} classes)")
    out: dict[str, Any] = {"images": int(N), "tokens_per_image": int(L)}
    if "baseline" in models:
        total_N = gpt_nll(models["baseline"], fine_NL, labels_N, batch_size=batch_size, progress=progress)
    else:
        s1_N, s2_N = ctf_nll(models["ar"], models["aux"], fine_NL, labels_N, batch_size=batch_size, progress=progress,
                             stage1_N=stage1_N)
        if keep is not None:
            keep["stage1_N"] = s1_N
        total_N = s1_N + s2_N
        aux = models["aux"]
        out.update(stage1_bits_per_token=bits(s1_N, L), stage2_bits_per_token=bits(s2_N, L), stage2=aux.stage2_name)
        if aux.renormalised:
            out["stage2_renormalised"] = True  # an unmasked model, scored over the cluster members
    if not bool(torch.isfinite(total_N).all()):
        raise CtfgenError("the likelihood is not finite: a model gives probability 0 (or NaN) to a held-out sequence")
    out.update(bits_per_token=bits(total_N, L), nats_per_image=float(total_N.mean()),
               seconds=round(time.perf_counter() - t0, 2))
    return out


def store_sequences(store, *, max_images: int = 0, view: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes (N, L) long, labels (N,) long) of one view of a CodeStore, the first `max_images` (0: all)."""
    n = len(store) if not max_images else min(max_images, len(store))
    if not 0 <= view < store.n_views:
        raise CtfgenError(f"{store.folder}: view {view} does not exist (the store has {store.n_views})")
    codes = torch.from_numpy(np.asarray(store.codes[:n, view], dtype=np.int64))
    return codes, torch.from_numpy(np.asarray(store.labels[:n], dtype=np.int64))


def load_nll_models(store, device: str | torch.device = "cpu", *, pipeline=None, ar=None, aux=None, baseline=None,
                    stage2: str = "model", coarse_map=None, train_codes=None,
                    ema: bool | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The models that score the codes of `store` (a CodeStore), and what the result records about them.

    Give exactly one of `pipeline` (a pipeline folder), `ar` (a CTF stage-1 folder, with `aux` or a
    parameter-free `stage2`: "uniform" or "frequency", whose clusters come from `aux` or `coarse_map`
    and whose counts from the code store `train_codes`) or `baseline`. Returns ({"ar", "aux"} or
    {"baseline"}: modules on `device`, source: folders and fingerprints). Raises CtfgenError
    (ArtifactError) naming the folders when they do not belong together: stages of other tokenizers
    or coarse maps, a stage, the coarse map or the training codes made from a tokenizer other than
    the store's, or a model whose codebook, grid or classes do not fit the store; and an input the
    choice would not read (`coarse_map` beside a stage 2 that has its clusters, `train_codes` without
    "frequency", a `stage2` rule for the baseline). With a `stage2` rule, source["aux"] (and a
    pipeline's source["models"]["aux"]) records the prior scored, not the stage 2 it replaced.
    """
    from ..artifacts import check_made_from
    from ..sample.pipeline_folder import check_stages, load_component, read_component_manifest

    from ..models.member_prior import check_prior_flags

    if sum(bool(x) for x in (pipeline, ar, baseline)) != 1:
        raise CtfgenError("give exactly one of --pipeline, --ar (CTF) or --baseline")
    if aux and not ar:
        raise CtfgenError("--aux (a stage-2 folder) goes with --ar (its stage 1)")
    if baseline and stage2 != "model":
        _no_stage2(stage2, coarse_map)
    check_prior_flags(stage2, coarse_map=coarse_map, train_codes=train_codes)
    if coarse_map and (pipeline or aux):
        raise CtfgenError(f"--coarse-map: --stage2 {stage2} takes the clusters of the stage 2 of "
                          f"{'--pipeline' if pipeline else '--aux'}; give one of them")
    codes_tokenizer = f"tokenizer of codes {store.folder}"
    if pipeline:
        from ..sample import load_pipeline

        pipe = load_pipeline(pipeline, device=device, ema=ema)
        models, source = dict(pipe.models), {"pipeline": str(pipeline), "models": pipe.fingerprints}
        store.check_tokenizer(pipe.fingerprints["tokenizer"])
        stage1, stage1_map = f"pipeline {pipeline}", pipe.fingerprints.get("coarse_map")
    else:
        folders = {"baseline": baseline} if baseline else {"ar": ar}
        if aux:
            folders["aux"] = aux
        # the stage-2 role is any registered stage-2 folder kind, as in a pipeline (models/stage2.py)
        manifests = {role: read_component_manifest(role, folder) for role, folder in folders.items()}
        check_stages(manifests, store.tokenizer_fingerprint, folders=folders, tokenizer_name=codes_tokenizer)
        models, source = {}, {}
        for role, folder in folders.items():
            art = load_component(role, folder, device, ema=ema)
            models[role], source[role] = art.module, {"folder": str(folder), "fingerprint": art.fingerprint}
        stage1 = f"stage 1 ({ar})"
        stage1_map = manifests["ar"].get("made_from", {}).get("coarse_map") if ar else None
    cmap = None
    if coarse_map and "ar" in models:
        from ..cluster import CoarseMap

        cmap = CoarseMap.load(coarse_map)
        check_made_from(f"coarse map {coarse_map} / {codes_tokenizer}", store.tokenizer_fingerprint,
                        cmap.tokenizer_fingerprint, hint="the map was made for another tokenizer")
        check_made_from(f"coarse map {coarse_map} / {stage1}", str(stage1_map), cmap.fingerprint,
                        hint="stage 1 was trained with another `ctfgen cluster` output")
    if stage2 != "model" and "ar" not in models:
        _no_stage2(stage2, coarse_map)
    if "ar" in models:
        if stage2 != "model":
            art = _prior_stage2(stage2, models, cmap, train_codes, store, source)
            made_from = art.made_from
            if "aux" in models and stage1_map:  # its clusters are the replaced stage 2's: that map's
                made_from["coarse_map"] = stage1_map
            models["aux"] = art.module.to(device)
            # the result records the stage 2 scored, not the one of --aux / the pipeline it replaced
            source["aux"] = {"stage2": stage2, "fingerprint": art.fingerprint, "made_from": made_from}
            if "models" in source:
                source["models"] = {**source["models"], "aux": art.fingerprint}
        elif "aux" not in models:
            raise CtfgenError("CTF needs a stage 2: --aux DIR, or --stage2 uniform/frequency with --coarse-map DIR")
    for role, m in models.items():
        c = m.config
        if c.vocab_size != store.vocab_size:
            raise CtfgenError(f"{role}: codebook of {c.vocab_size} codes, but {store.folder} has {store.vocab_size}")
        # a stage 2 that reads no grid or no class has None there (models/stage2.py: stage2_config)
        if c.grid is not None and c.grid != store.grid[0]:
            raise CtfgenError(f"{role}: a {c.grid}x{c.grid} grid, but {store.folder} holds {store.grid}")
        if c.num_classes is not None and c.num_classes < store.num_classes:
            raise CtfgenError(f"{role}: {c.num_classes} classes, but {store.folder} has {store.num_classes}")
    return models, source


def _no_stage2(rule: str, coarse_map) -> None:
    given = " with --coarse-map" if coarse_map else ""
    raise CtfgenError(f"--stage2 {rule}{given} is CTF's stage 2; the baseline has none")


def _prior_stage2(rule: str, models: dict, cmap, train_codes, store, source: dict):
    """The parameter-free stage 2 `rule` (models/member_prior.py) of stage 2's clusters (when given)
    or of the coarse map `cmap`, counting the training codes of `train_codes` (a folder) for "frequency"."""
    from ..cluster import CoarseMap
    from ..models.member_prior import MemberPriorArtifact

    if "aux" in models:
        aux = models["aux"]
        cmap = CoarseMap.from_labels(aux.code_to_coarse.cpu(), k=aux.config.coarse_vocab,
                                     tokenizer_fingerprint=store.tokenizer_fingerprint)
    elif cmap is None:
        raise CtfgenError(f"--stage2 {rule} needs the coarse map: --coarse-map DIR (or --aux DIR)")
    train = None
    if rule == "frequency":  # check_prior_flags has made sure train_codes is given
        from ..codes import CodeStore

        train = CodeStore.open(train_codes)
        train.check_tokenizer(store.tokenizer_fingerprint)
        source["train_codes"] = str(train_codes)
    return MemberPriorArtifact.from_map(rule, cmap, train_codes=train)
