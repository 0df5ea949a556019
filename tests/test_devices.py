"""Device and dtype: the faults a GPU would show, caught where possible on the CPU.

Tests parametrised by device run on the CPU here and, marked `cuda`, on a GPU (`pytest -m cuda`,
which scripts/gpu_check.sh runs; skipped without one). They run the models, the trainer, the
samplers, the KV cache and the tokenizer in bf16 (weights and cache in bf16, or bf16 autocast as
the trainer uses it) and check that what the code creates follows the model's device and dtype.
CPU-only tests build the models on the meta device, where any tensor the code makes on the
default device instead of the model's would meet a meta tensor and fail, as it would on a GPU.
"""
from __future__ import annotations

import copy

import pytest
import torch

from ctfgen.errors import CtfgenError
from ctfgen.models import build_model
from ctfgen.sample import BaselinePipeline, CTFPipeline, SamplingConfig, generate_tokens
from ctfgen.sample.decoding import make_step_fn
from ctfgen.tokenizer import VQModel
from ctfgen.tokenizer.model import vq_preset

from test_sample import CLASSES, GRID, K, TINY_VQ, VOCAB, make_folders, tiny_models

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
L = GRID * GRID


def _batch(B: int = 3, seed: int = 0, device="cpu") -> dict:
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, VOCAB, (B, L), generator=g)
    return {"codes": codes.to(device), "coarse": (codes % K).to(device),
            "label": torch.randint(0, CLASSES, (B,), generator=g).to(device)}


def _assert_follows(model: torch.nn.Module, device: str, dtype: torch.dtype) -> None:
    """Every parameter and buffer on `device`; floating ones in `dtype`, except the rotary table,
    which stays fp32 as LlamaGen keeps it; integer buffers (code_to_coarse) stay integer."""
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        assert t.device.type == device, name
        if name.startswith("rope_"):
            assert t.dtype == torch.float32, name
        elif t.dtype.is_floating_point:
            assert t.dtype == dtype, name
        else:
            assert t.dtype == torch.long, name


# ---------------------------------------------------------------- device-parametrised

@pytest.mark.parametrize("device", DEVICES)
def test_models_train_in_bf16_weights_and_under_autocast(device):
    for kind, model in tiny_models().items():
        model.train()
        b = _batch(device=device)
        bf16 = copy.deepcopy(model).to(device=device, dtype=torch.bfloat16)
        _assert_follows(bf16, device, torch.bfloat16)
        loss, metrics = bf16.compute_loss(b)
        loss.backward()
        assert loss.dtype == torch.float32 and loss.device.type == device and torch.isfinite(loss), kind
        assert all(p.grad.dtype == torch.bfloat16 for p in bf16.parameters() if p.grad is not None), kind
        fp32 = model.to(device)
        with torch.autocast(device, dtype=torch.bfloat16):
            loss, metrics = fp32.compute_loss(b)
        loss.backward()
        assert torch.isfinite(loss) and metrics["acc"].device.type == device, kind
        assert all(p.grad.dtype == torch.float32 for p in fp32.parameters() if p.grad is not None), kind


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["ar", "baseline"])
def test_kv_cache_matches_full_forward_in_bf16(device, kind):
    m = tiny_models()[kind].to(device=device, dtype=torch.bfloat16).eval()
    b = _batch(device=device)
    tokens, label = b["codes" if kind == "baseline" else "coarse"], b["label"]
    with torch.no_grad():
        full = m(tokens[:, :-1], label)
    m.setup_cache(batch_size=4, dtype=torch.bfloat16)
    cache = m.layers[0].attention.k_cache
    assert cache.dtype == torch.bfloat16 and cache.device.type == device
    steps = [m.prefill(label)] + [m.decode_step(tokens[:, i], i) for i in range(L - 1)]
    cached = torch.stack(steps, 1)
    scale = full.abs().max()
    # bf16 rounds differently along the two paths (attention over a prefix vs a causal mask)
    assert (cached - full).abs().max() <= 0.03 * scale
    m.setup_cache(batch_size=4, dtype=torch.bfloat16)
    pos_t = torch.zeros((), dtype=torch.long, device=device)
    static = [m.prefill(label)]
    for i in range(L - 1):
        pos_t.fill_(i)
        static.append(m.decode_step_static(tokens[:, i], pos_t))
    assert (torch.stack(static, 1) - full).abs().max() <= 0.03 * scale
    m.clear_cache()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pipelines_sample_on_device(tmp_path, device, dtype):
    folders = make_folders(tmp_path)
    ctf = CTFPipeline.from_folders(tokenizer=folders["tokenizer"], ar=folders["ar"], aux=folders["aux"],
                                   device=device, dtype=dtype)
    base = BaselinePipeline.from_folders(tokenizer=folders["tokenizer"], baseline=folders["baseline"],
                                         device=device, dtype=dtype)
    for pipe in (ctf, base):
        for m in pipe.models.values():
            _assert_follows(m, device, dtype)
        a = pipe.generate([0, 1, 2, 1], seed=3, batch_size=3)
        again = pipe.generate([0, 1, 2, 1], seed=3, batch_size=4)
        assert a.codes.shape == (4, L) and a.codes.min() >= 0 and a.codes.max() < VOCAB
        assert (a.codes == again.codes).all()  # per-sample randomness, on any device and dtype
        assert a.images.dtype.name == "uint8" and a.images.shape[0] == 4


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["ar", "aux", "baseline"])
def test_trainer_runs_bf16_autocast(tmp_path, device, kind):
    from safetensors.torch import load_file

    from ctfgen.models.artifact import TrainedModel
    from ctfgen.train import RunOptions, TrainConfig, train
    from test_train import SMALL, make_codes, make_coarse

    codes, coarse = make_codes(tmp_path / "codes"), make_coarse(tmp_path / "coarse")
    res = train(TrainConfig(kind=kind, preset="tiny", steps=2, batch_size=8, lr=1e-2, model_overrides=SMALL),
                codes_dir=codes, coarse_map_dir=None if kind == "baseline" else coarse, out_dir=tmp_path / "run",
                run=RunOptions(device=device, precision="bf16", progress=False, log_every=1))
    assert res.finished and all(torch.isfinite(torch.tensor(r["loss"])) for r in res.records)
    memory = "max_mem_gb" if device == "cuda" else "max_rss_gb"
    assert all(r[memory] > 0 for r in res.records)
    weights = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert all(t.dtype in (torch.float32, torch.int64) for t in weights.values())  # master weights stay fp32
    model = TrainedModel.load(tmp_path / "run", device).module
    _assert_follows(model, device, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_tokenizer_encode_decode_on_device(device):
    torch.manual_seed(0)
    tok = VQModel(vq_preset("fmnist", **TINY_VQ)).eval()
    images = torch.rand(3, 1, 16, 16) * 2 - 1
    codes_cpu, decoded_cpu = tok.encode_codes(images), tok.decode_codes(torch.arange(48).view(3, 16) % VOCAB)
    tok.to(device)
    codes = tok.encode_codes(images.to(device))
    assert codes.device.type == device and codes.dtype == torch.long
    assert (codes.cpu() == codes_cpu).float().mean() >= 0.9  # TF32 convolutions may flip near-ties
    decoded = tok.decode_codes((torch.arange(48).view(3, 16) % VOCAB).to(device))
    assert decoded.device.type == device and torch.allclose(decoded.cpu(), decoded_cpu, atol=1e-2)
    half = copy.deepcopy(tok).to(torch.bfloat16)
    decoded_bf16 = half.decode_codes((torch.arange(48).view(3, 16) % VOCAB).to(device))
    assert decoded_bf16.dtype == torch.bfloat16 and (decoded_bf16.float() - decoded).abs().max() < 0.1


@pytest.mark.parametrize("device", DEVICES)
def test_aux_loss_formulations_agree_on_device(device):
    torch.manual_seed(1)
    c2c = torch.randint(0, K, (VOCAB,))
    c2c[:K] = torch.arange(K)
    m = build_model("aux", "tiny", vocab_size=VOCAB, num_classes=CLASSES, grid=GRID, coarse_vocab=K,
                    code_to_coarse=c2c, n_layer=1, dim=32, n_head=2).to(device).eval()
    torch.nn.init.normal_(m.output.weight, std=0.5)
    b = _batch(device=device)
    b["coarse"] = m.code_to_coarse[b["codes"]]
    out = {}
    for impl in ("loop", "gather", "masked"):
        m.loss_impl = impl
        m.zero_grad()
        with torch.autocast(device, dtype=torch.bfloat16):
            loss, _ = m.compute_loss(b)
        loss.backward()
        out[impl] = (loss.item(), m.output.weight.grad.clone())
    for impl in ("loop", "gather"):
        assert out[impl][0] == pytest.approx(out["masked"][0], rel=2e-2)
        assert torch.allclose(out[impl][1], out["masked"][1], atol=2e-2 * out["masked"][1].abs().max())


@pytest.mark.cuda
@pytest.mark.parametrize("mode,dtype", [("cudagraph", torch.float32), ("cudagraph", torch.bfloat16),
                                        ("inductor", torch.bfloat16)])  # inductor compiles for ~20 s: once
def test_compiled_decoding_matches_eager_on_gpu(mode, dtype):
    model = tiny_models()["ar"].to(device="cuda", dtype=dtype)
    labels = torch.tensor([0, 1, 2])
    u = torch.rand(3, L, generator=torch.Generator().manual_seed(0))
    seen = {}
    for name, fn in (("eager", None), (mode, make_step_fn(model, mode))):
        logits = []

        def step(tokens_B, pos, fn=fn):
            out = (fn or model.decode_step)(tokens_B, pos)
            logits.append(out.clone())
            return out
        model.setup_cache(6, dtype=dtype)
        tokens = generate_tokens(model, labels, u, SamplingConfig.baseline(guidance_scale=2.0), step_fn=step)
        for _ in range(2):  # later batches replay the captured graph with other tokens
            model.setup_cache(6, dtype=dtype)
            again = generate_tokens(model, labels, u, SamplingConfig.baseline(guidance_scale=2.0), step_fn=step)
        seen[name] = (tokens, again, torch.stack(logits))
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    ref = seen["eager"][2]
    assert (seen[mode][2] - ref).abs().max() <= tol * ref.abs().max()
    assert torch.equal(seen[mode][0], seen[mode][1])
    model.clear_cache()


# ---------------------------------------------------------------- CPU only: meta device, compile graph

def test_meta_device_models_losses_caches_and_sampling():
    common = dict(vocab_size=VOCAB, num_classes=CLASSES, grid=GRID, n_layer=2, n_head=2, dim=32)
    with torch.device("meta"):
        models = {"ar": build_model("ar", "tiny", coarse_vocab=K, **common),
                  "aux": build_model("aux", "tiny", coarse_vocab=K, code_to_coarse=torch.arange(VOCAB) % K,
                                     **common),
                  "baseline": build_model("baseline", "tiny", **common)}
    b = _batch(device="meta")
    for kind, m in models.items():
        _assert_follows(m, "meta", torch.float32)
        if kind == "aux":
            m.loss_impl = "masked"  # the one formulation without data-dependent shapes
        loss, metrics = m.compute_loss(b)
        assert loss.device.type == "meta" and loss.dtype == torch.float32, kind
        loss.backward()
    for kind in ("ar", "baseline"):
        m = models[kind].to(torch.bfloat16).eval()
        m.setup_cache(6)
        assert m.layers[0].attention.k_cache.device.type == "meta"
        assert m.layers[0].attention.k_cache.dtype == torch.bfloat16
        labels = torch.tensor([0, 1, 2], device="meta")
        assert m.prefill(torch.cat([labels, labels])).device.type == "meta"
        step = m.decode_step_static(torch.zeros(6, dtype=torch.long, device="meta"),
                                    torch.zeros((), dtype=torch.long, device="meta"))
        assert step.device.type == "meta" and step.dtype == torch.float32
        tokens = generate_tokens(m, torch.tensor([0, 1, 2]), torch.rand(3, L), SamplingConfig.baseline(guidance_scale=2.0))
        assert tokens.device.type == "meta" and tokens.shape == (3, L)
    with pytest.raises(CtfgenError, match="meta"):
        models["aux"].member_loss(torch.zeros(2, 32, device="meta"), torch.zeros(2, dtype=torch.long, device="meta"),
                                  torch.zeros(2, dtype=torch.long, device="meta"), impl="loop")


def test_kv_cache_buffers_follow_the_model():
    m = tiny_models()["baseline"].eval()
    m.setup_cache(4)
    assert "layers.0.attention.k_cache" not in m.state_dict()  # not saved: checkpoints stay LlamaGen's
    m.to(torch.bfloat16)
    _assert_follows(m, "cpu", torch.bfloat16)
    assert m.layers[0].attention.k_cache.dtype == torch.bfloat16


def test_static_decode_traces_to_one_graph_for_all_positions():
    """What CUDA graphs and inductor need: the whole step in one graph (fullgraph), the same graph at
    every position (no recompilation), mutating the cache buffers in place."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    model = tiny_models()["ar"]
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model.decode_step_static, backend=counter, fullgraph=True)
    labels = torch.tensor([0, 1, 2])
    u = torch.rand(3, L, generator=torch.Generator().manual_seed(0))
    pos_t = torch.zeros((), dtype=torch.long)
    logits = {"eager": [], "compiled": []}

    def record(name, fn):
        def step(tokens_B, pos):
            out = fn(tokens_B, pos)
            logits[name].append(out.clone())
            return out
        return step

    def compiled_step(tokens_B, pos):
        pos_t.fill_(pos)
        return compiled(tokens_B, pos_t)
    model.setup_cache(6)
    eager = generate_tokens(model, labels, u, step_fn=record("eager", model.decode_step))
    model.setup_cache(6)
    again = generate_tokens(model, labels, u, step_fn=record("compiled", compiled_step))
    assert counter.frame_count == 1
    assert torch.equal(eager, again)
    assert torch.allclose(torch.stack(logits["compiled"]), torch.stack(logits["eager"]), atol=1e-5)
    torch._dynamo.reset()


def test_compile_modes_are_checked():
    model = tiny_models()["ar"]
    with pytest.raises(CtfgenError, match="CUDA"):
        make_step_fn(model, "cudagraph")
    with pytest.raises(CtfgenError, match="compile must be one of"):
        BaselinePipeline(None, baseline=tiny_models()["baseline"], compile="turbo")
