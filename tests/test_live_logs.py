"""Live training logs beside metrics.jsonl: TensorBoard (`--log-to tensorboard`) and W&B offline
(`--log-to wandb`), from rank 0 only, across checkpoints and a resume after a crash."""
from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types

import pytest

from ctfgen.errors import CtfgenError
from ctfgen.train import RunOptions, TrainConfig, train
from ctfgen.train.logs import MetricsLog

from test_train import SMALL, make_coarse, make_codes

LOGGED = {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "train/max_rss_gb", "train/acc"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("logs")
    return make_codes(root / "codes"), make_coarse(root / "coarse")


def _train(inputs, out, *, on_step=None, **run):
    codes, coarse = inputs
    return train(TrainConfig(kind="ar", preset="tiny", steps=4, batch_size=8, lr=1e-2, model_overrides=SMALL),
                 codes_dir=codes, coarse_map_dir=coarse, out_dir=out, on_step=on_step,
                 run=RunOptions(device="cpu", progress=False, log_every=1, ckpt_every=2, **run))


def test_tensorboard_scalars_survive_checkpoints_and_a_crash(inputs, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def crash_after_3(done):
        if done == 3:  # step 3 is logged, but the last checkpoint is step 2
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(inputs, tmp_path / "run", on_step=crash_after_3, tensorboard=True)
    _train(inputs, tmp_path / "run", tensorboard=True)
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    assert LOGGED <= set(acc.Tags()["scalars"])
    for tag in LOGGED:
        assert [e.step for e in acc.Scalars(tag)] == [1, 2, 3, 4], tag  # the crashed run's step 3 purged
    lr = [e.value for e in acc.Scalars("train/lr")]
    assert lr == pytest.approx([1e-2 * 8 / 256] * 4)


def test_no_live_logs_unless_asked(inputs, tmp_path):
    _train(inputs, tmp_path / "run")
    assert not (tmp_path / "run" / "tensorboard").exists() and not (tmp_path / "run" / "wandb").exists()
    assert (tmp_path / "run" / "metrics.jsonl").is_file()


class _FakeRun:
    def __init__(self, calls, kwargs):
        self.calls = calls
        calls.append(("init", kwargs))

    def log(self, data, step):
        self.calls.append(("log", step, dict(data)))

    def finish(self):
        self.calls.append(("finish",))


@pytest.fixture
def fake_wandb(monkeypatch):
    calls: list = []
    module = types.ModuleType("wandb")
    module.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    module.init = lambda **kw: _FakeRun(calls, kw)
    monkeypatch.setitem(sys.modules, "wandb", module)
    return calls


def test_wandb_offline_one_run_id_across_checkpoints(inputs, tmp_path, fake_wandb):
    _train(inputs, tmp_path / "run", wandb=True)
    inits = [c[1] for c in fake_wandb if c[0] == "init"]
    assert inits and all(kw["mode"] == "offline" and kw["dir"] == str(tmp_path / "run") for kw in inits)
    assert len({kw["id"] for kw in inits}) == 1 and inits[0]["resume"] == "allow"
    assert inits[0]["config"]["train"]["kind"] == "ar"
    logs = [c for c in fake_wandb if c[0] == "log"]
    assert [c[1] for c in logs] == [1, 2, 3, 4] and LOGGED <= set(logs[0][2])
    # closed before each checkpoint swaps the folder (steps 2 and 4) and at the end
    assert sum(c[0] == "finish" for c in fake_wandb) == sum(c[0] == "init" for c in fake_wandb)
    assert (tmp_path / "run" / "wandb").is_dir()


def test_only_rank_zero_logs(tmp_path, fake_wandb):
    log = MetricsLog(tmp_path / "rank1", enabled=False, tensorboard=True, wandb=True)
    log.write({"step": 1, "loss": 1.0})
    log.close()
    assert fake_wandb == [] and not (tmp_path / "rank1").exists()


def test_missing_package_is_named(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(CtfgenError, match="tensorboard.*not installed.*pip install"):
        RunOptions(tensorboard=True)
    with pytest.raises(CtfgenError, match="precision"):
        RunOptions(precision="fp16")
    with pytest.raises(CtfgenError, match="aux_loss"):
        RunOptions(aux_loss="fastest")


def test_log_flag_passes_through_torchrun():
    """torchrun parses the whole command line: `--log` would be taken for its --log-dir."""
    from torch.distributed.run import get_args_parser

    args = get_args_parser().parse_args(["--standalone", "--nproc_per_node=1", "-m", "ctfgen", "train", "ar",
                                         "--log-to", "tensorboard", "--log-every", "5"])
    assert args.training_script_args[-4:] == ["--log-to", "tensorboard", "--log-every", "5"]


def test_cli_log_to_and_precision(inputs, tmp_path):
    pytest.importorskip("tensorboard")
    from ctfgen.apps.cli import main

    codes, coarse = inputs
    assert main(["train", "aux", "--codes", str(codes), "--coarse-map", str(coarse), "--out", str(tmp_path / "run"),
                 "--steps", "2", "--batch-size", "8", "--device", "cpu", "--no-progress", "--log-every", "1",
                 "--log-to", "tensorboard", "--precision", "bf16", "--aux-loss", "gather",
                 "--model-opt", "n_layer=1", "--model-opt", "dim=32", "--model-opt", "n_head=2"]) == 0
    assert any((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
