"""`ctfgen bench speed --profile`: the profile's categories account for the whole profiled batch,
each sampler's head is found, stage 2 shows up for CTF only, and the bench leaves no hooks behind."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from ctfgen.apps.cli import main as cli_main
from ctfgen.benchmarks import speed as bench
from ctfgen.sample import sampler
from ctfgen.sample import pipeline as pipeline_module
from ctfgen.sample.sampler import sample_seed

TINY = dict(model="tiny", aux="tiny", vocab=64, k=8, grid=2, num_classes=3)  # 4 tokens: few events


@pytest.fixture(scope="module")
def pipes():
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(bench.PRESETS, "tiny-profile", TINY)
        ctf, base, _ = bench.build_pipelines("tiny-profile")
    return {"baseline": base, "ctf": ctf}


@pytest.fixture(scope="module")
def profiles(pipes):
    labels_B = torch.arange(4) % TINY["num_classes"]
    seeds = [sample_seed(0, i) for i in range(4)]
    out = {}
    for name, pipe in pipes.items():
        s = pipe.settings(guidance_scale=2.0)
        pipe.sample_codes(labels_B, seeds, s)  # warm-up: the first call sets up the cache
        for m in pipe.models.values():
            if hasattr(m, "clear_cache"):
                m.clear_cache()
        out[name] = bench.profile_batch(pipe, labels_B, seeds, s)
    return out


@pytest.mark.parametrize("name", ["baseline", "ctf"])
def test_categories_cover_the_profiled_batch(profiles, name):
    seconds, wall = profiles[name]
    assert list(seconds) == list(bench.CATEGORIES) and all(v >= 0 for v in seconds.values())
    total = sum(seconds.values())
    assert sum(100 * v / total for v in seconds.values()) == pytest.approx(100.0)
    # self times add up to the batch: more than its wall time means double counting, much less
    # means ops or Python time that no category received
    assert 0.9 * wall <= total <= wall * 1.02 + 1e-3, (total, wall, seconds)
    for key in ("linear", "attention", "head", "sampling", "cache_setup", "python"):
        assert seconds[key] > 0, (key, seconds)


def test_stage2_only_for_ctf(profiles):
    assert profiles["baseline"][0]["stage2"] == 0.0
    assert profiles["ctf"][0]["stage2"] > 0.0
    # stage 2's own blocks and head run inside its range and must not leak into stage 1's rows
    ctf = profiles["ctf"][0]
    assert ctf["stage2"] > ctf["head"]


def test_profile_leaves_no_hooks_behind(pipes, profiles):
    assert pipeline_module.sample_fine is sampler.sample_fine
    for pipe in pipes.values():
        for m in pipe.models.values():
            assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())
            assert "setup_cache" not in vars(m)


def _ev(name, parent=None):
    return SimpleNamespace(name=name, cpu_parent=parent)


def test_category_rules():
    batch = _ev("ctfgen/batch")
    block = _ev("ctfgen/block", batch)
    linear = _ev("aten::linear", block)
    sdpa = _ev("aten::scaled_dot_product_attention", block)
    stage2 = _ev("ctfgen/stage2", batch)
    head = _ev("ctfgen/head", batch)
    cases = [
        (_ev("aten::mm", _ev("aten::matmul", linear)), "linear"),
        (_ev("aten::_scaled_dot_product_flash_attention_for_cpu", sdpa), "attention"),
        (_ev("aten::mul", block), "block_ops"),
        (block, "python"),
        (_ev("aten::mm", _ev("aten::linear", head)), "head"),
        (_ev("aten::mm", _ev("aten::linear", _ev("ctfgen/block", stage2))), "stage2"),
        (_ev("aten::mm", _ev("aten::linear", _ev("ctfgen/head", stage2))), "stage2"),
        (_ev("aten::index_select", _ev("aten::embedding", _ev("ctfgen/embed", batch))), "embed_norm"),
        (_ev("aten::_softmax", _ev("aten::softmax", batch)), "sampling"),
        (_ev("aten::fill_", _ev("aten::zeros", _ev("ctfgen/cache", batch))), "cache_setup"),
        (batch, "python"),  # the batch range's own time: the decoding loop between ops
        (_ev("aten::mm"), None),  # outside the profiled batch (another thread, the profiler's own)
    ]
    for ev, want in cases:
        got = bench._category(ev)
        assert got == want, (ev.name, got, want)


def test_cli_profile_table_and_json(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(bench.PRESETS, "tiny-profile", TINY)
    path = tmp_path / "speed.json"
    assert cli_main(["bench", "speed", "--preset", "tiny-profile", "--batch-size", "2", "--runs", "1",
                     "--warmup", "0", "--device", "cpu", "--threads", "1", "--profile", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    for label in bench.CATEGORIES.values():
        assert label in out
    assert "CTF / baseline with a free stage 2 = baseline_s / stage1_s" in out
    prof = json.loads(path.read_text())["profile"]
    base, ctf = (sum(prof[n]["seconds"].values()) for n in ("baseline", "ctf"))
    assert prof["baseline"]["total_s"] == pytest.approx(base)
    assert prof["free_stage2_bound"]["profiled"] == pytest.approx(base / (ctf - prof["ctf"]["seconds"]["stage2"]))
    assert "timed" in prof["free_stage2_bound"]
