"""Importing LlamaGen's checkpoints: containers, DDP / torch.compile prefixes, the args a checkpoint
records (size, image size), every released size, and the route from c2i_*.pt files to samples
through `ctfgen baseline import`, `pipeline make` and `sample`. The checkpoints are tiny fakes
made here with LlamaGen's key names."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ctfgen.apps.cli import main as cli_main
from ctfgen.errors import ArtifactError, CtfgenError
from ctfgen.llamagen_files import ForeignWeights, strip_wrappers
from ctfgen.llamagen_gpt import import_llamagen_gpt, load_llamagen_gpt
from ctfgen.models import build_model, count_params
from ctfgen.sample import BaselinePipeline
from ctfgen.tokenizer import VQModel, import_llamagen_vq, load_tokenizer, save_tokenizer, vq_preset
from ctfgen.tokenizer.artifact import TokenizerArtifact
from ctfgen.tokenizer.llamagen import _config as vq_config_from_file
from ctfgen.tokenizer.llamagen import infer_vq_preset

VOCAB, CLASSES = 64, 10
TINY_VQ = dict(ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, z_channels=32, codebook_size=VOCAB, codebook_dim=4,
               resolution=16)  # 16 px -> 4x4 tokens


def tiny_gpt(grid: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    m = build_model("baseline", "tiny", vocab_size=VOCAB, num_classes=CLASSES, grid=grid)
    with torch.no_grad():  # the head starts at zero; random values make the logits tell models apart
        m.output.weight.normal_()
    return m.eval()


def logits(model, grid: int = 4):
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (2, grid * grid - 1), generator=g)
    with torch.no_grad():
        return model(tokens, torch.tensor([3, 7]))


def prefixed(sd: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in sd.items()}


# ---------------------------------------------------------------- containers and wrappers

@pytest.mark.parametrize("container", ["model", "module", "state_dict", "bare"])
@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod.", "module._orig_mod."])
def test_gpt_containers_and_wrapper_prefixes(tmp_path, container, prefix):
    ref = tiny_gpt()
    sd = prefixed(ref.state_dict(), prefix)
    path = tmp_path / "ckpt.pt"
    torch.save(sd if container == "bare" else {container: sd, "steps": 5}, path)
    m = load_llamagen_gpt(path, grid=4)  # size read from the weights
    assert m.config.preset == "tiny" and torch.equal(logits(m), logits(ref))
    notes = " ".join(m.import_info["notes"])
    for p in ("module.", "_orig_mod."):
        assert (f"removed the key prefix {p!r}" in notes) == (p in prefix)
    assert m.import_info["container"] == container


def test_gpt_ema_choice_and_missing_ema(tmp_path):
    ref, ema = tiny_gpt(seed=0), tiny_gpt(seed=1)
    path = tmp_path / "c.pt"
    torch.save({"model": ref.state_dict(), "ema": prefixed(ema.state_dict(), "module.")}, path)
    assert torch.equal(logits(load_llamagen_gpt(path, grid=4)), logits(ref))  # LlamaGen's samplers: model
    assert torch.equal(logits(load_llamagen_gpt(path, grid=4, which="ema")), logits(ema))
    assert torch.equal(logits(load_llamagen_gpt(path, grid=4, which="auto")), logits(ema))
    torch.save({"model": ref.state_dict()}, tmp_path / "no_ema.pt")
    with pytest.raises(ArtifactError, match="no 'ema' weights"):
        load_llamagen_gpt(tmp_path / "no_ema.pt", grid=4, which="ema")


def test_strip_wrappers_refuses_colliding_keys():
    with pytest.raises(ArtifactError, match="two keys become 'norm.weight'"):
        strip_wrappers({"norm.weight": torch.zeros(1), "module.norm.weight": torch.zeros(1)})


# ---------------------------------------------------------------- what the checkpoint records

def test_gpt_recorded_image_size_sets_the_grid_and_refuses_a_mismatch(tmp_path):
    ref = tiny_gpt(grid=24)
    path = tmp_path / "ckpt.pt"
    args = argparse.Namespace(gpt_model="GPT-tiny", gpt_type="c2i", image_size=384, downsample_size=16,
                              vocab_size=VOCAB, num_classes=CLASSES, cls_token_num=1)
    torch.save({"model": ref.state_dict(), "args": args}, path)
    m = load_llamagen_gpt(path)  # 384 px / 16 = a 24x24 grid, not the 16x16 of the 256-px models
    assert m.config.grid == 24 and torch.equal(logits(m, 24), logits(ref, 24))
    assert any("image_size 384" in n for n in m.import_info["notes"])
    with pytest.raises(CtfgenError, match="a 24x24 token grid .* but a 16x16 grid was asked for"):
        load_llamagen_gpt(path, grid=16)
    with pytest.raises(CtfgenError, match="but a 16x16 grid"):
        load_llamagen_gpt(path, image_size=256)
    with pytest.raises(CtfgenError, match="records gpt_model 'GPT-tiny', but preset 'GPT-B'"):
        load_llamagen_gpt(path, "GPT-B")
    for key, value, message in (("gpt_type", "t2i", "only class-conditional"),
                                ("vocab_size", 16384, "record vocab_size 16384 but its weights have 64"),
                                ("cls_token_num", 120, "cls_token_num 120")):
        torch.save({"model": ref.state_dict(), "args": argparse.Namespace(**{**vars(args), key: value})}, path)
        with pytest.raises(CtfgenError, match=message):
            load_llamagen_gpt(path)


def test_gpt_image_size_from_a_released_file_name_or_refused(tmp_path):
    ref = tiny_gpt(grid=24)
    named = tmp_path / "c2i_tiny_384.pt"
    torch.save({"model": ref.state_dict()}, named)
    assert load_llamagen_gpt(named).config.grid == 24
    with pytest.raises(CtfgenError, match="file name says 384 px"):
        load_llamagen_gpt(named, image_size=256)
    anonymous = tmp_path / "consolidated.pth"
    torch.save(ref.state_dict(), anonymous)
    with pytest.raises(CtfgenError, match="does not record its image size.*--image-size 256"):
        load_llamagen_gpt(anonymous)
    assert load_llamagen_gpt(anonymous, image_size=384).config.grid == 24


def test_gpt_recorded_size_name_mismatching_the_weights(tmp_path):
    path = tmp_path / "c.pt"
    torch.save({"model": tiny_gpt().state_dict(), "args": argparse.Namespace(gpt_model="GPT-B")}, path)
    with pytest.raises(ArtifactError, match="4 layers of width 128, but preset 'B' has 12 of width 768"):
        load_llamagen_gpt(path, grid=4)


# ---------------------------------------------------------------- every released size

# parameters measured from LlamaGen's own gpt.py (docs: shared LLAMAGEN.md), V=16384, 256 tokens
LLAMAGEN_PARAMS_M = {"GPT-B": 110.9, "GPT-L": 342.9, "GPT-XL": 774.7, "GPT-XXL": 1411.0, "GPT-3B": 3096.7}


@pytest.mark.parametrize("name", list(LLAMAGEN_PARAMS_M))
def test_every_released_gpt_size(name):
    n = count_params("baseline", name, vocab_size=16384, num_classes=1000, grid=16)
    assert n / 1e6 == pytest.approx(LLAMAGEN_PARAMS_M[name], abs=0.05)
    assert count_params("baseline", name.removeprefix("GPT-"), vocab_size=16384, num_classes=1000, grid=16) == n


def test_gpt_3b_head_dim_100_rope_and_cache():
    # GPT-3B's heads are 100 wide (25 rotary pairs per axis); one such head, cached vs full forward
    m = build_model("baseline", "tiny", vocab_size=VOCAB, num_classes=CLASSES, grid=4, n_layer=1, n_head=1, dim=100)
    with torch.no_grad():
        m.output.weight.normal_()
    m.eval()
    tokens = torch.randint(0, VOCAB, (2, 15))
    cond = torch.tensor([1, 2])
    with torch.no_grad():
        full = m(tokens, cond)
        m.setup_cache(batch_size=2)
        steps = [m.prefill(cond)] + [m.decode_step(tokens[:, i], i) for i in range(15)]
    assert torch.allclose(torch.stack(steps, 1), full, atol=1e-5)


def test_vq8_preset_has_llamagens_layout():
    with torch.device("meta"):
        sd = VQModel(vq_preset("VQ-8")).state_dict()
    assert {k.split(".")[2] for k in sd if k.startswith("encoder.conv_blocks.")} == {"0", "1", "2", "3"}
    assert sd["encoder.conv_blocks.1.res.0.nin_shortcut.weight"].shape == (256, 128, 1, 1)
    assert sd["encoder.conv_blocks.3.res.0.nin_shortcut.weight"].shape == (512, 256, 1, 1)
    assert "encoder.conv_blocks.3.attn.1.q.weight" in sd and "decoder.conv_blocks.0.attn.2.q.weight" in sd
    assert "encoder.conv_blocks.3.downsample.conv.weight" not in sd and len(
        [k for k in sd if ".upsample." in k]) == 6  # three upsampling convs, weight + bias
    assert sd["quantize.embedding.weight"].shape == (16384, 8) and vq_preset("vq8").grid == 32


# ---------------------------------------------------------------- the VQ importer

def fake_vq(levels: int, args: dict | None = None, name: str = "x.pt", codebook=(16384, 8)) -> ForeignWeights:
    state = {f"encoder.conv_blocks.{i}.res.0.conv1.weight": torch.zeros(1) for i in range(levels)}
    state["quantize.embedding.weight"] = torch.zeros(codebook)
    return ForeignWeights(Path(name), state, "model", dict(args or {}))


def test_vq_preset_and_image_size_from_what_the_file_records():
    assert infer_vq_preset(fake_vq(5), None) == "vq16" and infer_vq_preset(fake_vq(4), None) == "vq8"
    fw = fake_vq(4, {"vq_model": "VQ-8", "image_size": 384, "codebook_size": 16384, "codebook_embed_dim": 8})
    cfg = vq_config_from_file(fw, None, None)
    assert cfg.ch_mult == (1, 2, 2, 4) and cfg.resolution == 384 and cfg.grid == 48
    assert vq_config_from_file(fake_vq(5), "VQ-16", 384).grid == 24
    with pytest.raises(CtfgenError, match="args record vq_model 'VQ-8', i.e. vq8, but --preset vq16 means vq16"):
        infer_vq_preset(fake_vq(4, {"vq_model": "VQ-8"}), "vq16")
    with pytest.raises(CtfgenError, match="file name says ds8"):
        infer_vq_preset(fake_vq(5, name="vq_ds8_c2i.pt"), None)
    with pytest.raises(ArtifactError, match="record codebook_size 4096 but its codebook is 16384 x 8"):
        vq_config_from_file(fake_vq(5, {"codebook_size": 4096}), None, None)
    with pytest.raises(CtfgenError, match="not a multiple"):
        vq_config_from_file(fake_vq(5), None, 250)


def test_vq_import_prefixes_containers_and_ema_choice(tmp_path):
    torch.manual_seed(0)
    model, ema = VQModel(vq_preset("fmnist", **TINY_VQ)), VQModel(vq_preset("fmnist", **TINY_VQ))
    used = {"quantize.codebook_used": torch.zeros(65536)}
    for container in ("state_dict", "module"):
        path = tmp_path / f"{container}.pt"
        torch.save({container: {**prefixed(model.state_dict(), "module._orig_mod."), **used}}, path)
        tok = import_llamagen_vq(path, tmp_path / container, config=vq_preset("fmnist", **TINY_VQ))
        notes = tok.manifest["info"]["notes"]
        assert any("'module.'" in n for n in notes) and any("'_orig_mod.'" in n for n in notes)
        assert torch.equal(load_tokenizer(tmp_path / container).quantize.embedding.weight,
                           model.quantize.embedding.weight)
    both = tmp_path / "both.pt"
    torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "args": argparse.Namespace(lr=1e-4)}, both)
    cfg = vq_preset("fmnist", **TINY_VQ)
    for weights, want in (("auto", ema), ("ema", ema), ("model", model)):
        out = tmp_path / f"w-{weights}"
        import_llamagen_vq(both, out, config=cfg, weights=weights)
        assert torch.equal(load_tokenizer(out).encoder.conv_in.weight, want.encoder.conv_in.weight)
        assert json.loads((out / "manifest.json").read_text())["made_from"]["weights"] == ("model" if want is model else "ema")


# ---------------------------------------------------------------- from a c2i_*.pt file to samples

@pytest.fixture()
def tokenizer_dir(tmp_path):
    torch.manual_seed(0)
    save_tokenizer(VQModel(vq_preset("fmnist", **TINY_VQ)), tmp_path / "vq")
    return tmp_path / "vq"


def test_baseline_import_pipeline_and_sample(tmp_path, tokenizer_dir, capsys):
    ref = tiny_gpt()
    ckpt = tmp_path / "c2i_tiny_64.pt"  # 64 px / 16 = 4x4 tokens, the tokenizer's grid
    torch.save({"model": prefixed(ref.state_dict(), "module.")}, ckpt)
    assert cli_main(["baseline", "import", str(ckpt), str(tmp_path / "gpt"), "--tokenizer", str(tokenizer_dir)]) == 0
    out = capsys.readouterr().out
    assert "removed the key prefix 'module.'" in out and "4x4 tokens" in out
    m = json.loads((tmp_path / "gpt" / "manifest.json").read_text())
    assert m["kind"] == "model" and m["made_from"]["tokenizer"] == TokenizerArtifact.load(tokenizer_dir).fingerprint
    assert m["made_from"]["llamagen_checkpoint"] == ckpt.name and len(m["made_from"]["sha256"]) == 64
    assert cli_main(["pipeline", "make", "--out", str(tmp_path / "pipe"), "--tokenizer", str(tokenizer_dir),
                     "--baseline", str(tmp_path / "gpt")]) == 0
    assert cli_main(["sample", "--pipeline", str(tmp_path / "pipe"), "--classes", "3,7", "--per-class", "2",
                     "--npz", str(tmp_path / "s.npz"), "--device", "cpu", "--no-progress"]) == 0
    # the imported folder samples exactly what the checkpoint's own weights sample
    direct = BaselinePipeline(load_tokenizer(tokenizer_dir), models={"baseline": ref})
    want = direct.generate([3, 3, 7, 7], seed=0, progress=False)
    with np.load(tmp_path / "s.npz") as f:
        assert np.array_equal(f["labels"], [3, 3, 7, 7])
        assert np.array_equal(f["arr_0"][..., :1] if want.images.shape[-1] == 1 else f["arr_0"], want.images)


def test_baseline_import_refuses_a_tokenizer_of_another_grid_or_vocabulary(tmp_path, tokenizer_dir):
    big = tiny_gpt(grid=24)
    torch.save({"model": big.state_dict(), "args": argparse.Namespace(image_size=384)}, tmp_path / "c.pt")
    with pytest.raises(ArtifactError, match=r"samples 24x24 tokens but the tokenizer .* serves 4x4 .*--resolution 96"):
        import_llamagen_gpt(tmp_path / "c.pt", tmp_path / "out", tokenizer=tokenizer_dir)
    # a file that records no size is taken at the tokenizer's grid, and says so
    torch.save(tiny_gpt().state_dict(), tmp_path / "consolidated.pth")
    model, _ = import_llamagen_gpt(tmp_path / "consolidated.pth", tmp_path / "ok", tokenizer=tokenizer_dir)
    assert model.config.grid == 4 and any("the tokenizer's" in n for n in model.import_info["notes"])
    other = build_model("baseline", "tiny", vocab_size=128, num_classes=CLASSES, grid=4)
    torch.save(other.state_dict(), tmp_path / "v128.pth")
    with pytest.raises(ArtifactError, match="vocabulary of 128 codes but the tokenizer"):
        import_llamagen_gpt(tmp_path / "v128.pth", tmp_path / "no", tokenizer=tokenizer_dir)
    assert not (tmp_path / "no").exists()
