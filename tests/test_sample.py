"""Sampling: cached vs full-forward logits under guidance, token picking, stage 2 restricted to the
clusters, per-sample determinism across batch sizes and processes, pipeline folders, CLI, outputs,
the docs' example and the speed bench."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ctfgen.apps.cli import main as cli_main
from ctfgen.cluster import CoarseMap
from ctfgen.errors import CtfgenError
from ctfgen.models import build_model
from ctfgen.models.artifact import TrainedModel
from ctfgen.sample import BaselinePipeline, CTFPipeline, generate_tokens, make_pipeline, pick
from ctfgen.sample import SamplingConfig
from ctfgen.sample.sampler import sample_fine
from ctfgen.tokenizer import VQModel
from ctfgen.tokenizer.artifact import save_tokenizer
from ctfgen.tokenizer.model import vq_preset

ROOT = Path(__file__).resolve().parents[1]
VOCAB, K, GRID, CLASSES = 64, 8, 4, 3
TINY_VQ = dict(ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, z_channels=32, codebook_size=VOCAB, codebook_dim=4,
               resolution=16)
TINY_GPT = dict(n_layer=2, n_head=2, dim=32, token_dropout=0.0, resid_dropout=0.0, ffn_dropout=0.0)


def randomize_head(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    # the head starts at zero (uniform predictions); random values make the tests see real choices
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.output.weight.copy_(torch.randn(model.output.weight.shape, generator=g))
    return model.eval()


def tiny_models(seed: int = 0, code_to_coarse=None) -> dict[str, torch.nn.Module]:
    c2c = torch.arange(VOCAB) % K if code_to_coarse is None else code_to_coarse
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, num_classes=CLASSES, grid=GRID, **TINY_GPT)
    return {"ar": randomize_head(build_model("ar", "tiny", coarse_vocab=K, **common), seed + 1),
            "aux": randomize_head(build_model("aux", "tiny", coarse_vocab=K, code_to_coarse=c2c, **common), seed + 2),
            "baseline": randomize_head(build_model("baseline", "tiny", **common), seed + 3)}


def save_model_folder(model, out: Path, made_from: dict) -> Path:
    """The part of a `ctfgen train` folder that samplers read: weights + manifest."""
    TrainedModel(model, made_from=made_from).save(out)
    return out


def make_folders(root: Path, *, seed: int = 0) -> dict[str, Path]:
    torch.manual_seed(seed)
    tok = VQModel(vq_preset("fmnist", **TINY_VQ))
    tok_fp = save_tokenizer(tok, root / "tokenizer")
    cmap = CoarseMap.from_labels(torch.arange(VOCAB) % K, k=K, method="modulo", tokenizer_fingerprint=tok_fp)
    cmap.save(root / "coarse")
    models = tiny_models(seed)
    made = {"tokenizer": tok_fp, "codes": "codes0", "coarse_map": cmap.fingerprint}
    out = {"tokenizer": root / "tokenizer", "root": root}
    for role, m in models.items():
        out[role] = save_model_folder(m, root / role, {k: v for k, v in made.items()
                                                       if role != "baseline" or k != "coarse_map"})
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return make_folders(tmp_path_factory.mktemp("sample"))


@pytest.fixture(scope="module")
def ctf(folders):
    return CTFPipeline.from_folders(tokenizer=folders["tokenizer"], ar=folders["ar"], aux=folders["aux"])


@pytest.fixture(scope="module")
def base(folders):
    return BaselinePipeline.from_folders(tokenizer=folders["tokenizer"], baseline=folders["baseline"])


# ---------------------------------------------------------------- sampler core

@pytest.mark.parametrize("kind", ["ar", "baseline"])
def test_cached_guided_sampling_equals_full_recomputation(kind):
    model = tiny_models()[kind]
    B, L, scale = 4, GRID * GRID, 2.5
    labels = torch.tensor([0, 1, 2, 1])
    u = torch.rand(B, L, generator=torch.Generator().manual_seed(3))
    opts = dict(temperature=1.3, top_k=5, top_p=0.9)
    seen = []

    def step(tokens_B, pos):  # records what the cached decoder hands the sampler
        logits = model.decode_step(tokens_B, pos)
        seen.append(logits.clone())
        return logits

    tokens = generate_tokens(model, labels, u, SamplingConfig.baseline(guidance_scale=scale, **opts), step_fn=step)
    null = torch.full_like(labels, CLASSES)
    with torch.no_grad():
        full = model(tokens[:, :-1].repeat(2, 1), torch.cat([labels, null]))  # (2B, L, V), no cache
    for t, logits in enumerate(seen, start=1):
        assert torch.allclose(logits, full[:, t], atol=1e-5), f"step {t}"
    guided = torch.lerp(full[B:], full[:B], scale)
    again = torch.stack([pick(guided[:, t], u[:, t], **opts) for t in range(L)], 1)
    assert torch.equal(again, tokens)
    model.clear_cache()


def test_pick_distribution_topk_topp_argmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -3.0]])
    n = 40000
    u = torch.rand(n, generator=torch.Generator().manual_seed(0))
    for T in (1.0, 1.7):
        got = pick(logits.expand(n, -1), u, temperature=T)
        freq = torch.bincount(got, minlength=5).float() / n
        assert torch.allclose(freq, torch.softmax(logits[0] / T, -1), atol=0.01)
    assert set(pick(logits.expand(n, -1), u, top_k=2).tolist()) == {0, 1}
    p = torch.softmax(logits[0], -1)  # 0.64, 0.23, 0.09, ...: p=0.8 keeps the first two
    freq = torch.bincount(pick(logits.expand(n, -1), u, top_p=0.8), minlength=5).float() / n
    assert freq[2:].sum() == 0 and abs(freq[0] - p[0] / p[:2].sum()) < 0.01
    assert pick(logits, u[:1], argmax=True).item() == 0
    assert pick(logits, torch.tensor([0.999999]), top_k=1).item() == 0


def test_stage2_member_logits_equal_masked_head():
    aux = tiny_models()["aux"]
    cmap = CoarseMap.from_labels(aux.code_to_coarse, k=K)
    coarse = torch.randint(0, K, (3, GRID * GRID), generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 2, 1])
    with torch.no_grad():
        outside = aux.code_to_coarse[None, None, :] != coarse[..., None]
        full = aux(coarse, labels).masked_fill(outside, float("-inf"))  # (B, L, V), -inf outside each cluster
        h = aux.features(coarse, labels).flatten(0, 1)
        mem = aux.member_logits(h, coarse.flatten())
    cols = cmap.members[coarse.flatten()]
    ref = full.flatten(0, 1).gather(1, cols.clamp(min=0)).masked_fill(cols < 0, float("-inf"))
    assert torch.allclose(mem, ref, atol=1e-5)
    u = torch.rand(3, GRID * GRID)
    codes = sample_fine(aux, coarse, labels, u, SamplingConfig(stage2_argmax=True))
    assert torch.equal(codes, full.argmax(-1))
    sampled = sample_fine(aux, coarse, labels, u, SamplingConfig(stage2_temperature=1.1, stage2_guidance_scale=1.5))
    assert torch.equal(aux.code_to_coarse[sampled], coarse)  # always inside the coarse cluster


# ---------------------------------------------------------------- determinism and errors

def test_same_codes_for_batch_sizes_1_3_8(ctf, base):
    labels = [0, 1, 2, 0, 1, 2, 2, 0]
    for pipe in (ctf, base):
        runs = [pipe.generate(labels, seed=7, batch_size=b).codes for b in (1, 3, 8)]
        assert np.array_equal(runs[0], runs[1]) and np.array_equal(runs[0], runs[2])
        first4 = pipe.generate(labels[:4], seed=7, batch_size=2).codes  # a prefix of the run: same samples
        assert np.array_equal(first4, runs[0][:4])
        other = pipe.generate(labels, seed=8, batch_size=8).codes
        assert not np.array_equal(other, runs[0])


def test_same_seed_same_images_and_call_convention(ctf):
    a = ctf(class_labels=[0, 1], num_images_per_class=2, seed=3, output_type="np")
    b = ctf(class_labels=[0, 1], num_images_per_class=2, seed=3, output_type="np", batch_size=1)
    assert a.dtype == np.uint8 and a.shape == (4, 16, 16, 1) and np.array_equal(a, b)
    pil = ctf(class_labels=[2], guidance_scale=2.0, temperature=1.1, seed=0)
    assert len(pil) == 1 and pil[0].size == (16, 16)


@pytest.mark.parametrize("kwargs, match", [
    (dict(class_labels=[3]), "class_labels"),
    (dict(class_labels=[-1]), "class_labels"),
    (dict(num_images_per_class=-1), "num_images_per_class"),
    (dict(guidance_scale=0.5), "guidance_scale"),
    (dict(temperature=0.0), "temperature"),
    (dict(stage2_temperature=-1.0), "stage2_temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=-2), "top_k"),
    (dict(guidance_schedule="cosine"), "guidance_schedule"),
    (dict(output_type="pt"), "output_type"),
    (dict(batch_size=0), "batch_size"),
    (dict(cfg=2.0), "unknown sampling setting"),
])
def test_bad_settings_have_clear_errors(ctf, kwargs, match):
    with pytest.raises(CtfgenError, match=match):
        ctf(**{"class_labels": [0], **kwargs})


def test_linear_schedule_and_no_guidance_run(base):
    a = base.generate([0, 1], seed=1, guidance_schedule="linear", guidance_scale=3.0).codes
    b = base.generate([0, 1], seed=1, guidance_scale=1.0, batch_size=1).codes
    assert a.shape == b.shape == (2, GRID * GRID)


# ---------------------------------------------------------------- pipeline folders

def test_pipeline_folder_copy_and_reference(folders, tmp_path, ctf):
    copied = make_pipeline(tmp_path / "copied", tokenizer=folders["tokenizer"], ar=folders["ar"], aux=folders["aux"])
    assert not (copied / "ar" / "training_state").exists() and (copied / "ar" / "model.safetensors").is_file()
    referenced = ctf.save_pretrained(tmp_path / "ref", copy=False)
    want = ctf.generate([0, 2], seed=5).codes
    for path in (copied, referenced):
        pipe = CTFPipeline.from_pretrained(path)
        assert np.array_equal(pipe.generate([0, 2], seed=5).codes, want)
    with pytest.raises(CtfgenError, match="a .ctf. pipeline; load it with CTFPipeline"):
        BaselinePipeline.from_pretrained(copied)


def test_pipeline_refuses_components_that_do_not_belong_together(folders, tmp_path):
    made = json.loads((folders["ar"] / "manifest.json").read_text())["made_from"]
    other_map = save_model_folder(tiny_models(1)["aux"], tmp_path / "aux_other",
                                  {**made, "coarse_map": "another-map"})
    with pytest.raises(CtfgenError, match="coarse map"):
        make_pipeline(tmp_path / "p1", tokenizer=folders["tokenizer"], ar=folders["ar"], aux=other_map)
    other_tok = save_model_folder(tiny_models(1)["baseline"], tmp_path / "base_other", {"tokenizer": "another-tok"})
    with pytest.raises(CtfgenError, match="another tokenizer"):
        BaselinePipeline.from_folders(tokenizer=folders["tokenizer"], baseline=other_tok)
    with pytest.raises(CtfgenError, match="expected a 'ar' model"):
        make_pipeline(tmp_path / "p2", tokenizer=folders["tokenizer"], ar=folders["aux"], aux=folders["aux"])
    # a referenced folder that changed after `pipeline make` is refused by its fingerprint
    ar_copy = tmp_path / "ar_copy"
    save_model_folder(tiny_models()["ar"], ar_copy, made)
    pipe = make_pipeline(tmp_path / "p3", tokenizer=folders["tokenizer"], ar=ar_copy, aux=folders["aux"], copy=False)
    m = json.loads((ar_copy / "manifest.json").read_text())
    m["fingerprint"] = "changed"
    (ar_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CtfgenError, match="changed since"):
        CTFPipeline.from_pretrained(pipe)


# ---------------------------------------------------------------- CLI and outputs

def test_cli_make_and_sample_outputs(folders, tmp_path, capsys):
    pipe = tmp_path / "pipe"
    assert cli_main(["pipeline", "make", "--out", str(pipe), "--tokenizer", str(folders["tokenizer"]),
                     "--ar", str(folders["ar"]), "--aux", str(folders["aux"]), "--temperature", "1.3"]) == 0
    out = tmp_path / "out"
    args = ["sample", "--pipeline", str(pipe), "--per-class", "2", "--seed", "4", "--device", "cpu",
            "--no-progress", "--batch-size", "4"]
    assert cli_main([*args, "--grid", str(out / "grid.png"), "--png-dir", str(out / "pngs"),
                     "--npz", str(out / "s.npz")]) == 0
    with np.load(out / "s.npz") as z:
        arr, labels = z["arr_0"], z["labels"]
    assert arr.dtype == np.uint8 and arr.shape == (6, 16, 16, 3) and labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert np.array_equal(arr[..., 0], arr[..., 2])  # grey replicated
    record = json.loads((out / "pngs" / "labels.json").read_text())
    assert record["settings"]["temperature"] == 1.3 and record["settings"]["stage2_temperature"] == 1.1
    assert set(record["models"]) == {"tokenizer", "ar", "aux", "coarse_map"}
    assert [s["label"] for s in record["samples"]] == [0, 0, 1, 1, 2, 2] and len(list((out / "pngs").glob("*.png"))) == 6
    from PIL import Image

    assert Image.open(out / "grid.png").size == (2 * (2 + 2 * 18), 2 * (2 + 3 * 18))  # 3 rows of 2, scale 2
    # the same images from the folders directly, another batch size
    assert cli_main(["sample", "--tokenizer", str(folders["tokenizer"]), "--ar", str(folders["ar"]), "--aux",
                     str(folders["aux"]), "--per-class", "2", "--seed", "4", "--temperature", "1.3", "--device", "cpu",
                     "--no-progress", "--batch-size", "1", "--npz", str(out / "t.npz")]) == 0
    with np.load(out / "t.npz") as z:
        assert np.array_equal(z["arr_0"], arr)
    capsys.readouterr()
    assert cli_main([*args, "--npz", str(out / "x.npz"), "--classes", "7"]) == 2
    assert "--classes: class id 7 at position 0 is outside [0, 3)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # refused while parsing
        cli_main([*args, "--npz", str(out / "x.npz"), "--top-p", "2"])
    assert e.value.code == 2 and "argument --top-p" in capsys.readouterr().err
    assert cli_main(["sample", "--tokenizer", str(folders["tokenizer"]), "--ar", str(folders["ar"]),
                     "--npz", str(out / "x.npz")]) == 2
    assert "--aux" in capsys.readouterr().err


def run_doc_examples(doc: str, folders, tmp_path, monkeypatch) -> dict:
    """Run the python blocks of `doc` in tmp_path, with runs/{tokenizer,ar,aux,baseline} the tiny
    folders; returns their variables."""
    text = (ROOT / doc).read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, f"{doc} has no python example"
    runs = tmp_path / "runs"
    runs.mkdir()
    for name in ("tokenizer", "ar", "aux", "baseline"):
        (runs / name).symlink_to(folders[name])
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    for code in blocks:
        exec(compile(code, doc, "exec"), scope)
    return scope


@pytest.mark.parametrize("doc", ["docs/SAMPLING.md", "README.md"])
def test_docs_example_runs(doc, folders, tmp_path, monkeypatch):
    scope = run_doc_examples(doc, folders, tmp_path, monkeypatch)
    assert len(scope["images"]) == 2 and len(scope["more"]) == 2
    if doc == "docs/SAMPLING.md":
        assert (tmp_path / "class0.png").is_file()
        assert scope["arrays"].shape == (2 * CLASSES, 16, 16, 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")
def test_two_processes_make_the_same_images(folders, tmp_path):
    args = ["-m", "ctfgen", "sample", "--tokenizer", str(folders["tokenizer"]), "--baseline", str(folders["baseline"]),
            "--per-class", "3", "--seed", "2", "--device", "cpu", "--no-progress", "--batch-size", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, *args, "--npz", str(tmp_path / "one.npz")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
                          "--master_addr=127.0.0.1", f"--master_port={free_port()}", *args,
                          "--npz", str(tmp_path / "two.npz")], env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    with np.load(tmp_path / "one.npz") as a, np.load(tmp_path / "two.npz") as b:
        assert np.array_equal(a["arr_0"], b["arr_0"]) and np.array_equal(a["labels"], b["labels"])


def test_bench_speed_runs(monkeypatch, capsys, tmp_path):
    from ctfgen.benchmarks import speed as bench

    monkeypatch.setitem(bench.PRESETS, "test", dict(model="tiny", aux="tiny", vocab=64, k=8, grid=4, num_classes=3))
    assert cli_main(["bench", "speed", "--preset", "test", "--batch-size", "4", "--runs", "2", "--warmup", "1",
                     "--device", "cpu", "--json", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "ratio CTF / baseline images/s" in out and "peak RSS" in out
    data = json.loads((tmp_path / "b.json").read_text())
    assert [r["name"] for r in data["results"]] == ["baseline", "ctf"] and len(data["results"][1]["seconds"]) == 2
