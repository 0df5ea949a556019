"""Editing (sample/editing.py, sample/gibbs.py): the teacher-forced prefix through the KV cache gives a
full forward pass's logits, kept positions keep their exact codes, edits are reproducible and do not
depend on the batch size, the Gibbs full conditional equals the exact likelihood's, and bad input is
refused with a message naming the value."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ctfgen.errors import CtfgenError
from ctfgen.evaluate.nll import gpt_nll
from ctfgen.sample import SamplingConfig, generate_tokens, pick
from ctfgen.sample.edit_sources import npz_source
from ctfgen.sample.editing import prefix_mask, region_mask
from ctfgen.sample.gibbs import full_conditional, gibbs_sweeps, sequence_log_probs
from ctfgen.sample.outputs import save_npz
from test_sample import CLASSES, GRID, K, TINY_VQ, run_doc_examples, tiny_models
from test_sample import base, ctf, folders  # noqa: F401 (the tiny pipelines' fixtures)

L = GRID * GRID
RES = TINY_VQ["resolution"]


@pytest.fixture(scope="module")
def drawn(ctf, base):
    return {"ctf": ctf.generate([0, 1, 2, 1], seed=3), "baseline": base.generate([0, 1, 2, 1], seed=3)}


# ---------------------------------------------------------------- teacher forcing through the cache

@pytest.mark.parametrize("kind", ["ar", "baseline"])
@pytest.mark.parametrize("P", [1, 5, L - 1])
def test_prefilled_prefix_gives_the_full_forward_logits(kind, P):
    model = tiny_models()[kind]
    V = model.config.out_vocab
    g = torch.Generator().manual_seed(P)
    tokens = torch.randint(V, (3, L), generator=g)
    labels = torch.tensor([0, 2, 1])
    with torch.no_grad():
        full = model(tokens[:, :-1], labels)  # (B, L, V), no cache
    model.setup_cache(3)
    assert torch.allclose(model.prefill(labels, tokens[:, :P]), full[:, P], atol=1e-5)
    model.clear_cache()

    # a completion: every logit the sampler gets after the prefill is the full pass's, guided
    scale, opts = 2.5, dict(temperature=1.3, top_k=5)
    keep = torch.as_tensor(prefix_mask(P, L))
    u = torch.rand(3, L, generator=g)
    seen = {}

    def step(tokens_B, pos):
        seen[pos + 1] = model.decode_step(tokens_B, pos).clone()
        return seen[pos + 1]

    out = generate_tokens(model, labels, u, SamplingConfig.baseline(guidance_scale=scale, **opts), step_fn=step,
                          given_BL=tokens, keep_L=keep)
    assert torch.equal(out[:, :P], tokens[:, :P])
    with torch.no_grad():
        full = model(out[:, :-1].repeat(2, 1), torch.cat([labels, torch.full_like(labels, CLASSES)]))
    assert sorted(seen) == list(range(P + 1, L))
    for t, logits in seen.items():
        assert torch.allclose(logits, full[:, t], atol=1e-5), f"step {t}"
    guided = torch.lerp(full[3:], full[:3], scale)
    again = torch.stack([pick(guided[:, t], u[:, t], **opts) for t in range(P, L)], 1)
    assert torch.equal(again, out[:, P:])
    model.clear_cache()


# ---------------------------------------------------------------- what is kept

def _kept(edits):
    """The edited codes at kept positions, and the source's there."""
    src = edits.source.codes[edits.source_index]
    return edits.samples.codes[:, edits.kept_L], src[:, edits.kept_L]


@pytest.mark.parametrize("call", [
    dict(method="complete", keep_tokens=6),
    dict(method="inpaint", region=(1, 1, 2, 2), mode="layout"),
    dict(method="inpaint", region=(0, 2, 3, 2), mode="detail"),
])
def test_kept_positions_keep_their_exact_codes(ctf, base, drawn, call):
    call = dict(call)
    method = call.pop("method")
    for name, pipe in (("ctf", ctf), ("baseline", base)):
        if call.get("mode") == "detail" and name == "baseline":
            with pytest.raises(CtfgenError, match="mode 'detail' redraws CTF's stage 2 only"):
                getattr(pipe, method)(drawn[name], **call)
            continue
        edits = getattr(pipe, method)(drawn[name], n=2, seed=1, **call)
        assert edits.samples.codes.shape == (8, L) and list(edits.source_index) == [0, 0, 1, 1, 2, 2, 3, 3]
        kept, src = _kept(edits)
        r = call.get("region")
        assert edits.kept_L.sum() == (call["keep_tokens"] if r is None else L - r[2] * r[3])
        assert np.array_equal(kept, src)
        assert not np.array_equal(edits.samples.codes, drawn[name].codes[edits.source_index])  # something redrawn
        if name == "ctf":
            coarse = edits.samples.coarse
            c2c = ctf.models["aux"].code_to_coarse.numpy()
            assert np.array_equal(c2c[edits.samples.codes], coarse)  # stage 2 stays in its clusters
            layout_kept = np.ones(L, bool) if call.get("mode") == "detail" else edits.kept_L
            assert np.array_equal(coarse[:, layout_kept], drawn["ctf"].coarse[edits.source_index][:, layout_kept])


def test_variations_keep_the_coarse_map_and_change_the_details(ctf, base, drawn):
    edits = ctf.vary(drawn["ctf"], n=3, seed=0, stage2_temperature=2.0)
    src = drawn["ctf"].coarse[edits.source_index]
    assert np.array_equal(edits.samples.coarse, src) and not edits.kept_L.any()
    assert len({edits.samples.codes[i].tobytes() for i in range(3)}) == 3  # three different variations
    assert edits.samples.images.shape == (12, RES, RES, 1)
    with pytest.raises(CtfgenError, match="vary: detail variations redraw CTF's stage 2"):
        base.vary(drawn["baseline"])


def test_complete_from_nothing_is_generate_and_from_everything_is_the_source(ctf, base, drawn):
    for name, pipe in (("ctf", ctf), ("baseline", base)):
        fresh = pipe.complete(drawn[name], keep_tokens=0, seed=9)
        again = pipe.generate(drawn[name].labels, seed=9)
        assert np.array_equal(fresh.samples.codes, again.codes) and np.array_equal(fresh.samples.images, again.images)
        same = pipe.complete(drawn[name], keep_tokens=L, seed=9)
        assert np.array_equal(same.samples.codes, drawn[name].codes)


@pytest.mark.parametrize("method, kw", [("complete", dict(keep_tokens=7)), ("inpaint", dict(region=(1, 0, 2, 3))),
                                        ("inpaint", dict(region=(1, 0, 2, 3), gibbs_sweeps=1)),
                                        ("vary", dict(stage2_temperature=1.5))])
def test_edits_are_reproducible_and_independent_of_the_batch_size(ctf, base, drawn, method, kw):
    for name, pipe in (("ctf", ctf), ("baseline", base)):
        if method == "vary" and name == "baseline":
            continue
        if kw.get("gibbs_sweeps") and name == "baseline":
            kw = {**kw, "region": (1, 0, 1, 2)}  # the baseline scores every code: keep it small
        runs = [getattr(pipe, method)(drawn[name], n=2, seed=4, batch_size=bs, **kw).samples for bs in (1, 3, 8)]
        for r in runs[1:]:  # the codes (the decoder's float rounding may move a pixel by 1 with the batch)
            assert np.array_equal(r.codes, runs[0].codes)
            assert np.abs(r.images.astype(int) - runs[0].images).max() <= 1
        other = getattr(pipe, method)(drawn[name], n=2, seed=5, **kw).samples
        assert not np.array_equal(other.codes, runs[0].codes)


# ---------------------------------------------------------------- Gibbs

def test_full_conditional_is_the_exact_likelihood_normalised():
    model = tiny_models()["ar"]
    tokens = torch.randint(K, (2, L), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([1, 2])
    s = SamplingConfig.baseline(guidance_scale=1.0, temperature=1.0)
    for i in (0, 6, L - 1):
        got = full_conditional(model, tokens, labels, i, s)
        for b in range(2):
            cand = tokens[b].repeat(K, 1)
            cand[:, i] = torch.arange(K)
            logp = -gpt_nll(model, cand, labels[b].repeat(K))  # the whole sequence, every factor
            assert torch.allclose(got[b].double(), torch.log_softmax(logp, 0), atol=1e-4)
    # guided, at a temperature: the cached prefix (in chunks of candidates) against full forward passes
    guided = SamplingConfig.baseline(guidance_scale=2.5, guidance_schedule="linear", temperature=1.3)
    for i in (0, 9, L - 1):
        got = full_conditional(model, tokens, labels, i, guided, chunk=3)
        for b in range(2):
            cand = tokens[b].repeat(K, 1)
            cand[:, i] = torch.arange(K)
            logp = sequence_log_probs(model, cand, labels[b].repeat(K), guided).sum(1)
            assert torch.allclose(got[b], torch.log_softmax(logp, 0), atol=1e-4)
    model.clear_cache()


def test_gibbs_sweeps_touch_only_the_region():
    model = tiny_models()["ar"]
    tokens = torch.randint(K, (3, L), generator=torch.Generator().manual_seed(1))
    region = torch.as_tensor(region_mask((1, 1, 2, 2), GRID))
    s = SamplingConfig()
    out = gibbs_sweeps(model, tokens, torch.tensor([0, 1, 2]), region, [5, 6, 7], s, sweeps=2)
    assert torch.equal(out[:, ~region], tokens[:, ~region]) and not torch.equal(out, tokens)
    assert torch.equal(out, gibbs_sweeps(model, tokens, torch.tensor([0, 1, 2]), region, [5, 6, 7], s, sweeps=2))


# ---------------------------------------------------------------- sources

def test_an_image_file_is_encoded_and_its_codes_kept(ctf, base, drawn, tmp_path):
    png = tmp_path / "mine.png"
    Image.fromarray(drawn["ctf"].images[1][..., 0]).save(png)
    codes = ctf.tokenizer.encode_codes(torch.from_numpy(drawn["ctf"].images[1:2]).permute(0, 3, 1, 2) / 127.5 - 1)
    for pipe in (ctf, base):
        edits = pipe.complete(str(png), labels=2, keep_tokens=8, seed=0)
        assert np.array_equal(edits.source.codes, codes.flatten(1).numpy())
        assert np.array_equal(edits.source.images, drawn["ctf"].images[1:2])
        assert np.array_equal(edits.samples.codes[:, :8], edits.source.codes[:, :8]) and edits.samples.labels[0] == 2
    # a uint8 array works the same way, and the coarse labels of an encoded image are its codes' clusters
    arr = ctf.vary(drawn["ctf"].images[1], labels=[2], n=1, seed=0)
    assert np.array_equal(arr.source.coarse, ctf.models["aux"].code_to_coarse.numpy()[codes.flatten(1).numpy()])


def test_a_saved_sample_reloads_as_an_edit_source(ctf, base, drawn, tmp_path):
    save_npz(tmp_path / "s.npz", drawn["ctf"], tokenizer=ctf.fingerprints["tokenizer"])
    src = npz_source(tmp_path / "s.npz", [2, 0], tokenizer=ctf.fingerprints["tokenizer"])
    assert np.array_equal(src.codes, drawn["ctf"].codes[[2, 0]]) and np.array_equal(src.coarse, drawn["ctf"].coarse[[2, 0]])
    assert list(src.labels) == [2, 0]
    edits = ctf.inpaint(src, region=(0, 0, 2, 2), seed=2)
    kept, _ = _kept(edits)
    assert np.array_equal(kept, drawn["ctf"].codes[[2, 0]][:, edits.kept_L])
    with pytest.raises(CtfgenError, match=r"index 4: .*s.npz holds 4 samples \(0..3\)"):
        npz_source(tmp_path / "s.npz", [4])
    with pytest.raises(CtfgenError, match="its codes come from tokenizer"):
        npz_source(tmp_path / "s.npz", [0], tokenizer="another")


# ---------------------------------------------------------------- bad input

def test_bad_input_names_the_value(ctf, drawn, tmp_path):
    def png(name, arr, mode=None):
        p = tmp_path / name
        Image.fromarray(arr, mode).save(p)
        return str(p)

    grey = np.zeros((RES, RES), np.uint8)
    cases = [
        (dict(source=png("big.png", np.zeros((RES + 4, RES + 4), np.uint8)), labels=0),
         f"big.png: {RES + 4}x{RES + 4} pixels, but the pipeline's tokenizer takes {RES}x{RES}"),
        (dict(source=png("rgb.png", np.zeros((RES, RES, 3), np.uint8)), labels=0),
         "rgb.png: 3 channels (RGB), but the pipeline's tokenizer takes 1 (grey)"),
        (dict(source=png("alpha.png", np.zeros((RES, RES, 2), np.uint8), "LA"), labels=0),
         "alpha.png: has an alpha channel (LA)"),
        (dict(source=png("ok.png", grey)), "labels: images and codes carry no class"),
        (dict(source=png("ok.png", grey), labels=CLASSES), f"class_labels: class id {CLASSES} at position 0 is outside [0, {CLASSES})"),
    ]
    for kw, message in cases:
        with pytest.raises(CtfgenError) as e:
            ctf.complete(keep_tokens=4, **kw)
        assert message in str(e.value)
    for P in (-1, L + 1):
        with pytest.raises(CtfgenError, match=rf"keep_tokens: {P} is outside 0..{L}"):
            ctf.complete(drawn["ctf"], keep_tokens=P)
    for region, message in [((0, 0, 0, 2), "region: 0x2 tokens is empty"),
                            ((3, 0, 2, 1), f"leave the {GRID}x{GRID} token grid"),
                            ((-1, 0, 1, 1), "leave the"), ((0, 0, 1), "four whole numbers")]:
        with pytest.raises(CtfgenError, match=message):
            ctf.inpaint(drawn["ctf"], region=region)
    with pytest.raises(CtfgenError, match="mode: 'shape' is not one of"):
        ctf.inpaint(drawn["ctf"], region=(0, 0, 1, 1), mode="shape")
    with pytest.raises(CtfgenError, match="gibbs_sweeps: only edits that redraw"):
        ctf.inpaint(drawn["ctf"], region=(0, 0, 1, 1), mode="detail", gibbs_sweeps=1)
    with pytest.raises(CtfgenError, match="unknown sampling setting"):
        ctf.vary(drawn["ctf"], temprature=1.0)


# ---------------------------------------------------------------- the command line

@pytest.fixture(scope="module")
def pipelines(folders):
    from ctfgen.sample import make_pipeline

    root = folders["root"]
    return {"ctf": make_pipeline(root / "pipe-ctf", tokenizer=folders["tokenizer"], ar=folders["ar"], aux=folders["aux"]),
            "baseline": make_pipeline(root / "pipe-base", tokenizer=folders["tokenizer"], baseline=folders["baseline"])}


def test_cli_edits_write_figures_pngs_and_a_record(pipelines, ctf, tmp_path, capsys):
    import json

    from ctfgen.apps.cli import main as cli_main

    npz = tmp_path / "s.npz"
    assert cli_main(["sample", "--pipeline", str(pipelines["ctf"]), "--per-class", "1", "--npz", str(npz),
                     "--no-progress", "--device", "cpu"]) == 0
    both = ["--pipeline", str(pipelines["ctf"]), "--baseline-pipeline", str(pipelines["baseline"]), "--device", "cpu"]
    runs = {"complete": ["--keep-rows", "1"], "inpaint": ["--region", "1,1,2,2", "--mode", "detail"], "vary": []}
    for kind, extra in runs.items():
        out = tmp_path / kind
        models = both if kind != "vary" else both[:2] + both[4:]
        assert cli_main(["edit", kind, *models, "--sample", str(npz), "--index", "2,0", "--n", "2", "--out", str(out),
                         "--stage2-temperature", "1.3", *extra]) == 0
        record = json.loads((out / "edit.json").read_text())
        assert record["edit"] == kind and record["source_labels"] == [2, 0] and record["n"] == 2
        assert record["ctf"]["settings"]["stage2_temperature"] == 1.3
        names = {p.relative_to(out).as_posix() for p in out.rglob("*.png")}
        assert {"edits.png", "source/000001.png", "ctf/000003.png", "ctf/coarse-before-000001.png",
                "ctf/coarse-after-000003.png"} <= names
        assert ("baseline/000003.png" in names) == (kind != "vary")
        if kind == "complete":
            assert record["kept_tokens"] == GRID and record["baseline"]["edits"][1] == {
                "file": "baseline/000001.png", "source": 0, "seed": record["ctf"]["edits"][1]["seed"]}
    # an image file, under a class given on the command line
    png = tmp_path / "mine.png"
    Image.fromarray(np.zeros((RES, RES), np.uint8)).save(png)
    assert cli_main(["edit", "inpaint", *both, "--image", str(png), "--class", "1", "--region", "0,0,1,4",
                     "--out", str(tmp_path / "png")]) == 0
    assert json.loads((tmp_path / "png" / "edit.json").read_text())["source_labels"] == [1]
    capsys.readouterr()
    # the baseline's Gibbs sweeps score the whole codebook per position: the user is told before it starts
    assert cli_main(["edit", "inpaint", *both, "--image", str(png), "--class", "1", "--region", "0,0,1,2",
                     "--mode", "layout", "--gibbs-sweeps", "1", "--out", str(tmp_path / "gibbs")]) == 0
    assert "the baseline's Gibbs sweeps score all" in capsys.readouterr().err

    # bad input: exit 2, the message names the value, nothing written
    Image.fromarray(np.zeros((RES, RES, 4), np.uint8), "RGBA").save(tmp_path / "rgba.png")
    bad = [
        (["complete", *both, "--image", str(tmp_path / "rgba.png"), "--class", "0", "--keep-tokens", "3"],
         "rgba.png: has an alpha channel (RGBA)"),
        (["complete", *both, "--sample", str(npz), "--index", "0", "--keep-tokens", str(L + 1)],
         f"keep_tokens: {L + 1} is outside 0..{L}"),
        (["inpaint", *both, "--sample", str(npz), "--index", "0", "--region", "2,2,3,1"],
         f"region: rows 2..4, columns 2..2 leave the {GRID}x{GRID} token grid"),
        (["inpaint", *both, "--sample", str(npz), "--index", "7", "--region", "0,0,1,1"],
         "index 7: "),
        (["complete", *both, "--image", str(png), "--keep-rows", "1"], "--image needs --class C"),
    ]
    for argv, message in bad:
        out = tmp_path / "never"
        assert cli_main(["edit", *argv, "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists() and not list(tmp_path.glob(".never*"))


def test_bench_edit_runs_and_keeps_every_kept_code(pipelines, tiny_data, tmp_path, capsys):
    import json

    from ctfgen import evaluate
    from ctfgen.apps.cli import main as cli_main
    from ctfgen.evaluate.classifier import ClassifierConfig, DomainClassifier

    clf = DomainClassifier(ClassifierConfig(resolution=RES, channels=1, num_classes=CLASSES, width=4)).eval()
    evaluate.save_classifier(clf, tmp_path / "clf", train_cfg=evaluate.ClassifierTrainConfig(), data={}, info={})
    out = tmp_path / "bench"
    assert cli_main(["bench", "edit", "--pipeline", str(pipelines["ctf"]), "--baseline-pipeline",
                     str(pipelines["baseline"]), "--classifier", str(tmp_path / "clf"), "--data", "npz",
                     "--data-path", tiny_data.path, "--images", "12", "--seeds", "0,1", "--gibbs-images", "3",
                     "--vary-images", "4", "--vary-n", "2", "--batch-size", "5", "--device", "cpu",
                     "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    rows = {(r["edit"], r["pipeline"]): r for r in result["rows"]}
    assert set(rows) == {("complete", "ctf"), ("complete", "baseline"), ("inpaint detail", "ctf"),
                         ("inpaint layout", "ctf"), ("inpaint layout", "baseline")}
    assert result["keep_tokens"] == 2 * GRID and result["region"] == [1, 1, 2, 2]
    for r in rows.values():
        assert r["kept_codes_identical"] == 1.0 and len(r["fid_classifier"]["values"]) == 2
        assert 0 <= r["agreement"]["mean"] <= 1 and r["seconds_per_edit"]["mean"] > 0
    assert set(result["vary"]["temperatures"]) == {"0.7", "1.1", "1.5"} and "pixel_std" in result["vary"]["fresh"]
    assert result["gibbs"]["images"] == 3 and "gibbs" in result["gibbs"]
    assert {p.name for p in out.glob("*.png")} == {"edit-complete.png", "edit-inpaint-detail.png",
                                                   "edit-inpaint-layout.png", "edit-vary.png"}
    assert "| complete | ctf |" in (out / "tables.md").read_text()
    capsys.readouterr()


def test_docs_example_runs(folders, tmp_path, monkeypatch):
    scope = run_doc_examples("docs/EDITING.md", folders, tmp_path, monkeypatch)
    assert scope["variations"].samples.images.shape == (8, RES, RES, 1)
    assert np.array_equal(scope["layout"].samples.codes[:, scope["layout"].kept_L],
                          scope["drawn"].codes[:, scope["layout"].kept_L])
    assert scope["mine"].samples.labels.tolist() == [0]
