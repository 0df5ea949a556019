"""`ctfgen bench scaling` end to end on a tiny data set: every V, seed and arm, NLL curves, the sweep,
reuse on a rerun, `ctfgen eval nll` on its folders, and the statistics of the report."""
import json

import pytest

from ctfgen import CtfgenError
from ctfgen.apps.cli import main as cli_main
from ctfgen.experiments.scaling import ScalingConfig, ScalingStudy
from ctfgen.experiments.scaling.noise import noise_components
from ctfgen.experiments.scaling.report import mean_std, paired, verdict


def tiny_cfg(data, **kw):
    return ScalingConfig(data=data, **{**dict(
        vocabs="32,64", k_ratio=8, seeds=2, arms="balanced,average,random,uniform,frequency", arms_vocab=32,
        arm_seeds=1, tokenizer_steps=2, tokenizer_batch=16, code_images=0, steps=4, batch_size=16, warmup=1,
        nll_every=2, nll_images=10, guidance="1.5,2.0", temperatures="1.0", stage2_temperatures="1.0,1.2",
        sweep_samples_per_class=4, final_samples_per_class=5, classifier_epochs=1, reference_images=30,
        sample_batch=5), **kw})


def test_scaling_study_end_to_end_and_rerun(tmp_path, tiny_data, capsys):
    out = tmp_path / "s"
    logs = []
    with pytest.raises(CtfgenError, match="nothing measured yet"):
        ScalingStudy(tiny_cfg(tiny_data), out, progress=False, log=logs.append).run(parts="report")
    # seed 1 alone (a second process): trained and scored, its samples wait for seed 0's sweep
    ScalingStudy(tiny_cfg(tiny_data), out, progress=False, log=logs.append).run(parts="main", only_seeds=[1])
    assert any("samples wait for seed 0's sweep" in line for line in logs), logs
    assert all(not u["samples"] for u in json.loads((out / "results.json").read_text())["units"])
    with pytest.raises(CtfgenError, match="only_seeds"):
        ScalingStudy(tiny_cfg(tiny_data), out, progress=False, log=logs.append).run(only_seeds=[2])
    # the two parts (as two processes would), then all of it: gathered, nothing made twice
    ScalingStudy(tiny_cfg(tiny_data), out, progress=False, log=logs.append).run(parts="main")
    assert {u["clustering"] for u in json.loads((out / "results.json").read_text())["units"]} == {"kmeans"}
    ScalingStudy(tiny_cfg(tiny_data), out, progress=False, log=logs.append).run(parts="arms")
    made = [line for line in logs if "->" in line]
    page = ScalingStudy(tiny_cfg(tiny_data), out, progress=False, log=logs.append).run()
    assert [line for line in logs if "->" in line] == made
    with pytest.raises(CtfgenError, match="parts"):
        ScalingStudy(tiny_cfg(tiny_data), out, progress=False, log=logs.append).run(parts="some")
    res = json.loads((out / "results.json").read_text())
    ScalingStudy(tiny_cfg(tiny_data), out, progress=False, log=logs.append).run(parts="report")
    assert json.loads((out / "results.json").read_text())["units"] == res["units"]  # gathered, nothing made
    assert [line for line in logs if "->" in line] == made
    units = {u["unit"]: u for u in res["units"]}
    assert set(units) == {"V32-s0-kmeans", "V64-s0-kmeans", "V32-s1-kmeans", "V64-s1-kmeans",
                          "V32-s0-balanced", "V32-s0-average", "V32-s0-random"}
    u = units["V32-s0-kmeans"]
    assert set(u["nll"]) == {"ctf", "baseline", "ctf-uniform", "ctf-frequency"}
    assert [p["step"] for p in u["nll"]["ctf"]] == [2, 4]
    assert u["nll"]["ctf"][0]["images"] == 10 and u["nll"]["ctf"][-1]["images"] == 30  # last: all test images
    # stage 1 is shared: the parameter-free stage 2s differ from the learned one only in stage 2
    assert u["nll"]["ctf-uniform"][-1]["stage1_bits_per_token"] == pytest.approx(u["nll"]["ctf"][-1]["stage1_bits_per_token"])
    s = u["samples"]
    # 2 pairs at the default stage-2 temperature 1.1, then 1.0 and 1.2 at the best pair
    assert len(s["ctf"]["sweep"]) == 4 and len(s["baseline"]["sweep"]) == 2
    assert set(s["ctf"]["best_settings"]) == {"guidance_scale", "temperature", "stage2_temperature"}
    assert s["baseline"]["default"]["settings"]["temperature"] == 1.0
    assert s["ctf-uniform"]["best_settings"]["stage2_temperature"] == 1.0 and "default" not in s["ctf-uniform"]
    # seed 1 reuses seed 0's picks (sweep_seeds=1)
    assert units["V32-s1-kmeans"]["samples"]["ctf"]["best_settings"] == s["ctf"]["best_settings"]
    assert "seed 0" in units["V32-s1-kmeans"]["samples"]["ctf"]["picked_on"]
    final = json.loads(next((out / "evals").glob("V32-s0-kmeans-ctf-final-best-*.json")).read_text())
    assert final["samples"]["count"] == 3 * 5 and final["metadata"]["seed"] == 1  # a fresh sampling seed
    text = page.read_text()
    assert "Held-out bits per token" in text and "| 32 | 4 | 2 |" in text and "average" in text
    assert (page.parent / "nll-curves.png").is_file() and (page.parent / "fid-ratio.png").is_file()
    assert res["tokenizers"]["64"]["codes_used"] >= 1

    logs.clear()
    ScalingStudy(tiny_cfg(tiny_data), out, progress=False, log=logs.append).run()
    assert not [line for line in logs if "->" in line and "report" not in line], logs  # nothing redone
    assert json.loads((out / "results.json").read_text())["units"] == res["units"]

    # an arm whose early point is missing while the models are past it (added later): later points only
    (out / "nll" / "V32-s0-kmeans-ctf-frequency-step2.json").unlink()
    logs.clear()
    ScalingStudy(tiny_cfg(tiny_data), out, progress=False, log=logs.append).run()
    assert any("ctf-frequency have no NLL at step 2" in line for line in logs), logs
    again = {u["unit"]: u for u in json.loads((out / "results.json").read_text())["units"]}
    assert [p["step"] for p in again["V32-s0-kmeans"]["nll"]["ctf-frequency"]] == [4]

    with pytest.raises(CtfgenError, match="other scaling settings .steps: 4 there, 6 now"):
        ScalingStudy(tiny_cfg(tiny_data, steps=6), out, progress=False, log=logs.append).run()

    # the command scores the study's folders exactly as the study did
    seed0 = out / "V32" / "seed0"
    args = ["eval", "nll", "--codes", str(out / "V32" / "codes-test"), "--quiet"]
    assert cli_main(args + ["--ar", str(seed0 / "stage1-kmeans"), "--aux", str(seed0 / "stage2-kmeans"),
                            "--out", str(tmp_path / "n.json")]) == 0
    assert json.loads((tmp_path / "n.json").read_text())["bits_per_token"] == pytest.approx(
        u["nll"]["ctf"][-1]["bits_per_token"])
    assert cli_main(args + ["--ar", str(seed0 / "stage1-kmeans"), "--stage2", "frequency",
                            "--coarse-map", str(out / "V32" / "coarse-kmeans-k4"),
                            "--train-codes", str(out / "V32" / "codes-train"), "--out", str(tmp_path / "f.json")]) == 0
    assert json.loads((tmp_path / "f.json").read_text())["bits_per_token"] == pytest.approx(
        u["nll"]["ctf-frequency"][-1]["bits_per_token"])
    assert cli_main(args + ["--baseline", str(seed0 / "baseline")]) == 0
    assert "baseline:" in capsys.readouterr().out
    # mismatched inputs are refused with a message, not a traceback
    assert cli_main(["eval", "nll", "--codes", str(out / "V64" / "codes-test"), "--baseline", str(seed0 / "baseline")]) == 2
    assert "tokenizer" in capsys.readouterr().err
    assert cli_main(args + ["--ar", str(seed0 / "stage1-kmeans")]) == 2
    assert "stage 2" in capsys.readouterr().err


def test_bad_scaling_settings_are_named(tiny_data):
    with pytest.raises(CtfgenError, match="k_ratio"):
        tiny_cfg(tiny_data, vocabs="30").check()
    with pytest.raises(CtfgenError, match="arms: unknown"):
        tiny_cfg(tiny_data, arms="kmeans2").check()
    with pytest.raises(CtfgenError, match="guidance"):
        tiny_cfg(tiny_data, guidance="a").check()


def test_paired_difference_against_seed_noise():
    clear = paired([1.0, 1.1, 0.9], [2.0, 2.1, 1.9])
    assert clear["exceeds_noise"] and clear["mean"] == pytest.approx(-1.0)
    noisy = paired([1.0, 2.0, 0.5], [1.2, 0.9, 1.5])
    assert noisy["exceeds_noise"] is False
    assert paired([1.0], [2.0])["exceeds_noise"] is None
    assert verdict(paired([1.0], [2.0]), "CTF lower", "baseline lower") == "-1.000 (1 seed: no error bar)"


def test_pipeline_seeds_vary_tokenizer_clustering_and_models(tmp_path, tiny_data):
    """--pipeline-seeds: each seed trains its own tokenizer and clustering with that seed (folders per
    (V, seed)), results carry the kind, and the report compares the spread with a training-seed study."""
    import torch
    from safetensors.torch import load_file

    from ctfgen.artifacts import WEIGHTS
    from ctfgen.tokenizer.artifact import CODEBOOK_KEY

    cfg = tiny_cfg(tiny_data, vocabs="32", seeds=2, pipeline_seeds=True, arms="uniform", steps=2, nll_every=2,
                   guidance="2.0", stage2_temperatures="1.0", sweep_samples_per_class=4, final_samples_per_class=4)
    out = tmp_path / "p"
    with pytest.raises(CtfgenError, match="readable results JSON"):
        ScalingStudy(cfg, out, progress=False, log=lambda m: None).run(noise_reference=tmp_path / "none.json")
    ScalingStudy(cfg, out, progress=False, log=lambda m: None).run()
    res = json.loads((out / "results.json").read_text())
    assert res["seed_kind"] == "pipeline" and {u["seed_kind"] for u in res["units"]} == {"pipeline"}
    assert sorted(u["unit"] for u in res["units"]) == ["V32-p0-kmeans", "V32-p1-kmeans"]
    assert set(res["tokenizers"]) == {"32-seed0", "32-seed1"}
    roots = [out / "V32" / f"seed{s}" for s in (0, 1)]
    manifests = [{name: json.loads((r / name / "manifest.json").read_text())
                  for name in ("tokenizer", "coarse-kmeans-k4", "stage1-kmeans", "stage2-kmeans", "baseline")}
                 for r in roots]
    for m in manifests:  # the tokenizer's training config is in its info
        m.update({k: v["config"] for k, v in m.items() if k != "tokenizer"}, tokenizer=m["tokenizer"]["info"]["train_config"])
    for s, m in enumerate(manifests):  # every part of the pipeline made with its seed
        assert m["tokenizer"]["seed"] == s and m["coarse-kmeans-k4"]["seed"] == s
        assert m["stage1-kmeans"]["train"]["seed"] == m["baseline"]["train"]["seed"] == s
    books = [load_file(r / "tokenizer" / WEIGHTS)[CODEBOOK_KEY] for r in roots]
    assert not torch.equal(books[0], books[1])  # another initialisation and batch order: another tokenizer
    assert not (out / "V32" / "tokenizer").exists()

    # a training-seed study of the same recipe, as the reference: gaps of -0.5 and -1.0 bits
    ref = json.loads(json.dumps(res))
    ref["seed_kind"] = "training"
    for u in ref["units"]:
        u["nll"]["baseline"][-1]["bits_per_token"] = u["nll"]["ctf"][-1]["bits_per_token"] + 0.5 * (1 + u["seed"])
    ref_path = tmp_path / "ref.json"
    ref_path.write_text(json.dumps(ref))
    with pytest.raises(CtfgenError, match="pipeline seeds too"):
        ScalingStudy(cfg, out, progress=False, log=lambda m: None).run(parts="report", noise_reference=out / "results.json")
    page = ScalingStudy(cfg, out, progress=False, log=lambda m: None).run(parts="report", noise_reference=ref_path)
    text = page.read_text()
    assert "What the tokenizer and the clustering add" in text and "pipeline-seed noise" in text
    noise = json.loads((page.parent / "summary.json").read_text())["noise"]["nll_last"]["32"]
    assert noise["pipeline"]["n"] == noise["training"]["n"] == 2
    assert noise["training"]["std"] == pytest.approx(0.5 / 2 ** 0.5)


def test_noise_components_split_the_variance():
    comp = noise_components([1.0, 3.0, 2.0, 0.0], [1.0, 1.5, 1.25, 0.75], "pipeline")
    vp, vt = mean_std([1.0, 3.0, 2.0, 0.0])[1] ** 2, mean_std([1.0, 1.5, 1.25, 0.75])[1] ** 2
    assert comp["variance_ratio"] == pytest.approx(vp / vt)
    assert comp["tokenizer_clustering_variance"] == pytest.approx(vp - vt)
    assert comp["tokenizer_clustering_share"] == pytest.approx((vp - vt) / vp)
    assert 0 < comp["f_test_p"] < 0.2
    # the kind of our own seeds decides which list is which; a smaller pipeline spread adds nothing
    same = noise_components([1.0, 1.5, 1.25, 0.75], [1.0, 3.0, 2.0, 0.0], "training")
    assert same["variance_ratio"] == pytest.approx(comp["variance_ratio"])
    assert noise_components([1.0, 1.1], [0.0, 2.0], "pipeline")["tokenizer_clustering_share"] == 0.0
