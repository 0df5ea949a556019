import argparse
import json
import re

import numpy as np
import pytest
import torch

from ctfgen import ArtifactError, CtfgenError
from ctfgen.codes import CodeStore, encode_dataset
from ctfgen.data import DataConfig, load_dataset
from ctfgen.tokenizer import VQModel, import_llamagen_vq, load_tokenizer, save_tokenizer, vq_preset
from ctfgen.tokenizer.artifact import TokenizerArtifact
from ctfgen.tokenizer.train import TokenizerTrainConfig, train_tokenizer

TINY = dict(ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, z_channels=32, codebook_size=64, codebook_dim=4, resolution=16)


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    return VQModel(vq_preset("fmnist", **{**TINY, **kw}))


@pytest.fixture(scope="module")
def npz_data(tmp_path_factory):
    """Blobs of 3 classes at 16x16: easy enough for a tokenizer to learn in a few steps."""
    d = tmp_path_factory.mktemp("npz")
    rng = np.random.default_rng(0)
    for split, n in (("train", 96), ("test", 24)):
        labels = rng.integers(0, 3, n)
        yy, xx = np.mgrid[:16, :16]
        imgs = np.stack([(255 * np.exp(-((yy - 4 - 4 * c) ** 2 + (xx - 8) ** 2) / 8)).astype(np.uint8) for c in labels])
        np.savez(d / f"{split}.npz", images=imgs, labels=labels)
    return DataConfig(source="npz", path=str(d), resolution=16, channels=1)


def test_vq16_matches_llamagen_layout():
    with torch.device("meta"):
        sd = VQModel(vq_preset("vq16")).state_dict()
    # LlamaGen's file has 344 tensors, one of them the `codebook_used` statistics buffer we drop.
    assert len(sd) == 343
    assert sum(v.numel() for v in sd.values()) == 71_883_403
    expect = {
        "encoder.conv_in.weight": (128, 3, 3, 3),
        "encoder.conv_blocks.2.res.0.nin_shortcut.weight": (256, 128, 1, 1),
        "encoder.conv_blocks.3.downsample.conv.weight": (256, 256, 3, 3),
        "encoder.conv_blocks.4.attn.1.proj_out.weight": (512, 512, 1, 1),
        "encoder.conv_out.weight": (256, 512, 3, 3),
        "decoder.conv_in.weight": (512, 256, 3, 3),
        "decoder.conv_blocks.0.attn.2.q.weight": (512, 512, 1, 1),
        "decoder.conv_blocks.1.res.0.nin_shortcut.weight": (256, 512, 1, 1),
        "decoder.conv_blocks.3.upsample.conv.weight": (128, 128, 3, 3),
        "decoder.conv_out.weight": (3, 128, 3, 3),
        "quant_conv.weight": (8, 256, 1, 1),
        "post_quant_conv.weight": (256, 8, 1, 1),
        "quantize.embedding.weight": (16384, 8),
    }
    for k, shape in expect.items():
        assert tuple(sd[k].shape) == shape, k
    assert "encoder.conv_blocks.4.downsample.conv.weight" not in sd
    assert "decoder.conv_blocks.4.upsample.conv.weight" not in sd


def test_vq16_grid_is_16x16():
    cfg = vq_preset("vq16")
    assert cfg.grid == 16 and cfg.downsample == 16


def test_import_llamagen_checkpoint_strict_prefers_ema(tmp_path):
    model_sd = VQModel(vq_preset("vq16")).state_dict()
    ema_sd = {k: v.clone() + 1.0 if v.is_floating_point() else v.clone() for k, v in model_sd.items()}
    for sd in (model_sd, ema_sd):
        sd["quantize.codebook_used"] = torch.zeros(65536)
    ckpt = {"model": model_sd, "ema": ema_sd, "steps": 10, "args": argparse.Namespace(codebook_size=16384, lr=1e-4)}
    path = tmp_path / "vq_ds16_c2i.pt"
    torch.save(ckpt, path)
    imported = import_llamagen_vq(path, tmp_path / "tok")
    loaded = TokenizerArtifact.load(tmp_path / "tok")
    w = "encoder.conv_in.weight"
    assert torch.equal(loaded.module.state_dict()[w], ema_sd[w])
    assert loaded.fingerprint == imported.fingerprint
    assert loaded.manifest["made_from"]["weights"] == "ema"


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_import_refuses_arbitrary_pickles(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "args": Evil()}, path)
    with pytest.raises(ArtifactError, match="weights-only"):
        import_llamagen_vq(path, tmp_path / "tok")


def test_import_names_missing_and_misshapen_keys(tmp_path):
    sd = tiny_model().state_dict()
    sd.pop("decoder.conv_out.bias")
    path = tmp_path / "bad.pt"
    torch.save({"model": sd, "args": argparse.Namespace()}, path)
    with pytest.raises(ArtifactError, match=r"missing keys \['decoder.conv_out.bias'\]$"):
        import_llamagen_vq(path, tmp_path / "tok", config=vq_preset("fmnist", **TINY))
    with pytest.raises(ArtifactError, match=r"shape mismatches \[.*: file \(64,\), model \(128,\)"):
        import_llamagen_vq(path, tmp_path / "tok", config=vq_preset("fmnist", **{**TINY, "ch": 64}))
    assert not (tmp_path / "tok").exists()


def test_save_load_roundtrip_and_tamper_detection(tmp_path):
    m = tiny_model()
    fp = save_tokenizer(m, tmp_path / "tok")
    back = TokenizerArtifact.load(tmp_path / "tok")
    assert back.fingerprint == fp
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    assert torch.equal(back.module.encode_codes(x), m.eval().encode_codes(x))
    with pytest.raises(ArtifactError, match="already exists"):
        save_tokenizer(m, tmp_path / "tok")
    from safetensors.torch import load_file, save_file
    sd = load_file(tmp_path / "tok" / "model.safetensors")
    sd["quant_conv.bias"] += 1
    save_file(sd, tmp_path / "tok" / "model.safetensors")
    with pytest.raises(ArtifactError, match="fingerprint"):
        load_tokenizer(tmp_path / "tok")


def test_quantizer_uses_normalised_codebook():
    m = tiny_model()
    with torch.no_grad():
        m.quantize.embedding.weight.mul_(torch.rand(64, 1) * 5 + 0.1)  # stored vectors need not be unit-norm
    cb = m.codebook()
    assert torch.allclose(cb.norm(dim=-1), torch.ones(64), atol=1e-5)
    z = torch.randn(1, 4, 2, 2)
    idx = m.quantize.lookup(z)
    zn = torch.nn.functional.normalize(z, dim=1).permute(0, 2, 3, 1).reshape(-1, 4)
    assert torch.equal(idx.flatten(), torch.cdist(zn, cb).argmin(-1))



def test_quantizer_lookup_in_row_chunks_matches_one_table(monkeypatch):
    m = tiny_model()
    z = torch.randn(3, 4, 5, 5)  # 75 rows: several chunks and a ragged last one
    whole = m.quantize.lookup(z)
    monkeypatch.setattr(type(m.quantize), "LOOKUP_ROWS", 8)
    assert torch.equal(m.quantize.lookup(z), whole)

def test_bad_inputs_have_clear_errors():
    m = tiny_model()
    with pytest.raises(CtfgenError, match=r"expects images \(B, 1, H, W\)"):
        m.encode_codes(torch.zeros(1, 3, 16, 16))
    with pytest.raises(CtfgenError, match="out of range"):
        m.decode_codes(torch.full((1, 4, 4), 64))
    with pytest.raises(CtfgenError, match="unknown tokenizer preset"):
        vq_preset("vq99")
    with pytest.raises(CtfgenError, match="not divisible"):
        vq_preset("fmnist", resolution=30)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, npz_data):
    out = tmp_path_factory.mktemp("trained") / "tok"
    cfg = TokenizerTrainConfig(vq=vq_preset("fmnist", **TINY), data=npz_data, steps=60, batch_size=16,
                               lr=2e-3, warmup_steps=5, restart_every=10)
    report = train_tokenizer(cfg, out, progress=False)
    return out, report


def test_training_learns_and_reports(trained):
    out, report = trained
    assert report["psnr_db"] > 18, report  # random init sits near 6-8 dB on these blobs
    assert 0 < report["codebook_usage"] <= 1 and report["perplexity"] >= 1
    assert (out / "reconstructions.png").stat().st_size > 100
    tok = TokenizerArtifact.load(out)
    assert tok.manifest["info"]["report"]["psnr_db"] == report["psnr_db"]
    assert tok.manifest["made_from"]["data"]


def _loop_before_the_trainer(cfg: TokenizerTrainConfig) -> dict[str, torch.Tensor]:
    """The tokenizer's own training loop as it was before it ran on the Trainer (tokenizer/train.py at
    a2a3a3f), less its checkpoints and log, with flips, the adversary and dead-code restarts: the
    weights the tokenizer task must reproduce bit for bit."""
    import torch.nn.functional as F

    from ctfgen.tokenizer.losses import PatchDiscriminator, hinge_d_loss, hinge_g_loss
    from ctfgen.tokenizer.train import BatchStream, _lr_factor, restart_dead_codes, seed_all

    seed_all(cfg.seed)
    train_ds = load_dataset(cfg.data, "train")
    model = VQModel(cfg.vq).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas)
    disc = PatchDiscriminator(cfg.vq.channels).train()
    d_opt = torch.optim.Adam(disc.parameters(), lr=cfg.lr, betas=cfg.betas)
    gen = torch.Generator().manual_seed(cfg.seed)
    usage_V = torch.zeros(cfg.vq.codebook_size, dtype=torch.long)
    batches = BatchStream(len(train_ds), cfg.batch_size, gen)
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = cfg.lr * _lr_factor(step, cfg)
        x = torch.stack([train_ds[int(i)][0] for i in batches.next()])
        flip_B = torch.rand(len(x), generator=gen) < 0.5
        x[flip_B] = x[flip_B].flip(-1)
        z = model.encode_latent(x)
        zq, codes, cb_loss, commit_loss = model.quantize(z)
        rec = model.decode_latent(zq)
        loss = F.mse_loss(rec, x) + cb_loss + commit_loss
        if step >= cfg.gan_start:
            loss = loss + cfg.gan_weight * hinge_g_loss(disc(rec))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step >= cfg.gan_start:
            d_loss = hinge_d_loss(disc(x), disc(rec.detach()))
            d_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            d_opt.step()
        usage_V += torch.bincount(codes.flatten(), minlength=cfg.vq.codebook_size)
        if (step + 1) % cfg.restart_every == 0:
            restart_dead_codes(model, usage_V, z.detach(), gen)
            usage_V.zero_()
    return model.state_dict()


def test_the_trainer_trains_the_tokenizer_as_its_own_loop_did(npz_data, tmp_path):
    """Same config and seed, same machine: the Trainer's tokenizer task ends at exactly the weights
    of the loop it replaced, also across a resume (checkpoint after step 4, killed after step 5);
    the run folder is the Trainer's (training state, live metrics records)."""
    from safetensors.torch import load_file

    cfg = TokenizerTrainConfig(vq=vq_preset("fmnist", **TINY), data=npz_data, steps=8, batch_size=8, warmup_steps=2,
                               restart_every=3, gan_weight=0.1, gan_start=2, eval_limit=8, seed=5)
    want = _loop_before_the_trainer(cfg)

    def kill(done):
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_tokenizer(cfg, tmp_path / "tok", progress=False, ckpt_every=4, log_every=2, on_step=kill)
    state = tmp_path / "tok" / "training_state"
    assert (state / "task.safetensors").is_file() and (state / "rng.safetensors").is_file()
    assert [json.loads(line)["step"] for line in (tmp_path / "tok" / "metrics.jsonl").read_text().splitlines()] == [2, 4]
    train_tokenizer(cfg, tmp_path / "tok", progress=False, ckpt_every=4, log_every=2)
    records = [json.loads(line) for line in (tmp_path / "tok" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6, 8] and {"lr", "grad_norm", "batch_psnr_db"} <= set(records[0])
    got = load_file(tmp_path / "tok" / "model.safetensors")
    assert got.keys() <= want.keys() and len(got) > 10
    assert all(torch.equal(got[k], want[k]) for k in got)


def test_dead_code_restart_moves_unused_codes():
    from ctfgen.tokenizer.train import restart_dead_codes
    m = tiny_model()
    usage = torch.zeros(64, dtype=torch.long)
    usage[:10] = 1
    before = m.quantize.embedding.weight.detach().clone()
    n = restart_dead_codes(m, usage, torch.randn(2, 4, 4, 4), torch.Generator().manual_seed(0))
    after = m.quantize.embedding.weight.detach()
    assert n == 54
    assert torch.equal(before[:10], after[:10]) and not torch.equal(before[10:], after[10:])


def test_encode_store_roundtrip(trained, npz_data, tmp_path):
    out, _ = trained
    loaded = TokenizerArtifact.load(out)
    tok, ds = loaded.module, load_dataset(npz_data, "test")
    store = encode_dataset(loaded, ds, tmp_path / "codes", views="flip", batch_size=7, progress=False)
    assert store.codes.dtype == np.uint16 and store.codes.shape == (24, 2, 16)
    assert np.array_equal(store.labels, ds.labels)
    reopened = CodeStore.open(tmp_path / "codes")
    assert reopened.fingerprint == store.fingerprint and reopened.grid == (4, 4)
    reopened.check_tokenizer(loaded.fingerprint)
    x = torch.stack([ds[i][0] for i in range(4)])
    direct = tok.decode_codes(tok.encode_codes(x))
    from_disk = tok.decode_codes(torch.from_numpy(reopened.codes[:4, 0].astype(np.int64)))
    assert torch.allclose(direct, from_disk, atol=1e-6)
    flipped = tok.encode_codes(x.flip(-1)).flatten(1)
    assert np.array_equal(reopened.codes[:4, 1], flipped.numpy())



def test_encode_limit_takes_the_first_images(trained, npz_data, tmp_path):
    out, _ = trained
    tok, ds = load_tokenizer(out), load_dataset(npz_data, "test")
    full = encode_dataset(tok, ds, tmp_path / "all", views="none", progress=False)
    part = encode_dataset(tok, ds, tmp_path / "part", views="none", limit=10, batch_size=4, progress=False)
    assert part.codes.shape == (10, 1, 16) and np.array_equal(part.codes, full.codes[:10])
    assert np.array_equal(part.labels, np.asarray(ds.labels)[:10])
    manifest = json.loads((tmp_path / "part" / "manifest.json").read_text())
    assert manifest["config"]["limit"] == 10 and manifest["info"]["images"] == 10
    with pytest.raises(CtfgenError, match="limit"):
        encode_dataset(tok, ds, tmp_path / "bad", limit=-1, progress=False)

def test_codes_from_another_tokenizer_are_refused(trained, npz_data, tmp_path):
    out, _ = trained
    store = encode_dataset(load_tokenizer(out), load_dataset(npz_data, "test"), tmp_path / "codes", progress=False)
    other = tiny_model(seed=1)
    save_tokenizer(other, tmp_path / "other")
    with pytest.raises(ArtifactError, match="made with another tokenizer"):
        store.check_tokenizer(TokenizerArtifact.load(tmp_path / "other").fingerprint)


def test_cli_train_encode(tmp_path, npz_data, capsys):
    from ctfgen.apps.cli import main
    common = ["--data", "npz", "--data-path", npz_data.path, "--resolution", "16"]
    rc = main(["tokenizer", "train", "--out", str(tmp_path / "tok"), "--ch", "32", "--codebook-size", "32",
               "--steps", "3", "--batch-size", "8", *common])
    assert rc == 0
    assert main(["encode", "--tokenizer", str(tmp_path / "tok"), "--out", str(tmp_path / "codes"), "--split", "test", *common]) == 0
    # no augmentation unless asked for: one view per image (flips are wrong for digits and text)
    store = CodeStore.open(tmp_path / "codes")
    assert store.codes.shape[:2] == (24, 1) and store.manifest["config"]["views"] == "none"
    # the class ids are stated where they are decided: printed, and classes.json in the artifacts
    out = capsys.readouterr().out
    assert "3 classes (ids 0-2)" in out
    encoded = json.loads((tmp_path / "codes" / "classes.json").read_text())
    assert encoded["num_classes"] == 3 and encoded["splits"] == ["test"]
    assert sum(c["count"]["test"] for c in encoded["classes"]) == 24
    assert [c["id"] for c in encoded["classes"]] == [0, 1, 2]
    tok_classes = json.loads((tmp_path / "tok" / "classes.json").read_text())
    assert tok_classes["splits"] == ["train", "test"] and tok_classes["num_classes"] == 3
    assert main(["encode", "--tokenizer", str(tmp_path / "tok"), "--out", str(tmp_path / "codes"), *common]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["tokenizer", "import", str(tmp_path / "missing.pt"), str(tmp_path / "x")]) == 2
    assert "not found" in capsys.readouterr().err


def test_encode_with_a_limit_prints_the_counts_it_encodes(trained, npz_data, tmp_path, capsys):
    """`ctfgen encode --limit N` states the classes of the N images it encodes (as its classes.json
    does), not the whole split's."""
    from ctfgen.apps.cli import main

    out, _ = trained
    assert main(["encode", "--tokenizer", str(out), "--out", str(tmp_path / "codes"), "--split", "test", "--limit", "5",
                 "--data", "npz", "--data-path", npz_data.path, "--resolution", "16"]) == 0
    printed = capsys.readouterr().out
    encoded = json.loads((tmp_path / "codes" / "classes.json").read_text())
    counts = [c["count"]["test"] for c in encoded["classes"]]
    assert sum(counts) == 5 < len(load_dataset(npz_data, "test"))
    assert "encoding the first 5 of the 24 images of split 'test' (--limit)" in printed
    assert "images per split: test 5" in printed
    for c in encoded["classes"]:
        assert re.search(rf"^\s+{c['id']}\s+{re.escape(c['name'])}\s+{c['count']['test']}$", printed, re.M), printed


def test_tokenizer_report_with_a_limit_prints_the_counts_it_scores(trained, npz_data, capsys):
    """`ctfgen tokenizer report --limit N` states the classes of the N images it scores."""
    from ctfgen.apps.cli import main

    out, _ = trained
    assert main(["tokenizer", "report", str(out), "--split", "test", "--limit", "5",
                 "--data", "npz", "--data-path", npz_data.path, "--resolution", "16"]) == 0
    printed = capsys.readouterr().out
    assert "scoring the first 5 of the 24 images of split 'test' (--limit)" in printed
    assert "images per split: test 5" in printed


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")
def test_encode_sharded_under_torchrun_matches_one_process(trained, npz_data, tmp_path):
    import os
    import socket
    import subprocess
    import sys

    out, _ = trained
    common = ["encode", "--tokenizer", str(out), "--split", "train", "--views", "flip", "--batch-size", "10",
              "--data", "npz", "--data-path", npz_data.path, "--resolution", "16", "--device", "cpu"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "ctfgen", *common, "--out", str(tmp_path / "two")]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    single = encode_dataset(load_tokenizer(out), load_dataset(npz_data, "train"), tmp_path / "one", views="flip", progress=False)
    two = CodeStore.open(tmp_path / "two")
    assert np.array_equal(two.codes, single.codes) and np.array_equal(two.labels, single.labels)
    assert two.manifest["info"]["processes"] == 2 and two.fingerprint == single.fingerprint
    assert not any(p.name.endswith(".parts") for p in tmp_path.iterdir())


def test_lpips_from_local_files_and_training_options(tmp_path, npz_data):
    from ctfgen.tokenizer.lpips import LPIPS

    ref = LPIPS()
    vgg = {k: torch.randn_like(v) * 0.05 for k, v in ref.state_dict().items() if k.startswith("features.")}
    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 128, 256, 512, 512))}
    torch.save(vgg, tmp_path / "vgg16.pth")
    torch.save(lin, tmp_path / "vgg.pth")
    lp = LPIPS.from_files(tmp_path / "vgg16.pth", tmp_path / "vgg.pth")
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    assert lp(x, x).item() == 0.0
    assert lp(x, x.flip(-1)).item() > 0
    with pytest.raises(ArtifactError, match="LPIPS weights incomplete"):
        LPIPS.from_files(tmp_path / "vgg16.pth")
    cfg = TokenizerTrainConfig(vq=vq_preset("fmnist", **TINY), data=npz_data, steps=3, batch_size=8, warmup_steps=1,
                               lpips_weight=0.1, lpips_vgg=str(tmp_path / "vgg16.pth"), lpips_lin=str(tmp_path / "vgg.pth"),
                               gan_weight=0.1, gan_start=1, eval_limit=8)
    report = train_tokenizer(cfg, tmp_path / "tok", progress=False)
    assert report["train_steps"] == 3
