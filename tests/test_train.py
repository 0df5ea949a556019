"""The trainer: data order, optimiser recipe, checkpoints, exact resume, refusals, CLI."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ctfgen.artifacts import fingerprint_tensors, write_manifest
from ctfgen.cluster import CoarseMap
from ctfgen.codes import CodeStore
from ctfgen.errors import ArtifactError, CtfgenError
from ctfgen.models.artifact import TrainedModel
from ctfgen.train import BatchOrder, RunOptions, TokenDataset, TrainConfig, train

VOCAB, K, GRID, CLASSES = 32, 4, 4, 3
SMALL = dict(n_layer=1, n_head=2, dim=32)  # a real model, small enough for many CPU steps


def make_codes(folder: Path, *, n: int = 48, views: int = 2, tokenizer: str = "tok0", seed: int = 0) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, VOCAB, size=(n, views, GRID * GRID)).astype(np.uint16)
    labels = rng.integers(0, CLASSES, size=n).astype(np.int64)
    np.save(folder / "codes.npy", codes)
    np.save(folder / "labels.npy", labels)
    write_manifest(folder, kind="codes", fingerprint=fingerprint_tensors({"codes": codes, "labels": labels}),
                   config={"grid": [GRID, GRID], "vocab_size": VOCAB, "num_classes": CLASSES, "views": views,
                           "split": "train"},
                   made_from={"tokenizer": tokenizer, "data": "data0"})
    return folder


def make_coarse(folder: Path, *, tokenizer: str = "tok0") -> Path:
    from ctfgen.cluster import CoarseMap

    CoarseMap.from_labels(torch.arange(VOCAB) % K, k=K, method="modulo", tokenizer_fingerprint=tokenizer).save(folder)
    return folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    return {"codes": make_codes(root / "codes"), "coarse": make_coarse(root / "coarse"),
            "other_coarse": make_coarse(root / "other", tokenizer="tok1")}


def cfg(kind: str = "ar", **kw) -> TrainConfig:
    base = dict(kind=kind, preset="tiny", steps=6, batch_size=16, lr=1e-2, warmup_steps=2, cosine=True,
                ema=0.9, model_overrides=SMALL)
    base.update(kw)
    return TrainConfig(**base)


def quiet(**kw) -> RunOptions:
    return RunOptions(device="cpu", progress=False, tensorboard=False, **kw)


def run_train(inputs, out, c=None, **kw):
    c = c or cfg()
    coarse = None if c.kind == "baseline" else inputs["coarse"]
    return train(c, codes_dir=inputs["codes"], coarse_map_dir=coarse, out_dir=out, run=quiet(**kw))


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v for k, v in load_file(str(folder / "model.safetensors")).items()}
    if (folder / "ema.safetensors").exists():
        out.update({f"ema.{k}": v for k, v in load_file(str(folder / "ema.safetensors")).items()})
    out.update({f"opt.{k}": v for k, v in load_file(str(folder / "training_state/optimizer.safetensors")).items()})
    return out


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------- data


def test_dataset_views_and_coarse(inputs):
    codes = CodeStore.open(inputs["codes"])
    coarse = CoarseMap.load(inputs["coarse"])
    ds = TokenDataset(codes.codes, codes.labels, code_to_coarse=coarse.code_to_coarse, seed=3)
    item = ds[5]
    assert item["codes"].shape == (GRID * GRID,) and item["codes"].dtype == torch.long
    assert torch.equal(item["coarse"], item["codes"] % K)
    views = [ds.views_for_epoch(e) for e in range(3)]
    assert not all(np.array_equal(views[0], v) for v in views[1:])  # a new pick each epoch
    assert np.array_equal(views[1], TokenDataset(codes.codes, codes.labels, seed=3).views_for_epoch(1))
    ds.set_epoch(1)
    i = 7
    assert torch.equal(ds[i]["codes"], torch.from_numpy(codes.codes[i, views[1][i]].astype(np.int64)))


def test_batch_order_shards_the_global_batch():
    order = BatchOrder(50, 12, seed=1)
    assert order.steps_per_epoch == 4
    for step in (0, 5):
        whole = order.micro_batch(step)
        parts = [order.micro_batch(step, rank=r, world_size=2, micro=m, grad_accum=3) for r in range(2) for m in range(3)]
        assert all(len(p) == 2 for p in parts)
        assert np.array_equal(np.concatenate(parts), whole)
    epoch0 = np.concatenate([order.micro_batch(s) for s in range(4)])
    assert len(set(epoch0.tolist())) == 48  # no repeats within an epoch
    with pytest.raises(CtfgenError, match="divisible by 5"):
        order.micro_batch(0, world_size=5)


# ---------------------------------------------------------------- recipe


def test_lr_schedule_scales_with_batch():
    c = TrainConfig(lr=1e-4, batch_size=512, warmup_steps=10, cosine=True, min_lr_ratio=0.1, steps=110)
    assert c.peak_lr == pytest.approx(2e-4)
    assert c.lr_at(0, 110) == pytest.approx(2e-5)
    assert c.lr_at(9, 110) == pytest.approx(2e-4)
    # the decay runs over steps 10..109 (the last): halfway down at step 59.5, so between 59 and 60
    assert c.lr_at(60, 110) < 2e-4 * (0.1 + 0.9 * 0.5) < c.lr_at(59, 110)
    assert c.lr_at(109, 110) == pytest.approx(2e-5) and c.lr_at(110, 110) == pytest.approx(2e-5)
    assert TrainConfig(lr=1e-4, batch_size=256).lr_at(1000, 2000) == pytest.approx(1e-4)


def test_wsd_schedule_holds_then_decays(inputs, tmp_path):
    """Warm-up, stable, decay: constant until the last `wsd_decay` of the run, then linear to the floor;
    a checkpoint saved before the field existed still resumes (the field counts as its default)."""
    c = TrainConfig(lr=1e-4, batch_size=256, warmup_steps=10, wsd_decay=0.1, min_lr_ratio=0.0, steps=100)
    assert c.lr_at(0, 100) == pytest.approx(1e-5)
    assert [c.lr_at(s, 100) for s in (10, 50, 89)] == pytest.approx([1e-4] * 3)
    assert [c.lr_at(s, 100) for s in (90, 91)] == pytest.approx([9e-5, 8e-5])  # 10 decay steps: 90..99
    assert c.lr_at(99, 100) == pytest.approx(0.0)
    longer = TrainConfig(lr=1e-4, batch_size=256, warmup_steps=10, wsd_decay=0.1, steps=1000)
    assert [longer.lr_at(s, 1000) for s in range(90)] == [c.lr_at(s, 100) for s in range(90)]  # one curve
    with pytest.raises(CtfgenError, match="choose one"):
        TrainConfig(cosine=True, wsd_decay=0.1)
    with pytest.raises(CtfgenError, match="wsd_decay"):
        TrainConfig(wsd_decay=1.5)

    out = tmp_path / "old"
    run_train(inputs, out, cfg(steps=4), stop_after=2)
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["config"]["train"]["wsd_decay"]  # as an older release wrote it
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert run_train(inputs, out, cfg(steps=4)).step == 4
    with pytest.raises(CtfgenError, match="cannot resume"):
        run_train(inputs, tmp_path / "old", cfg(steps=4, cosine=False, wsd_decay=0.5))


def test_weight_decay_only_on_matrices():
    from ctfgen.models import build_model
    from ctfgen.train.parallel import param_groups

    model = build_model("ar", "tiny", vocab_size=VOCAB, num_classes=CLASSES, grid=GRID, coarse_vocab=K, **SMALL)
    decay, rest = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and rest["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in rest["params"])
    assert len(decay["params"]) + len(rest["params"]) == len(list(model.parameters()))
    emb = model.tok_embeddings.weight
    assert any(p is emb for p in decay["params"])


def test_a_ten_step_cosine_run_ends_at_exactly_the_floor(inputs, tmp_path):
    """The last step's learning rate is the floor (it was 0.122 of the peak for a floor of 0.1: the
    decay reached its end one step after the run), in the trainer and in the tokenizer's schedule."""
    from ctfgen.tokenizer.train import TokenizerTrainConfig, _lr_factor

    c = cfg(steps=10, batch_size=16, warmup_steps=0, cosine=True, min_lr_ratio=0.1, ema=0.0)
    result = run_train(inputs, tmp_path / "run", c, log_every=1)
    lrs = [r["lr"] for r in result.records]
    assert len(lrs) == 10 and lrs[0] == pytest.approx(c.peak_lr, rel=1e-12)
    assert lrs[-1] == pytest.approx(0.1 * c.peak_lr, rel=1e-12)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    tok = TokenizerTrainConfig(steps=10, warmup_steps=0, min_lr_ratio=0.1)
    assert _lr_factor(0, tok) == 1.0 and _lr_factor(9, tok) == pytest.approx(0.1, rel=1e-12)
    with_warmup = TokenizerTrainConfig(steps=10, warmup_steps=3, min_lr_ratio=0.05)
    assert _lr_factor(2, with_warmup) == 1.0 and _lr_factor(3, with_warmup) == 1.0
    assert _lr_factor(9, with_warmup) == pytest.approx(0.05, rel=1e-12)


def test_grad_accum_matches_one_big_batch(inputs, tmp_path):
    c = cfg(model_overrides={**SMALL, "token_dropout": 0.0, "resid_dropout": 0.0, "ffn_dropout": 0.0,
                             "class_dropout_prob": 0.0}, steps=2)
    run_train(inputs, tmp_path / "a", c)
    run_train(inputs, tmp_path / "b", c, grad_accum=4)
    a, b = tensors(tmp_path / "a"), tensors(tmp_path / "b")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=k)


# ---------------------------------------------------------------- checkpoints and resume


def test_train_writes_a_loadable_model(inputs, tmp_path):
    out = tmp_path / "run"
    res = run_train(inputs, out, log_every=2, ckpt_every=3)
    assert res.finished and res.step == 6
    names = {p.name for p in out.iterdir()}
    assert {"manifest.json", "model.safetensors", "ema.safetensors", "training_state", "metrics.jsonl",
            "loss_curve.png"} <= names
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6]
    assert {"step", "epoch", "loss", "acc", "lr", "grad_norm", "tokens_per_s"} <= set(records[0])
    loaded = TrainedModel.load(out, "cpu", expect_kind="ar")
    model, manifest = loaded.module, loaded.manifest
    assert manifest["kind"] == "model" and manifest["info"]["finished"]
    assert set(manifest["made_from"]) == {"codes", "coarse_map", "tokenizer"}
    assert manifest["config"]["train"]["ema"] == 0.9 and manifest["config"]["model"]["kind"] == "ar"
    ema = load_file(str(out / "ema.safetensors"))
    for k, v in model.state_dict().items():
        assert torch.equal(v, ema[k]), k  # the EMA weights are the default
    raw = TrainedModel.load(out, ema=False).module
    assert not torch.equal(raw.tok_embeddings.weight, model.tok_embeddings.weight)
    with pytest.raises(ArtifactError, match="expected 'aux'"):
        TrainedModel.load(out, expect_kind="aux")
    with pytest.raises(ArtifactError, match="coarse_map"):
        TrainedModel.load(out, made_from={"coarse_map": "0123"})
    # a second identical command finds the run finished and changes nothing
    before = tensors(out)
    assert run_train(inputs, out).resumed_from == 6
    assert_same(before, tensors(out))


class Crash(Exception):
    pass


@pytest.mark.parametrize("kind", ["ar", "aux"])
def test_killed_run_resumes_exactly(inputs, tmp_path, kind):
    """Crash after step 5 (checkpoint at 3), rerun: same weights, EMA and optimizer as no crash."""
    c = cfg(kind, steps=8)  # 48 images / batch 16: 3 epochs, so the resume crosses an epoch boundary
    run_train(inputs, tmp_path / "straight", c, ckpt_every=3, log_every=1)

    def crash(done):
        if done == 5:
            raise Crash

    out = tmp_path / "killed"
    with pytest.raises(Crash):
        train(c, codes_dir=inputs["codes"], coarse_map_dir=inputs["coarse"], out_dir=out,
              run=quiet(ckpt_every=3, log_every=1), on_step=crash)
    assert json.loads((out / "manifest.json").read_text())["info"]["step"] == 3
    res = run_train(inputs, out, c, ckpt_every=3, log_every=1)
    assert res.resumed_from == 3 and res.finished
    assert_same(tensors(tmp_path / "straight"), tensors(out))
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))  # the records of the lost steps 4-5 are not duplicated


def test_stop_after_then_continue(inputs, tmp_path):
    c = cfg("baseline", steps=5, ema=0.0)
    run_train(inputs, tmp_path / "straight", c, ckpt_every=0)
    part = run_train(inputs, tmp_path / "parts", c, ckpt_every=0, stop_after=2)
    assert part.step == 2 and not part.finished
    assert not (tmp_path / "parts" / "ema.safetensors").exists()
    run_train(inputs, tmp_path / "parts", c, ckpt_every=0)
    assert_same(tensors(tmp_path / "straight"), tensors(tmp_path / "parts"))


def test_resume_refuses_changed_config_or_inputs(inputs, tmp_path):
    out = tmp_path / "run"
    run_train(inputs, out, cfg(steps=2))
    with pytest.raises(ArtifactError, match="'lr'"):
        run_train(inputs, out, cfg(steps=2, lr=3e-2))
    with pytest.raises(ArtifactError, match="n_layer"):
        run_train(inputs, out, cfg(steps=2, model_overrides={**SMALL, "n_layer": 2}))
    other_codes = make_codes(tmp_path / "codes2", seed=1)
    with pytest.raises(ArtifactError, match="made from codes"):
        train(cfg(steps=2), codes_dir=other_codes, coarse_map_dir=inputs["coarse"], out_dir=out, run=quiet())
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("x")
    with pytest.raises(ArtifactError, match="not a model checkpoint"):
        run_train(inputs, tmp_path / "foreign", cfg(steps=1))


def test_refuses_missing_or_foreign_coarse_map(inputs, tmp_path):
    with pytest.raises(CtfgenError, match="--coarse-map"):
        train(cfg("ar"), codes_dir=inputs["codes"], out_dir=tmp_path / "a", run=quiet())
    with pytest.raises(ArtifactError, match="another tokenizer"):
        train(cfg("aux"), codes_dir=inputs["codes"], coarse_map_dir=inputs["other_coarse"],
              out_dir=tmp_path / "b", run=quiet())
    with pytest.raises(CtfgenError, match="steps.*epochs"):
        run_train(inputs, tmp_path / "c", cfg(steps=0))


def test_each_kind_is_built_from_what_it_reads(inputs):
    # build_for passes the coarse map's K to the kinds that need the map, and its code_to_coarse to stage 2
    from ctfgen.train.data import check_inputs
    from ctfgen.train.model_task import build_for

    codes, coarse = CodeStore.open(inputs["codes"]), CoarseMap.load(inputs["coarse"])
    seen = {}
    for kind in ("baseline", "ar", "aux"):
        check_inputs(kind, codes, coarse)
        build_for(cfg(kind), codes, coarse, build_model=lambda k, preset, **kw: seen.setdefault(k, kw))
        assert {"coarse_vocab", "code_to_coarse"} & set(seen[kind]) == {
            "baseline": set(), "ar": {"coarse_vocab"}, "aux": {"coarse_vocab", "code_to_coarse"}}[kind]
    assert seen["aux"]["coarse_vocab"] == K and torch.equal(seen["aux"]["code_to_coarse"], coarse.code_to_coarse)
    check_inputs("baseline", codes, None)
    with pytest.raises(CtfgenError, match="kind 'aux' predicts or reads coarse labels"):
        check_inputs("aux", codes, None)


def test_epochs_and_aux_coarse_noise(inputs, tmp_path):
    res = run_train(inputs, tmp_path / "run", cfg("aux", steps=0, epochs=1.5, aux_coarse_noise=0.2, ema=0.0))
    assert res.total_steps == 5  # ceil(1.5 * 48 // 16)
    manifest = TrainedModel.load(tmp_path / "run").manifest
    assert manifest["config"]["model"]["coarse_noise"] == 0.2
    with pytest.raises(CtfgenError, match="aux_coarse_noise"):
        cfg("ar", aux_coarse_noise=0.1)


def test_train_configs_check_their_options():
    # every field is documented once, in its option; the configs refuse what the options refuse
    import dataclasses

    from ctfgen.train.config import RunOptions, TrainConfig

    for cls in (TrainConfig, RunOptions):
        assert all(f.metadata.get("help") for f in dataclasses.fields(cls)), cls
    for bad, message in (({"kind": "gan"}, "train config: kind must be one of"),
                         ({"steps": -1}, "train config: steps must be >= 0, got -1"),
                         ({"lr": 0.0}, "train config: lr must be > 0, got 0"),
                         ({"min_lr_ratio": 1.5}, r"train config: min_lr_ratio must be in \[0, 1\]"),
                         ({"ema": 1.0}, r"train config: ema must be in \[0, 1\) \(0 = off\), got 1"),
                         ({"kind": "aux", "aux_coarse_noise": 1.0}, r"aux_coarse_noise must be in \[0, 1\)")):
        with pytest.raises(CtfgenError, match=message):
            TrainConfig(**bad)
    assert TrainConfig().model_overrides is not TrainConfig().model_overrides  # a fresh dict each
    assert RunOptions(ckpt_every=None).ckpt_every is None and RunOptions(ckpt_every=0).ckpt_every == 0
    for bad, message in (({"grad_accum": 0}, "run options: grad_accum must be >= 1, got 0"),
                         ({"ckpt_every": -1}, "run options: ckpt_every must be >= 0"),
                         ({"precision": "fp16"}, "run options: precision must be one of"),
                         ({"aux_loss": "fast"}, "run options: aux_loss must be one of")):
        with pytest.raises(CtfgenError, match=message):
            RunOptions(**bad)


# ---------------------------------------------------------------- CLI and bench


def test_cli_train_and_errors(inputs, tmp_path, capsys):
    from ctfgen.apps.cli import main

    out = tmp_path / "run"
    args = ["train", "aux", "--codes", str(inputs["codes"]), "--coarse-map", str(inputs["coarse"]), "--out", str(out),
            "--steps", "2", "--batch-size", "8", "--device", "cpu", "--no-progress", "--log-every", "1",
            "--aux-coarse-noise", "0.1", "--model-opt", "n_layer=1", "--model-opt", "dim=32", "--model-opt", "n_head=2"]
    assert main(args) == 0
    assert "finished at step 2/2" in capsys.readouterr().out
    loaded = TrainedModel.load(out, expect_kind="aux")
    model, manifest = loaded.module, loaded.manifest
    assert manifest["config"]["train"]["batch_size"] == 8 and model.config.coarse_noise == 0.1
    assert main(["train", "ar", "--codes", str(inputs["codes"]), "--out", str(tmp_path / "x"), "--steps", "1",
                 "--device", "cpu"]) == 2
    assert "--coarse-map" in capsys.readouterr().err
    assert main(args[:-6] + ["--lr", "5e-4"]) == 2  # resuming with another lr is refused by name
    assert "'lr'" in capsys.readouterr().err


def test_bench_train_cli(tmp_path, capsys):
    from ctfgen.apps.cli import main

    path = tmp_path / "bench.json"
    assert main(["bench", "train", "--preset", "tiny", "--vocab", "512", "--k", "16", "--grid", "4",
                 "--batch-size", "4", "--steps", "2", "--warmup", "1", "--device", "cpu", "--json", str(path)]) == 0
    text = capsys.readouterr().out
    assert "ratio ar/baseline" in text and "CTF (ar + aux) / baseline step time" in text
    rows = json.loads(path.read_text())["rows"]
    assert [r["kind"] for r in rows] == ["ar", "aux", "baseline"]
    assert [r["vocab_out"] for r in rows] == [16, 512, 512]
    assert rows[0]["params"] < rows[2]["params"] and all(r["tokens_per_s"] > 0 for r in rows)


def test_the_benches_time_the_trainers_own_step(monkeypatch):
    """`bench train`, `bench aux-loss` (whole step) and the GPU check's training section run
    Trainer.train_step, each step they time: the step `ctfgen train` runs, not a copy of it."""
    from ctfgen.benchmarks.aux_loss import bench_aux_loss
    from ctfgen.benchmarks.gpucheck.training import time_training
    from ctfgen.benchmarks.train_speed import bench_train
    from ctfgen.train.trainer import Trainer

    steps, real = [], Trainer.train_step

    def counted(self, step):
        steps.append((self.task.name, step))
        return real(self, step)

    monkeypatch.setattr(Trainer, "train_step", counted)
    rows = bench_train(preset="tiny", vocab=64, k=8, grid=4, batch_size=2, steps=2, warmup=1, num_classes=4,
                       progress=False)
    assert sorted(steps) == sorted((kind, i) for kind in ("ar", "aux", "baseline") for i in range(3))
    assert all(r.step_ms > 0 for r in rows)
    steps.clear()
    rows = bench_aux_loss(preset="tiny", vocab=64, k=8, grid=4, batch_size=2, steps=1, warmup=1, num_classes=4)
    assert len(steps) == 2 * 3 and all(r.step_ms > 0 for r in rows)  # (warm-up + timed) x the three formulations
    steps.clear()
    out = time_training("aux", "tiny", vocab=64, k=8, grid=4, num_classes=4, batch_size=2, steps=2, warmup=1,
                        device=torch.device("cpu"), peak_tflops=None, precision="fp32", aux_loss="gather")
    assert steps == [("aux", 0), ("aux", 1), ("aux", 2)] and out["aux_loss"] == "gather"
    # stage 2 scores each position's cluster members: a new head guesses uniformly among 64 / 8 codes
    assert out["loss"] == pytest.approx(math.log(64 // 8), abs=0.5)


def test_tokens_per_second_leaves_out_checkpoint_time(inputs, tmp_path, monkeypatch):
    """A fake clock: each optimizer step takes 1 s, each checkpoint 100 s. A log window of 2 steps
    must report 2 steps of tokens over 2 s, whatever checkpoints fell inside it."""
    import types

    from ctfgen.train import checkpoint, logs

    now = [0.0]
    monkeypatch.setattr(logs, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    clip, save = torch.nn.utils.clip_grad_norm_, checkpoint.save_checkpoint

    def clip_and_tick(*args, **kw):
        now[0] += 1.0
        return clip(*args, **kw)

    def slow_save(*args, **kw):
        now[0] += 100.0
        return save(*args, **kw)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip_and_tick)
    monkeypatch.setattr(checkpoint, "save_checkpoint", slow_save)
    c = cfg()
    result = run_train(inputs, tmp_path / "run", c, log_every=2, ckpt_every=1)
    rates = [r["tokens_per_s"] for r in result.records]
    assert rates == pytest.approx([c.batch_size * GRID * GRID] * (c.steps // 2))


def test_trainer_methods_are_the_run(inputs, tmp_path):
    """The Trainer's steps, driven by hand (train_step, log_metrics, save), give train()'s weights,
    optimizer, EMA and records: the loop holds no work of its own besides calling them."""
    from ctfgen.dist import init_distributed, joined_group
    from ctfgen.train.model_task import ModelTask
    from ctfgen.train.trainer import Trainer

    def trainer(run):
        dist = init_distributed("cpu")
        return Trainer(ModelTask(c, run, dist, codes_dir=inputs["codes"], coarse_map_dir=inputs["coarse"]), run, dist,
                       tmp_path / "hand")

    assert (joined_group().rank, joined_group().world_size) == (0, 1)  # outside torchrun: one process
    c = cfg(steps=4)
    ref = run_train(inputs, tmp_path / "ref", c, log_every=2, ckpt_every=4)
    t = trainer(quiet(log_every=2, ckpt_every=4))
    assert (t.start, t.total) == (0, 4)
    records = []
    for step in range(t.total):
        t.train_step(step)
        if (step + 1) % 2 == 0:
            records.append(t.log_metrics(step + 1))
    t.save(t.total)
    assert_same(tensors(ref.out_dir), tensors(tmp_path / "hand"))
    timing = ("tokens_per_s", "max_rss_gb")
    assert [{k: v for k, v in r.items() if k not in timing} for r in records] == \
           [{k: v for k, v in r.items() if k not in timing} for r in ref.records]
    again = trainer(quiet())
    assert again.start == 4 and again.checkpoints.last_saved == 4  # the folder it saved resumes


class LineFormat:
    """A run folder of kind "line_checkpoint": weights and manifest (the training state beside them
    is the Trainer's)."""

    def open(self, out):
        from ctfgen.train import checkpoint

        return checkpoint.read_checkpoint_manifest(out, "line_checkpoint", what="a line checkpoint")

    def write_folder(self, tmp, model_state, *, info, also):
        from safetensors.torch import save_file

        save_file(dict(model_state), str(tmp / "model.safetensors"))
        also(tmp)
        write_manifest(tmp, kind="line_checkpoint", fingerprint=fingerprint_tensors(model_state), info=info)

    def load(self, out, manifest, param_names):
        return None


def test_a_new_task_is_one_class(tmp_path):
    """ARCHITECTURE.md's recipe "adding a kind of training run": a task (here fitting y = x1 + x2 with
    a linear layer) and its folder format run on the Trainer with its checkpoints, exact resume,
    records and the task's own state (a step counter)."""
    from ctfgen.dist import DistInfo
    from ctfgen.train.task import Task
    from ctfgen.train.trainer import Trainer

    class LineTask(Task):
        what, name, total, steps_per_epoch, tokens_per_step, grad_clip = "line training", "line", 6, 3, 8, 1.0
        config, made_from, format = {"lr": 0.1}, {}, LineFormat()

        def build(self):
            torch.manual_seed(0)
            self.updates = 0
            return torch.nn.Linear(2, 1)

        def optimizer(self, model):
            return torch.optim.Adam(model.parameters(), lr=0.1)

        def lr_at(self, step):
            return 0.1 * (1 - step / self.total)

        def batches(self, step, dist, grad_accum):
            x = torch.randn(8, 2, generator=torch.Generator().manual_seed(step))
            return [{"x": x, "y": x.sum(1, keepdim=True)}]

        def loss(self, model, batch):
            return (model(batch["x"]) - batch["y"]).pow(2).mean(), {}

        def after_step(self, step):
            self.updates += 1

        def state(self):
            return {}, {"updates": self.updates}

        def load_state(self, tensors, meta):
            self.updates = meta["updates"]

    def run(out, **kw):
        task = LineTask()
        options = RunOptions(device="cpu", progress=False, log_every=2, ckpt_every=2)
        return task, Trainer(task, options, DistInfo(), out).fit(**kw)

    def kill(done):
        if done == 3:
            raise KeyboardInterrupt

    _, straight = run(tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "line", on_step=kill)
    task, resumed = run(tmp_path / "line")
    assert (resumed.resumed_from, resumed.step, task.updates) == (2, 6, 6)
    assert_same(*(load_file(tmp_path / name / "model.safetensors") for name in ("line", "straight")))
    assert [r["step"] for r in resumed.records] == [2, 4, 6]
    assert resumed.records[-1]["loss"] < straight.records[0]["loss"]
    assert json.loads((tmp_path / "line" / "manifest.json").read_text())["kind"] == "line_checkpoint"


def test_library_code_under_torchrun_without_a_group_is_refused(monkeypatch):
    # each process would encode (or sample) everything and write the same folder at once
    from ctfgen.dist import joined_group

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(CtfgenError, match="WORLD_SIZE.*init_distributed"):
        joined_group()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert joined_group().world_size == 1
