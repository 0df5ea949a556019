"""A diverged run or a broken model fails loudly: training stops at the first non-finite loss or
gradient norm and keeps the last good checkpoint; the tokenizer never saves NaN; sampling refuses
non-finite logits, treats an underflowing temperature as argmax, and rebuilds a stale KV cache."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from test_sample import TINY_VQ, VOCAB, tiny_models
from test_train import cfg, make_coarse, make_codes, run_train

from ctfgen.errors import CtfgenError, TrainingDiverged
from ctfgen.models.artifact import TrainedModel
from ctfgen.sample import BaselinePipeline, generate_tokens, pick
from ctfgen.sample import SamplingConfig
from ctfgen.sample.sampler import inverse_cdf, sample_fine


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    return {"codes": make_codes(root / "codes"), "coarse": make_coarse(root / "coarse")}


def finite_file(path) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in load_file(str(path)).values() if t.is_floating_point())


# ---------------------------------------------------------------- training


def test_huge_lr_stops_at_the_first_non_finite_step_and_keeps_the_good_checkpoint(inputs, tmp_path):
    """lr 1e6: step 2 is finite but enormous, step 3's gradient norm is NaN (measured)."""
    out = tmp_path / "run"
    c = cfg(steps=20, lr=1e6, ema=0.0)
    with pytest.raises(TrainingDiverged, match=r"at step 3: loss .*gradient norm nan.*last good checkpoint \(step 2\)"):
        run_train(inputs, out, c, ckpt_every=1, log_every=50)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["info"]["step"] == 2  # nothing was written after the divergence
    assert finite_file(out / "model.safetensors") and finite_file(out / "training_state/optimizer.safetensors")
    TrainedModel.load(out)
    with pytest.raises(TrainingDiverged, match="at step 3"):  # a rerun resumes from step 2, and says so again
        run_train(inputs, out, c, ckpt_every=1, log_every=50)
    assert json.loads((out / "manifest.json").read_text())["info"]["step"] == 2


def test_no_checkpoint_is_written_for_a_run_that_diverged_before_its_first(inputs, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="No checkpoint was written"):
        run_train(inputs, out, cfg(steps=8, lr=1e6, ema=0.9), ckpt_every=0)
    assert not (out / "manifest.json").exists()


@pytest.mark.parametrize("bad_step", [1, 4])
def test_a_nan_gradient_norm_names_its_step_inside_a_log_window(inputs, tmp_path, monkeypatch, bad_step):
    clip = torch.nn.utils.clip_grad_norm_
    calls = [0]

    def clip_nan_once(*args, **kw):
        calls[0] += 1
        norm = clip(*args, **kw)
        return norm * float("nan") if calls[0] == bad_step else norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip_nan_once)
    with pytest.raises(TrainingDiverged, match=rf"at step {bad_step}: .*gradient norm nan"):
        run_train(inputs, tmp_path / "run", cfg(steps=6), ckpt_every=0, log_every=6)


def test_finite_but_diverging_loss_warns_and_is_recorded(inputs, tmp_path, capsys):
    """lr 100: the loss stays finite but far above a uniform guess (6.6 against ln 4 = 1.39, measured)."""
    out = tmp_path / "run"
    run_train(inputs, out, cfg(steps=6, lr=100.0, ema=0.0, warmup_steps=0, cosine=False), log_every=1)
    assert "is above a uniform guess" in capsys.readouterr().err
    assert "above a uniform guess" in json.loads((out / "manifest.json").read_text())["info"]["warnings"][0]


def test_tokenizer_training_stops_on_a_non_finite_loss(tmp_path, tiny_data):
    from ctfgen.tokenizer import vq_preset
    from ctfgen.tokenizer.train import TokenizerTrainConfig, train_tokenizer

    c = TokenizerTrainConfig(vq=vq_preset("fmnist", **TINY_VQ), data=tiny_data, steps=6, batch_size=8, lr=1e30,
                             warmup_steps=0)
    with pytest.raises(TrainingDiverged, match=r"tokenizer training diverged at step \d+: loss"):
        train_tokenizer(c, tmp_path / "tok", progress=False, ckpt_every=0)
    assert not (tmp_path / "tok").exists()


def test_tokenizer_with_nan_psnr_is_not_saved(tmp_path, tiny_data, monkeypatch):
    from ctfgen.tokenizer import load_tokenizer, vq_preset
    from ctfgen.train import tokenizer_task as tok_train

    real = tok_train.reconstruction_report
    monkeypatch.setattr(tok_train, "reconstruction_report", lambda *a, **k: {**real(*a, **k), "psnr_db": math.nan})
    c = tok_train.TokenizerTrainConfig(vq=vq_preset("fmnist", **TINY_VQ), data=tiny_data, steps=2, batch_size=8)
    with pytest.raises(TrainingDiverged, match=r"PSNR nan.*keeps the last good checkpoint \(step 2\).*use a lower --lr"):
        tok_train.train_tokenizer(c, tmp_path / "tok", progress=False)
    with pytest.raises(CtfgenError, match="tokenizer_checkpoint.*rerun the same"):
        load_tokenizer(tmp_path / "tok")  # the folder holds the training checkpoint, never a tokenizer


# ---------------------------------------------------------------- sampling


@pytest.mark.parametrize("bad", ["nan", "posinf", "all_neginf"])
@pytest.mark.parametrize("mode", [{}, {"top_k": 3}, {"top_p": 0.5}, {"argmax": True}])
def test_pick_refuses_non_finite_logits(bad, mode):
    logits = torch.randn(4, 10)
    if bad == "nan":
        logits[2, 5] = float("nan")
    elif bad == "posinf":
        logits[2, 5] = float("inf")
    else:
        logits[2] = float("-inf")
    with pytest.raises(CtfgenError, match="non-finite logits for 1 of 4 rows"):
        pick(logits, torch.rand(4), **mode)


def test_inverse_cdf_refuses_rows_without_mass():
    probs = torch.tensor([[0.5, 0.5], [float("nan"), 0.2], [0.0, 0.0]])
    with pytest.raises(CtfgenError, match="2 of 3 rows"):
        inverse_cdf(probs, torch.rand(3))


@pytest.mark.parametrize("temperature", [1e-38, 1e-45, 1e-30])
def test_tiny_temperature_is_argmax(temperature):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 50, generator=g) * 30
    logits[:, 7] = float("-inf")  # masked entries stay impossible
    u = torch.rand(64, generator=g)
    expect = logits.argmax(-1)
    for kw in ({}, {"top_k": 5}, {"top_p": 0.9}):
        assert torch.equal(pick(logits, u, temperature=temperature, **kw), expect), kw
    tie = torch.tensor([[1.0, 3.0, 3.0, -2.0]] * 400)
    chosen = pick(tie, torch.rand(400, generator=g), temperature=1e-38)
    assert set(chosen.tolist()) == {1, 2}  # ties share the mass, as in the limit T -> 0


def test_normal_temperatures_are_unchanged():
    """The exact-limit path only touches overflowing rows: other rows give the same bits as before."""
    g = torch.Generator().manual_seed(1)
    logits, u = torch.randn(256, 64, generator=g) * 4, torch.rand(256, generator=g)
    for t in (0.3, 1.0, 1.1):
        probs = torch.softmax(logits / t, dim=-1)
        assert torch.equal(pick(logits, u, temperature=t), inverse_cdf(probs, u))


def test_a_nan_weight_makes_sampling_fail_not_constant_images():
    models = tiny_models(0)
    base = models["baseline"]
    with torch.no_grad():
        base.norm.weight[0] = float("nan")
    with pytest.raises(CtfgenError, match="non-finite logits at token 0"):
        generate_tokens(base, torch.tensor([0, 1]), torch.rand(2, base.config.seq_len),
                        SamplingConfig.baseline(guidance_scale=2.0))
    aux = models["aux"]
    with torch.no_grad():
        aux.output.weight[3, 0] = float("nan")  # code 3's logit is nan wherever it can be picked
    coarse = torch.full((2, aux.config.seq_len), 3)  # code 3 is in cluster 3 (code % K)
    for guidance in (1.0, 2.0):
        with pytest.raises(CtfgenError, match="non-finite logits"):
            sample_fine(aux, coarse, torch.tensor([0, 1]), torch.rand(2, aux.config.seq_len),
                        SamplingConfig(stage2_guidance_scale=guidance))


# ---------------------------------------------------------------- KV cache


def test_kv_cache_follows_dtype_and_length_changes():
    model = tiny_models(0)["baseline"]
    labels, u = torch.tensor([0, 2]), torch.rand(2, model.config.seq_len)
    generate_tokens(model, labels, u)  # leaves an fp32 cache behind
    model.to(torch.bfloat16)
    after = generate_tokens(model, labels, u)
    model.clear_cache()
    fresh = generate_tokens(model, labels, u)
    assert torch.equal(after, fresh)
    assert model.layers[0].attention.k_cache.dtype == torch.bfloat16
    model.setup_cache(4, max_len=3)  # big enough a batch, too short for a whole image
    assert torch.equal(generate_tokens(model, labels, u), fresh)
    model.setup_cache(4, dtype=torch.float32)
    with pytest.raises(CtfgenError, match="KV cache is torch.float32 .* call setup_cache again"):
        model.prefill(labels)


def test_pipelines_in_two_dtypes_share_a_model(tmp_path):
    """The issue's case: an fp32 pipeline's generation, then a bf16 pipeline around the same model."""
    model = tiny_models(0)["baseline"]
    fp32 = BaselinePipeline(None, baseline=model)
    fp32.sample_codes(torch.tensor([0, 1]), [1, 2], fp32.sampling)  # the cache stays (no generate() cleanup)
    bf16 = BaselinePipeline(None, baseline=model, dtype=torch.bfloat16)
    codes = bf16.sample_codes(torch.tensor([0, 1]), [1, 2], bf16.sampling)
    assert codes.shape == (2, model.config.seq_len)
