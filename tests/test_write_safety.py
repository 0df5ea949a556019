"""Writes are safe at every instant: a kill at each point of the write-and-swap sequence is followed by
a rerun that resumes from the newest complete checkpoint and removes the leftovers; a full disk is one
line naming the folder; short runs checkpoint often enough to resume; tokenizer training and `encode`
resume where they stopped."""
from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import safetensors.torch
from safetensors import SafetensorError
from test_train import assert_same, cfg, make_coarse, make_codes, quiet, run_train, tensors

from ctfgen import artifacts, safe_write
from ctfgen.apps.cli import main as cli_main
from ctfgen.artifacts import interrupted_writes
from ctfgen.errors import ArtifactError, CtfgenError
from ctfgen.train import checkpoint, train

DISK_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"  # safetensors' words


class Kill(BaseException):
    """Stands for SIGKILL: nothing after it runs (the patched cleanup below does nothing either)."""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    return {"codes": make_codes(root / "codes"), "coarse": make_coarse(root / "coarse")}


@pytest.fixture(scope="module")
def straight(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    run_train(inputs, out, cfg(steps=6), ckpt_every=2, log_every=1)
    return tensors(out)


def kill_during_checkpoint(monkeypatch, at_step: int, point: str) -> None:
    """Arm a kill at `point` of the checkpoint of step `at_step`."""
    armed = [False]
    save, save_file, fsync, replace, rmtree = (checkpoint.save_checkpoint, checkpoint.save_file,
                                               safe_write._fsync_tree, os.replace, shutil.rmtree)

    def save_checkpoint(*args, **kw):
        armed[0] = kw["state"]["step"] == at_step
        try:
            return save(*args, **kw)
        finally:
            armed[0] = False

    def save_file_(tensors_, path, *a, **k):
        if armed[0] and point == "writing" and path.endswith("optimizer.safetensors"):
            raise Kill
        return save_file(tensors_, path, *a, **k)

    def fsync_(folder):
        if armed[0] and point == "written":  # every file and the manifest are in the new folder
            raise Kill
        return fsync(folder)

    def replace_(src, dst):
        if armed[0] and point == "swapping" and str(src).endswith(".tmp") and Path(src).is_dir():
            raise Kill  # the old folder is already renamed away, the new one not yet in place
        return replace(src, dst)

    def rmtree_(path, *a, **k):
        if armed[0]:
            if point == "cleaning" and ".old-" in str(path):
                raise Kill  # the new folder is in place, the old one not yet deleted
            return None  # a killed process cleans nothing up
        return rmtree(path, *a, **k)

    monkeypatch.setattr(checkpoint, "save_checkpoint", save_checkpoint)
    monkeypatch.setattr(checkpoint, "save_file", save_file_)
    monkeypatch.setattr(safe_write, "_fsync_tree", fsync_)
    monkeypatch.setattr(os, "replace", replace_)
    monkeypatch.setattr(shutil, "rmtree", rmtree_)


@pytest.mark.parametrize("point, resumes_from, left", [("writing", 2, 1), ("written", 4, 1), ("swapping", 4, 2),
                                                       ("cleaning", 4, 1)])
def test_kill_at_every_point_of_a_checkpoint_write(inputs, straight, tmp_path, monkeypatch, capsys, point,
                                                   resumes_from, left):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        kill_during_checkpoint(m, 4, point)
        with pytest.raises(Kill):
            run_train(inputs, out, cfg(steps=6), ckpt_every=2, log_every=1)
    assert len(interrupted_writes(out)) == left
    assert out.exists() == (point != "swapping")
    res = run_train(inputs, out, cfg(steps=6), ckpt_every=2, log_every=1)
    assert res.resumed_from == resumes_from and res.finished
    assert interrupted_writes(out) == []
    assert ("interrupted write" in capsys.readouterr().err)
    assert_same(straight, tensors(out))
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))


def test_leftovers_of_other_artifacts_are_cleaned_by_the_next_write(tmp_path, monkeypatch):
    from ctfgen.cluster import CoarseMap

    cmap = CoarseMap.from_labels(torch.arange(8) % 2, k=2)
    with monkeypatch.context() as m:
        m.setattr(shutil, "rmtree", lambda *a, **k: None)
        m.setattr(artifacts, "write_manifest", lambda *a, **k: (_ for _ in ()).throw(Kill()))
        with pytest.raises(Kill):
            cmap.save(tmp_path / "map")
    assert not (tmp_path / "map").exists() and len(interrupted_writes(tmp_path / "map")) == 1
    with pytest.raises(ArtifactError, match=r"not found: .*map \(an interrupted write left"):
        CoarseMap.load(tmp_path / "map")
    cmap.save(tmp_path / "map")
    assert interrupted_writes(tmp_path / "map") == [] and CoarseMap.load(tmp_path / "map").k == 2
    (tmp_path / "map.x").mkdir()  # a sibling whose name starts alike is never taken for a leftover
    (tmp_path / ".map.x.abcdefgh.tmp").mkdir()
    assert interrupted_writes(tmp_path / "map") == []


def test_full_disk_is_one_line_and_keeps_the_last_checkpoint(inputs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    save_file = checkpoint.save_file
    calls = [0]

    def full_at_second_checkpoint(tensors_, path, *a, **k):
        if path.endswith("model.safetensors"):
            calls[0] += 1
        if calls[0] >= 2:
            raise SafetensorError(DISK_FULL)
        return save_file(tensors_, path, *a, **k)

    # the training state is written by checkpoint.py, the weights by the model folder's writer (artifacts.py)
    monkeypatch.setattr(checkpoint, "save_file", full_at_second_checkpoint)
    monkeypatch.setattr(safetensors.torch, "save_file", full_at_second_checkpoint)
    with pytest.raises(ArtifactError, match=rf"disk full while writing {out} \(the disk holding .* MiB free\).*"
                                            rf"the previous {out} is unchanged"):
        run_train(inputs, out, cfg(steps=4), ckpt_every=2)
    assert json.loads((out / "manifest.json").read_text())["info"]["step"] == 2
    assert interrupted_writes(out) == []
    calls[0] = 0
    argv = ["train", "ar", "--codes", str(inputs["codes"]), "--coarse-map", str(inputs["coarse"]), "--out",
            str(tmp_path / "cli"), "--steps", "4", "--ckpt-every", "2", "--batch-size", "16", "--device", "cpu", "--no-progress",
            "--model-opt", "n_layer=1", "--model-opt", "dim=32", "--model-opt", "n_head=2"]
    capsys.readouterr()
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "disk full while writing" in err[0]


def test_full_disk_outside_an_artifact_is_one_line_too(inputs, tmp_path, monkeypatch, capsys):
    from ctfgen.train import logs

    def write(self, record):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.out / "metrics.jsonl"))

    monkeypatch.setattr(logs.MetricsLog, "write", write)
    argv = ["train", "baseline", "--codes", str(inputs["codes"]), "--out", str(tmp_path / "run"), "--steps", "2",
            "--batch-size", "16", "--device", "cpu", "--no-progress", "--log-every", "1"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"disk full while writing {tmp_path / 'run' / 'metrics.jsonl'}" in err[0]


def test_short_runs_checkpoint_often_enough_to_resume(inputs, tmp_path):
    from ctfgen.train.config import RunOptions, auto_ckpt_every

    assert RunOptions().ckpt_every is None
    assert [auto_ckpt_every(n) for n in (1, 9, 20, 200, 10_000, 400_000)] == [1, 1, 2, 20, 1000, 1000]

    def crash(done):
        if done == 15:
            raise Kill

    out = tmp_path / "run"
    with pytest.raises(Kill):
        train(cfg(steps=20, ema=0.0), codes_dir=inputs["codes"], coarse_map_dir=inputs["coarse"], out_dir=out,
              run=quiet(), on_step=crash)
    assert json.loads((out / "manifest.json").read_text())["info"]["step"] == 14
    assert run_train(inputs, out, cfg(steps=20, ema=0.0)).resumed_from == 14


# ---------------------------------------------------------------- tokenizer training and encode


def tokenizer_config(data, steps=8):
    from test_sample import TINY_VQ

    from ctfgen.tokenizer import vq_preset
    from ctfgen.tokenizer.train import TokenizerTrainConfig

    return TokenizerTrainConfig(vq=vq_preset("fmnist", **TINY_VQ), data=data, steps=steps, batch_size=16,
                                warmup_steps=2, restart_every=3, eval_limit=8)


def test_tokenizer_training_resumes_exactly(tmp_path, tiny_data, capsys):
    from ctfgen.tokenizer import load_tokenizer
    from ctfgen.tokenizer.artifact import TokenizerArtifact
    from ctfgen.tokenizer.train import train_tokenizer

    c = tokenizer_config(tiny_data)  # 96 images / 16: an epoch is 6 steps, so the resume crosses into the next
    # a metrics record every 2 steps: each covers the same steps in both runs (a record's window
    # starts again at a resume, here after step 4)
    straight = train_tokenizer(c, tmp_path / "straight", progress=False, log_every=2)

    def crash(done):
        if done == 5:
            raise Kill

    out = tmp_path / "tok"
    with pytest.raises(Kill):
        train_tokenizer(c, out, progress=False, ckpt_every=2, log_every=2, on_step=crash)
    with pytest.raises(ArtifactError, match="tokenizer training stopped at step 4 of 8: rerun the same"):
        load_tokenizer(out)
    other = tokenizer_config(tiny_data, steps=9)
    with pytest.raises(ArtifactError, match="cannot resume .*'steps'"):
        train_tokenizer(other, out, progress=False)
    resumed = train_tokenizer(c, out, progress=True, ckpt_every=2, log_every=2)
    assert "resuming" in capsys.readouterr().err
    assert resumed["fingerprint"] == straight["fingerprint"] and resumed["psnr_db"] == straight["psnr_db"]
    assert TokenizerArtifact.load(out).manifest["kind"] == "tokenizer"
    def history(folder):
        return [{k: v for k, v in json.loads(line).items() if k not in ("tokens_per_s", "max_rss_gb", "max_mem_gb")}
                for line in (folder / "train_log.jsonl").read_text().splitlines()]

    assert [r["step"] for r in history(out)] == [2, 4, 6, 8]
    assert history(out) == history(tmp_path / "straight")


def test_encode_resumes_from_its_finished_chunks(tmp_path, tiny_data):
    from test_sample import TINY_VQ

    from ctfgen.codes import encode_dataset
    from ctfgen.data import load_dataset
    from ctfgen.tokenizer import VQModel, save_tokenizer, vq_preset

    torch.manual_seed(0)
    tok = VQModel(vq_preset("fmnist", **TINY_VQ))
    save_tokenizer(tok, tmp_path / "tok")
    ds = load_dataset(tiny_data, "train")
    full = encode_dataset(tok, ds, tmp_path / "full", views="flip", progress=False)
    done = []

    def crash(start):
        done.append(start)
        if len(done) == 2:
            raise Kill

    with pytest.raises(Kill):
        encode_dataset(tok, ds, tmp_path / "codes", views="flip", chunk=20, batch_size=7, progress=False, on_chunk=crash)
    assert done == [0, 20] and not (tmp_path / "codes").exists()
    done.clear()
    store = encode_dataset(tok, ds, tmp_path / "codes", views="flip", chunk=20, batch_size=7, progress=False,
                           on_chunk=done.append)
    assert done == [40, 60, 80]  # only what was missing
    assert np.array_equal(store.codes, full.codes) and store.fingerprint == full.fingerprint
    assert store.manifest["info"]["resumed_images"] == 40
    assert not (tmp_path / ".codes.parts").exists()
    # other settings do not reuse the chunks of another job
    with pytest.raises(Kill):
        encode_dataset(tok, ds, tmp_path / "none", views="none", chunk=20, progress=False,
                       on_chunk=lambda s: (_ for _ in ()).throw(Kill()))
    flip = encode_dataset(tok, ds, tmp_path / "none", views="flip", chunk=20, progress=False)
    assert flip.fingerprint == full.fingerprint


def test_encode_full_disk_names_the_folder(tmp_path, tiny_data, monkeypatch):
    from test_sample import TINY_VQ

    from ctfgen import codes
    from ctfgen.data import load_dataset
    from ctfgen.tokenizer import VQModel, vq_preset

    tok = VQModel(vq_preset("fmnist", **TINY_VQ))

    def full(path, arr):
        raise OSError(f"{arr.nbytes} requested and 8176 written")  # numpy's words for ENOSPC

    monkeypatch.setattr(codes.np, "save", full)
    with pytest.raises(ArtifactError, match=r"disk full while writing .*\.codes\.parts"):
        codes.encode_dataset(tok, load_dataset(tiny_data, "test"), tmp_path / "codes", progress=False)


def as_release_0_1(folder):
    """Rewrite a tokenizer checkpoint in the layout release 0.1.0 wrote (its tokenizer/resume.py):
    optimizer state by position, RNG and task tensors in training_state/state.safetensors, the
    discriminator and its optimizer in files of their own, no rng.safetensors."""
    from safetensors.torch import load_file, save_file

    from ctfgen.artifacts import read_manifest, write_manifest

    sdir = folder / "training_state"
    state = json.loads((sdir / "state.json").read_text())
    opt_meta, task = state["optimizer"], load_file(sdir / "task.safetensors")
    position = {name: i for i, name in enumerate(opt_meta["param_groups"][0]["params"])}
    opt_meta["keys"] = [position[n] for n in opt_meta["keys"]]
    opt_meta["param_groups"][0]["params"] = list(range(len(position)))
    rng = {f"rng.{k.removeprefix('rank0.')}": v for k, v in load_file(sdir / "rng.safetensors").items()}
    save_file({**rng, **{k: v for k, v in task.items() if k in ("usage", "generator", "perm")}},
              sdir / "state.safetensors")
    save_file({k[5:]: v for k, v in task.items() if k.startswith("disc.")}, sdir / "discriminator.safetensors")
    save_file({k[6:]: v for k, v in task.items() if k.startswith("d_opt.")}, sdir / "d_optimizer.safetensors")
    for name in ("rng.safetensors", "task.safetensors"):
        (sdir / name).unlink()
    (folder / "metrics.jsonl").unlink(missing_ok=True)
    old = {"step": state["step"], "history": [], "restarted": state["task"]["restarted"],
           "batch_pos": state["task"]["batch_pos"], "seconds": state["seconds"], "optimizer": opt_meta,
           "d_optimizer": state["task"]["d_optimizer"], "rng": state["rng"][0]}
    (sdir / "state.json").write_text(json.dumps(old))
    m = read_manifest(folder)
    write_manifest(folder, kind=m["kind"], fingerprint=m["fingerprint"], config=m["config"], made_from=m["made_from"],
                   info=m["info"])


def test_a_release_0_1_tokenizer_checkpoint_with_its_adversary_resumes_exactly(tmp_path, tiny_data):
    """0.1.0's layout (the release fixture has no adversary: this one has one) resumes on the
    Trainer to the weights of an uninterrupted run."""
    import dataclasses

    from ctfgen.tokenizer.train import train_tokenizer

    c = dataclasses.replace(tokenizer_config(tiny_data, steps=6), gan_weight=0.1, gan_start=2)
    straight = train_tokenizer(c, tmp_path / "straight", progress=False)

    def crash(done):
        if done == 3:
            raise Kill

    with pytest.raises(Kill):
        train_tokenizer(c, tmp_path / "tok", progress=False, ckpt_every=3, on_step=crash)
    as_release_0_1(tmp_path / "tok")
    steps = []
    resumed = train_tokenizer(c, tmp_path / "tok", progress=False, ckpt_every=3, on_step=steps.append)
    assert steps == [4, 5, 6] and resumed["fingerprint"] == straight["fingerprint"]
    assert (tmp_path / "tok" / "train_log.jsonl").is_file()


def test_the_tokenizer_time_budget_counts_earlier_runs(tmp_path, tiny_data, monkeypatch):
    """--minutes on the Trainer: with a fake clock (40 s a step) and 1.5 minutes, a run stops after
    3 of its 8 steps, checkpointed and evaluated, also when it was killed after step 2 and resumed
    (the checkpoint carries the 80 s already spent)."""
    import dataclasses
    import types

    from ctfgen.tokenizer.train import train_tokenizer
    from ctfgen.train import trainer as trainer_module

    clock = [0.0]
    monkeypatch.setattr(trainer_module, "time", types.SimpleNamespace(time=lambda: clock[0]))
    real = trainer_module.Trainer.train_step

    def step_of_40_s(self, step):
        clock[0] += 40.0
        return real(self, step)

    monkeypatch.setattr(trainer_module.Trainer, "train_step", step_of_40_s)
    c = dataclasses.replace(tokenizer_config(tiny_data), minutes=1.5)
    straight = train_tokenizer(c, tmp_path / "straight", progress=False, ckpt_every=0)
    assert straight["train_steps"] == 3 and straight["train_seconds"] == 120.0

    def crash(done):
        if done == 2:
            raise Kill

    clock[0] = 0.0
    with pytest.raises(Kill):
        train_tokenizer(c, tmp_path / "tok", progress=False, ckpt_every=1, on_step=crash)
    clock[0] = 1000.0  # another process, later: only the training time counts
    resumed = train_tokenizer(c, tmp_path / "tok", progress=False, ckpt_every=1)
    assert resumed["train_steps"] == 3 and resumed["fingerprint"] == straight["fingerprint"]


def test_the_demo_resumes_an_unfinished_tokenizer_instead_of_reusing_it(tmp_path, tiny_data):
    from ctfgen.experiments.workspace import finished as _done
    from ctfgen.tokenizer.train import train_tokenizer

    def crash(done):
        if done == 3:
            raise Kill

    with pytest.raises(Kill):
        train_tokenizer(tokenizer_config(tiny_data), tmp_path / "tok", progress=False, ckpt_every=2, on_step=crash)
    assert not _done(tmp_path / "tok")
    train_tokenizer(tokenizer_config(tiny_data), tmp_path / "tok", progress=False, ckpt_every=2)
    assert _done(tmp_path / "tok")


def test_a_failed_encode_leaves_no_hidden_folder_without_chunks(tmp_path, capsys):
    """Issue 22: an encode that failed on a bad image left an empty `.NAME.parts/` beside --out. Without a
    finished chunk the work folder goes; with some it stays (a rerun resumes) and the message names it."""
    from PIL import Image
    from test_sample import TINY_VQ

    from ctfgen.codes import encode_dataset
    from ctfgen.data import DataConfig, load_dataset
    from ctfgen.tokenizer import VQModel, vq_preset

    data = tmp_path / "data"
    for c in ("a", "b"):
        (data / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(data / c / f"{i}.png")
    (data / "b" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"broken" * 8)  # image 9 of 12
    torch.manual_seed(0)
    tok = VQModel(vq_preset("fmnist", **TINY_VQ))
    ds = load_dataset(DataConfig(source="folder", path=str(data), resolution=16, channels=1))
    out = tmp_path / "runs"
    out.mkdir()
    with pytest.raises(CtfgenError, match=r"3.png: cannot read image"):
        encode_dataset(tok, ds, out / "codes", progress=False)
    assert sorted(p.name for p in out.iterdir()) == []
    with pytest.raises(CtfgenError, match=r"3.png: cannot read image"):
        encode_dataset(tok, ds, out / "codes", chunk=4, progress=False)  # chunks 0-3 and 4-7 finished
    assert sorted(p.name for p in out.iterdir()) == [".codes.parts"]
    assert f"2 finished chunk(s) of this encoding are kept in {out / '.codes.parts'}" in capsys.readouterr().err
