"""`ctfgen bench scaling` end to end on a tiny data set: every V, seed and arm, NLL curves, the sweep,
reuse on a rerun, `ctfgen eval nll` on its folders, and the statistics of the report."""
import json

import pytest

from ctfgen import CtfgenError
from ctfgen.cli import main as cli_main
from ctfgen.scaling import ScalingConfig, ScalingStudy
from ctfgen.scaling.report import paired


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
