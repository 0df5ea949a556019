"""`ctfgen bench lasting` end to end on a tiny data set: whole-pipeline seeds, the WSD schedule, early
stopping's snapshots, the held-out validation split, FLOPs, the results directory (a unit found there is
skipped), resume, the plan and the report; and the curve statistics on synthetic curves."""
import json
import shutil

import pytest

from ctfgen import CtfgenError
from ctfgen.experiments.scaling.lasting import LastingConfig, LastingStudy
from ctfgen.experiments.scaling.lasting.report import write_report
from ctfgen.experiments.scaling.lasting.study import gpu_section
from ctfgen.experiments.scaling.lasting.curves import at_equal_compute, first_match, fit_asymptote, fit_window


def tiny_cfg(data, **kw):
    return LastingConfig(data=data, **{**dict(
        vocabs="32", k_ratio=8, pipeline_seeds=2, grids="4", presets="tiny", steps=6, batch_size=16, warmup=1,
        wsd_decay=0.34, eval_every=2, val_images=12, code_images=0, test_images=0, tokenizer_steps=2,
        tokenizer_batch=16, guidance="2.0", temperatures="1.0", stage2_temperatures="1.0",
        sweep_samples_per_class=4, final_samples_per_class=4, classifier_epochs=1, reference_images=30,
        sample_batch=6), **kw})


def test_lasting_study_end_to_end_resume_and_results_dir(tmp_path, tiny_data):
    out, results = tmp_path / "study", tmp_path / "results"
    logs = []

    def study(**kw):
        return LastingStudy(tiny_cfg(tiny_data, **kw), out, results_dir=results, progress=False, log=logs.append)

    page = study().run()
    files = sorted(p.name for p in results.glob("*.json"))
    assert files == ["V32-g4-tiny-n6-b16-p0.json", "V32-g4-tiny-n6-b16-p1.json"]
    u = json.loads((results / files[0]).read_text())
    assert u["complete"] and u["seed_kind"] == "pipeline" and u["train_images"] == 84
    assert set(u["curves"]) == {"ctf", "ctf-uniform", "baseline"}
    assert [p["step"] for p in u["curves"]["ctf"]] == [2, 4, 6]
    assert u["curves"]["ctf"][0]["images"] == 12  # the validation split
    # grid 4 of 16 px images: the preset's levels (4x downsampling), 16 tokens
    assert u["tokenizer"]["vq"]["ch_mult"] == [1, 2, 4] and u["curves"]["ctf"][0]["tokens_per_image"] == 16 == u["tokens"]
    assert u["test"]["ctf"]["images"] == 30  # every test image at the best checkpoint
    # the uniform stage 2 shares stage 1: same stage-1 bits at every point
    for a, b in zip(u["curves"]["ctf"], u["curves"]["ctf-uniform"]):
        assert a["stage1_bits_per_token"] == pytest.approx(b["stage1_bits_per_token"])
    # FLOPs: CTF is stage 1 + stage 2, uniform only stage 1; every point carries step x FLOPs per step
    f = u["flops_per_step"]
    assert f["ctf"] > f["ctf-uniform"] > 0 and f["baseline"] > 0
    assert u["curves"]["baseline"][1]["flops"] == pytest.approx(4 * f["baseline"])
    equal = u["baseline_matches"]["ctf"]["equal_compute"]  # the baseline's run is the cheaper one
    assert equal["flops"] == pytest.approx(6 * f["baseline"]) and equal["b"] == u["curves"]["baseline"][-1]["bits_per_token"]
    # early stopping: the best point's snapshot is the only one kept, and its test NLL was scored from it
    mroot = out / "V32-g4" / "seed0" / "tiny-n6-b16"
    for m in ("ctf", "ctf-uniform", "baseline"):
        best = min(u["curves"][m], key=lambda p: p["bits_per_token"])
        assert u["best"][m]["step"] == best["step"]
        assert [p.name for p in mroot.glob(f"best-{m}-step*")] == [f"best-{m}-step{best['step']}"]
    assert set(u["samples"]) == {"ctf", "ctf-uniform", "baseline"}
    assert "default" not in u["samples"]["ctf-uniform"] and u["samples"]["baseline"]["best"]["metrics"]["fid_classifier"] > 0
    seed1 = json.loads((results / files[1]).read_text())
    assert "seed 0" in seed1["samples"]["ctf"]["picked_on"]
    # the pipeline seed reaches the tokenizer, the clustering and the models; the schedule is WSD
    man = {name: json.loads((out / "V32-g4" / "seed1" / name / "manifest.json").read_text())
           for name in ("tokenizer", "coarse-kmeans-k4", "codes-val", "codes-train")}
    assert man["tokenizer"]["info"]["train_config"]["seed"] == 1 and man["coarse-kmeans-k4"]["config"]["seed"] == 1
    train = json.loads((out / "V32-g4" / "seed1" / "tiny-n6-b16" / "stage1" / "manifest.json").read_text())["config"]["train"]
    assert train["seed"] == 1 and train["wsd_decay"] == 0.34 and train["cosine"] is False and train["batch_size"] == 16
    # the validation images are the last 12 of the training split, never in the training codes
    assert man["codes-val"]["config"]["split"] == "train[84:96]" and man["codes-train"]["config"]["limit"] == 84
    text = page.read_text()
    assert "(96 sequences, 1.1 epochs of 84 images)" in text
    assert "V32-g4-tiny-n6-b16" in text and "pipeline-seed noise" in text and "Every planned unit has results" in text
    assert (page.parent / "curves-V32-g4-tiny-n6-b16.png").is_file()
    match = u["baseline_matches"]["ctf"]["step"]  # the step where the baseline matches CTF, with its epoch
    assert ("never" if match is None else f"{match} ({match * 16 / 84:.1f} ep)") in text.split("baseline matches")[1]

    # a rerun makes nothing: every unit is in the results directory
    logs.clear()
    study().run()
    assert not [line for line in logs if "->" in line], logs
    assert sum("skipped" in line for line in logs) == 2
    # a fresh machine (empty study folder) with the committed results skips those units too, and the
    # study folder alone (no results directory) reuses every model, snapshot and evaluation
    # (through `ctfgen bench gpu --lasting`'s section, which keeps its results in FOLDER/results)
    fresh = tmp_path / "fresh"
    shutil.copytree(results, fresh / "results")
    ran = gpu_section(fresh, "cpu", tiny_cfg(tiny_data))
    assert ran["units_done"] == [f[:-5] for f in files] and ran["units_planned"] == 2
    assert not (fresh / "study" / "V32-g4").exists()
    # a fresh machine with seed 0's results alone makes seed 1, sampled at the picks in seed 0's JSON
    # (its new study folder has no picks.json, and seed 0 is not rerun for them)
    half = tmp_path / "half"
    (half / "results").mkdir(parents=True)
    shutil.copy(results / files[0], half / "results")
    LastingStudy(tiny_cfg(tiny_data), half / "study", results_dir=half / "results", progress=False,
                 log=lambda m: None).run(only_seeds=[1])
    again = json.loads((half / "results" / files[1]).read_text())
    assert again["complete"] and not (half / "study" / "picks.json").exists()
    assert not (half / "study" / "V32-g4" / "seed0").exists()
    for m in ("ctf", "ctf-uniform", "baseline"):
        assert again["samples"][m]["best_settings"] == seed1["samples"][m]["best_settings"]
    (results / files[0]).unlink()
    logs.clear()
    study().run(only_seeds=[0])
    assert not [line for line in logs if "->" in line and "done" not in line], logs
    assert json.loads((results / files[0]).read_text())["test"] == u["test"]

    # an axis added later extends the folder; the plan lists it as to do, the report as not run
    rows = {r["unit"]: r for r in _plan(study(presets="tiny,small"))}
    assert rows["V32-g4-tiny-n6-b16-p0"]["state"] == "done" and rows["V32-g4-small-n6-b16-p0"]["state"] == "to do"
    assert rows["V32-g4-small-n6-b16-p0"]["train_pflops"] > rows["V32-g4-tiny-n6-b16-p0"]["train_pflops"]
    page = study(presets="tiny,small").run(only_seeds=[])  # no seeds: only the report
    assert "- V32-g4-small-n6-b16-p0" in page.read_text().split("## What did not run")[1]
    # two recipes that differ in model size alone: the report's gap-against-size table and plot
    other = tmp_path / "two-sizes"
    for f in files:
        unit = json.loads((results / f).read_text())
        other.mkdir(exist_ok=True)
        (other / f).write_text(json.dumps(unit))
        unit.update(preset="small", recipe=unit["recipe"].replace("tiny", "small"),
                    params={k: 4 * v for k, v in unit["params"].items()})
        (other / f.replace("tiny", "small")).write_text(json.dumps(unit))
    text = write_report(other).read_text()
    size = text.split("## The gap against model size")[1].split("##")[0]
    assert "| V=32, grid=4, steps=6, batch=16 | tiny |" in size and "| small |" in size
    assert "No two recipes" in text.split("## The gap against sequence length")[1]
    assert (other / "report" / "gap-trends.png").is_file()
    # two recipes that differ in sequence length alone: the gap per token, and per image (times the tokens)
    lengths = tmp_path / "two-lengths"
    lengths.mkdir()
    for f in files:
        unit = json.loads((results / f).read_text())
        (lengths / f).write_text(json.dumps(unit))
        unit.update(grid=8, tokens=64, recipe=unit["recipe"].replace("-g4-", "-g8-"))
        (lengths / f.replace("-g4-", "-g8-")).write_text(json.dumps(unit))
    seq = write_report(lengths).read_text().split("## The gap against sequence length")[1].split("##")[0]
    gap = json.loads((lengths / "report" / "summary.json").read_text())["recipes"][unit["recipe"]]["paired"]
    gap = gap["ctf"]["test"]["mean"]
    assert "| V=32, preset=tiny, steps=6, batch=16 | 64 |" in seq and "| 16 |" in seq
    assert (lengths / "report" / "gap-trends.png").is_file()
    assert f"{gap * 64:+.3f} (95% CI" in seq and f"{gap * 16:+.3f} (95% CI" in seq and f"{gap:+.3f} (95% CI" in seq
    # recipes that differ in the codebook (not along either axis) draw no trend plot
    for f in other.glob("*small*.json"):
        unit = json.loads(f.read_text())
        unit.update(preset="tiny", V=64, recipe=unit["recipe"].replace("small", "tiny").replace("V32", "V64"))
        f.write_text(json.dumps(unit))
    text = write_report(other).read_text()
    assert "No two recipes" in text.split("## The gap against model size")[1].split("##")[0]
    assert not (other / "report" / "gap-trends.png").exists() and "gap-trends.png" not in text

    with pytest.raises(CtfgenError, match="only_seeds"):
        study().run(only_seeds=[5])
    with pytest.raises(CtfgenError, match="other lasting settings"):
        study(lr=1e-3).run()
    # committed results of another recipe are refused, not taken for this one's
    with pytest.raises(CtfgenError, match="made with other settings .lr: 0.008 there, 0.001 now"):
        LastingStudy(tiny_cfg(tiny_data, lr=1e-3), tmp_path / "other", results_dir=results, progress=False).run()


def _plan(study):
    from ctfgen.experiments.scaling.lasting.plan import plan_rows

    return plan_rows(study)


@pytest.mark.parametrize("setting, message", [
    ({"grids": "12"}, r"grids: \[12\] not supported at 16 px; choose tokens per side \[4, 8\]"), ({"arms": "uniform"}, "add learned"),
    ({"vocabs": "30"}, "k_ratio=8"), ({"presets": "huge"}, "unknown model preset"),
    ({"vocabs": "a"}, "vocabs: expected comma-separated integers"), ({"wsd_decay": 2.0}, "wsd_decay")])
def test_bad_lasting_settings_are_named(tiny_data, setting, message):
    with pytest.raises(CtfgenError, match=message):
        tiny_cfg(tiny_data, **setting).check()


def test_validation_images_stay_out_of_the_training_codes(tmp_path, tiny_data):
    study = LastingStudy(tiny_cfg(tiny_data, code_images=90, val_images=12), tmp_path, results_dir=tmp_path / "r",
                         progress=False, log=lambda m: None)
    with pytest.raises(CtfgenError, match="validation images must stay out"):
        study.train_split()


def test_asymptote_fit_recovers_a_power_law():
    steps = [250 * i for i in range(1, 13)]
    bits = [5.0 + 2.0 * (s / 250) ** -0.7 for s in steps]
    fit = fit_asymptote(steps, bits)
    assert fit["ok"] and fit["L_inf"] == pytest.approx(5.0, abs=1e-3) and fit["alpha"] == pytest.approx(0.7, abs=1e-3)
    noisy = fit_asymptote(steps, [b + 0.01 * (-1) ** i for i, b in enumerate(bits)])
    assert noisy["L_inf_se"] > 0 and abs(noisy["L_inf"] - 5.0) < 5 * noisy["L_inf_se"] + 0.05
    assert fit_asymptote(steps[:3], bits[:3])["ok"] is False
    curve = [{"step": s, "bits_per_token": b} for s, b in zip(steps, bits)]
    assert [p["step"] for p in fit_window(curve, warmup=250, decay_start=2500)] == steps[1:10]


def test_first_match_at_equal_steps_and_flops():
    ctf = [{"step": s, "flops": 2.0 * s, "bits_per_token": b} for s, b in ((1, 5.0), (2, 4.0), (3, 3.5), (4, 3.4))]
    base = [{"step": s, "flops": 1.0 * s, "bits_per_token": b} for s, b in ((1, 6.0), (2, 4.5), (3, 3.5), (4, 3.3))]
    assert first_match(ctf, base, "step") == 3  # level at step 3
    # at equal FLOPs the baseline costs half CTF's per step: at 2 FLOPs it is at 4.5, CTF (its first point) at 5.0
    assert first_match(ctf, base, "flops") == 2
    # CTF's curve is interpolated between its points: at step 2.5 it would be at 3.75
    assert first_match(ctf, [{"step": 2.5, "flops": 5.0, "bits_per_token": 3.7}], "step") == 2.5
    assert first_match(ctf, [{"step": 2.5, "flops": 5.0, "bits_per_token": 3.8}], "step") is None
    # at equal compute: the baseline's run ends at 4 FLOPs, where CTF is at its step 2 (4.0 bits)
    assert at_equal_compute(ctf, base) == {"flops": 4.0, "a": 4.0, "b": 3.3, "gap": pytest.approx(0.7)}
    never = [{"step": p["step"], "flops": p["flops"], "bits_per_token": p["bits_per_token"] + 1} for p in base]
    assert first_match(ctf, never, "step") is None


def test_grid_picks_the_tokenizer_levels(tiny_data):
    cfg = tiny_cfg(tiny_data, grids="4,8").check()  # 16 px: 4x downsampling (the preset) or 2x (one level less)
    assert cfg.tokenizer_levels(4) == {} and cfg.tokenizer_levels(8) == {"ch_mult": (1, 4)}
    from ctfgen.data import DataConfig
    from ctfgen.tokenizer import vq_preset

    assert vq_preset("fmnist", **LastingConfig(data=DataConfig(), grids="16").check().tokenizer_levels(16)).grid == 16


def test_processes_sharing_a_folder_may_name_its_own_classifier(tmp_path, tiny_data):
    """A folder that trained its classifier ('' in its settings) accepts `--classifier OUT/classifier`
    (the same classifier: the documented way to start more processes on it) and runs without it after;
    another classifier is refused by name."""
    from ctfgen.experiments.workspace import Workspace

    out = tmp_path / "study"

    def begin(classifier):
        return Workspace(tiny_cfg(tiny_data, classifier=classifier), out, name="lasting", seed=0,
                         progress=False, log=lambda m: None).begin()

    begin("")
    begin(str(out / "classifier"))
    begin("")
    with pytest.raises(CtfgenError, match=r"other lasting settings \(classifier: '' there, '.*elsewhere' now\)"):
        begin(str(tmp_path / "elsewhere"))


def test_cpu_plan_script_runs_the_units_in_order(tmp_path):
    """scripts/lasting_cpu.sh with a stand-in command: V = 16384 seed 0 first (it trains the classifier
    the others use), then the queue two at a time in the plan's order, then the seeds past the first
    again (their samples use seed 0's picks), then the report."""
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out, calls = tmp_path / "study", tmp_path / "calls.txt"
    fake = tmp_path / "fake-ctfgen"
    fake.write_text(f"#!/usr/bin/env bash\necho \"$*\" >> {calls}\nmkdir -p {out}/classifier\n"
                    f"touch {out}/classifier/manifest.json\n")
    fake.chmod(0o755)
    done = subprocess.run(["bash", str(root / "scripts" / "lasting_cpu.sh"), str(out)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "CTFGEN": str(fake)})
    assert done.returncode == 0 and "ran to its end" in done.stdout, done.stdout + done.stderr

    def unit(line):
        words = line.split()
        return words[words.index("--only-seeds") + 1], " ".join(words[words.index("--no-progress") + 3:])

    lines = calls.read_text().splitlines()
    runs = [unit(line) for line in lines if "--only-seeds" in line]
    v16, v4 = "--vocabs 16384 --pipeline-seeds 3", "--vocabs 4096 --pipeline-seeds 2"
    size = "--vocabs 4096 --presets tiny,small --steps 300 --pipeline-seeds 2"
    length = "--vocabs 4096 --grids 16 --steps 300 --pipeline-seeds 2"
    queue = [("0", v16), ("1", v16), ("2", v16), ("0", v4), ("1", v4), ("0", size), ("1", size), ("0", length),
             ("1", length)]
    assert runs[0] == ("0", v16) and sorted(runs[:9]) == sorted(queue)
    assert all(abs(queue.index(r) - i) <= 1 for i, r in enumerate(runs[:9]))  # two at a time: neighbours may swap
    assert runs[9:] == [("1", v16), ("2", v16), ("1", v4), ("1", size), ("1", length)]
    assert all("--out " + str(out) in line for line in lines[:-1])
    assert lines[-1] == "bench lasting --report --vocabs 4096,16384 --pipeline-seeds 3"
    assert (tmp_path / "study-logs" / "vocabs_16384_pipelineseeds_3-seed0.log").is_file()
