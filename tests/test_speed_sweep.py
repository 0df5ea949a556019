"""`ctfgen bench speed --sweep` (widths x stage-2 depths x token grids at one codebook) and
`ctfgen bench quality-speed` (measured FID against measured images/s)."""
from __future__ import annotations

import json
import statistics

import pytest

from ctfgen.apps.cli import main as cli_main
from ctfgen.benchmarks.speed_sweep import speed_sweep, stage2_layers
from ctfgen.errors import CtfgenError
from ctfgen.experiments.quality.speed_plot import (plot_quality_vs_speed, points_table, quality_speed_points,
                                                   speed_load_warnings)

# tiny width (4 layers), 2x2 tokens, a small codebook: the whole sweep in a few seconds
SMALL = ["--widths", "tiny", "--grids", "2", "--vocab", "64", "--k", "8", "--num-classes", "3",
         "--batch-size", "2", "--runs", "2", "--warmup", "1", "--device", "cpu", "--threads", "1"]


def test_sweep_table_and_json(capsys, tmp_path):
    path = tmp_path / "speed.json"
    assert cli_main(["bench", "speed", "--sweep", *SMALL, "--profile", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "tiny (4 layers), 2x2 tokens, V=64, K=8" in out
    assert "ctf-1/4: CTF / baseline with a free stage 2 = baseline_s / stage1_s" in out  # one per depth
    assert "stage-1 bound" in out and out.rstrip().splitlines()[-1].split()[:2] == ["tiny", "4"]
    data = json.loads(path.read_text())
    assert data["info"]["vocab"] == 64 and data["info"]["depths"] == ["1/4", "1/2", "1"]
    (row,) = data["rows"]
    assert (row["width"], row["grid"], row["tokens"], row["stage1_layers"]) == ("tiny", 2, 4, 4)
    samplers = {s["name"]: s for s in row["samplers"]}
    assert list(samplers) == ["baseline", "ctf-1/4", "ctf-1/2", "ctf-1"]
    assert [samplers[n]["stage2_layers"] for n in ("ctf-1/4", "ctf-1/2", "ctf-1")] == [1, 2, 4]
    base = samplers["baseline"]
    for name, s in samplers.items():
        assert len(s["seconds"]) == 2 and s["images_per_s"] == pytest.approx(2 / s["median_s"])
        assert s["ratio_to_baseline"] == pytest.approx(s["images_per_s"] / base["images_per_s"])
        assert set(s["profile"]["seconds"]) == set(data["categories"])
    # stage 2's parameters grow with its depth at a fixed width; stage 1 is the baseline's size
    aux = [samplers[n]["params"]["aux"] for n in ("ctf-1/4", "ctf-1/2", "ctf-1")]
    assert aux[0] < aux[1] < aux[2]
    assert samplers["ctf-1"]["params"]["aux"] > 0 and "stage1_s" in samplers["ctf-1"]["stage_s"]
    assert "free_stage2_bound" in samplers["ctf-1"]["profile"] and "free_stage2_bound" not in base["profile"]
    # pooled: stage 1 is one network in all three CTF pipelines, so its 6 runs give one median
    stage1 = statistics.median(v for n in ("ctf-1/4", "ctf-1/2", "ctf-1") for v in samplers[n]["stage_s"]["stage1_s"])
    for n in ("ctf-1/4", "ctf-1/2", "ctf-1"):
        stage2 = statistics.median(samplers[n]["stage_s"]["stage2_s"])
        assert samplers[n]["ratio_pooled_stage1"] == pytest.approx(base["median_s"] / (stage1 + stage2))


def test_depth_that_does_not_divide_is_refused(capsys):
    with pytest.raises(CtfgenError, match=r"1/8 of tiny's 4 layers is 1/2 layers, not a whole number"):
        stage2_layers(["tiny", "small"], ["1/8"])
    assert stage2_layers(["small", "B"], ["1/4", "1/2", "1"]) == {"small": [2, 4, 8], "B": [3, 6, 12]}
    with pytest.raises(CtfgenError, match="expected a fraction > 0"):
        stage2_layers(["tiny"], ["0"])
    with pytest.raises(CtfgenError, match=r"1/3 of tiny's 4 layers is 4/3 layers.*\(B 12, tiny 4\)"):  # B: fine
        speed_sweep(widths=["B", "tiny"], depths=["1/3"], vocab=64, k=8)
    assert cli_main(["bench", "speed", "--sweep", *SMALL, "--stage2-depths", "1/3"]) != 0
    err = capsys.readouterr().err
    assert "stage-2 depth 1/3: 1/3 of tiny's 4 layers is 4/3 layers" in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["--widths", "tiny"], "--widths: for --sweep only"),
    (["--sweep", "--preset", "B"], "--preset: for a single preset, not the sweep"),
    (["--sweep", "--widths", "tiny", "--vocab", "8", "--k", "8"], "need 2 <= K < V"),
])
def test_sweep_flag_errors(capsys, argv, message):
    assert cli_main(["bench", "speed", *argv]) != 0
    assert message in capsys.readouterr().err


def _study(tmp_path, fids):
    """A study results JSON in the scaling study's layout, with the given best classifier-FIDs."""
    units = [{"unit": f"V{v}-s{seed}-kmeans", "V": v, "seed": seed, "clustering": "kmeans",
              "samples": {m: {"best": {"metrics": {"fid_classifier": f}}} for m, f in by_method.items()}}
             for (v, seed), by_method in fids.items()]
    units.append({"unit": "V64-s0-balanced", "V": 64, "seed": 0, "clustering": "balanced",
                  "samples": {"ctf-balanced": {"best": {"metrics": {"fid_classifier": 30.0}}}}})
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"config": {"preset": "tiny"}, "units": units}))
    return path


def _speed(tmp_path):
    path = tmp_path / "speed.json"
    samplers = [{"name": "baseline", "images_per_s": 10.0}, {"name": "ctf-1", "images_per_s": 8.0},
                {"name": "ctf-1/4", "images_per_s": 12.0}]
    path.write_text(json.dumps({"info": {"vocab": 64}, "rows": [{"width": "tiny", "grid": 2, "samplers": samplers}]}))
    return path


def test_quality_speed_points_and_plot(tmp_path, capsys):
    quality = _study(tmp_path, {(64, 0): {"ctf": 20.0, "baseline": 26.0, "ctf-uniform": 21.0},
                                (64, 1): {"ctf": 22.0, "baseline": 28.0},
                                (256, 0): {"ctf": 18.0, "baseline": 25.0}})
    points, left_out = quality_speed_points(quality, [_speed(tmp_path)], default_grid=2)
    got = {p.method: (p.fid, p.images_per_s, p.sampler) for p in points}
    # CTF's stage 2 in the study is stage 1's size: its speed is the sweep's ctf-1, not ctf-1/4
    assert got == {"ctf": ([20.0, 22.0], 8.0, "ctf-1"), "baseline": ([26.0, 28.0], 10.0, "baseline"),
                   "ctf-balanced": ([30.0], 8.0, "ctf-1")}
    assert any(line.startswith("ctf-uniform, V 64") and "no speed figure" in line for line in left_out)
    assert sum("V 256" in line for line in left_out) == 2  # no sweep at V 256
    png = plot_quality_vs_speed(points, tmp_path / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli_main(["bench", "quality-speed", "--quality", str(quality), "--speed", str(tmp_path / "speed.json"),
                     "--grid", "2", "--out", str(tmp_path / "cli.png")]) == 0
    out = capsys.readouterr().out
    assert "| ctf | 64 | tiny | 2x2 | 21.00 ± 1.41 | 2 | ctf-1 | 8.00 |" in out and (tmp_path / "cli.png").is_file()


def test_quality_speed_reads_a_lasting_results_folder(tmp_path):
    """`bench lasting` writes one JSON per unit; units of other step budgets are other points."""
    folder = tmp_path / "lasting"
    (folder / "report").mkdir(parents=True)
    (folder / "report" / "summary.json").write_text("{}")  # the report is not a unit
    for steps, seed, fid in ((300, 0, 20.0), (300, 1, 22.0), (3000, 0, 15.0)):
        unit = {"unit": f"V64-g2-tiny-n{steps}-b32-p{seed}", "V": 64, "grid": 2, "preset": "tiny", "steps": steps,
                "seed": seed, "samples": {"ctf": {"best": {"metrics": {"fid_classifier": fid}}},
                                          "ctf-uniform": {"best": {"metrics": {"fid_classifier": fid + 1}}}}}
        (folder / f"{unit['unit']}.json").write_text(json.dumps(unit))
    points, left_out = quality_speed_points(folder, [_speed(tmp_path)])
    assert sorted((p.steps, p.fid) for p in points) == [(300, [20.0, 22.0]), (3000, [15.0])]
    assert "ctf-uniform, V 64, tiny, 2x2, 3000 steps: no speed figure" in " ".join(left_out)
    assert "| steps |" in points_table(points) and "| 3000 |" in points_table(points)
    points, _ = quality_speed_points(folder, [_speed(tmp_path)], steps=3000)  # one budget only
    assert [(p.steps, p.fid) for p in points] == [(3000, [15.0])]
    with pytest.raises(CtfgenError, match="no unit trained for 1000 steps"):
        quality_speed_points(folder, [_speed(tmp_path)], steps=1000)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CtfgenError, match="empty: no unit JSON"):
        quality_speed_points(tmp_path / "empty", [_speed(tmp_path)])


def test_quality_speed_warns_when_the_sweeps_ran_under_other_loads(tmp_path, capsys):
    quality = _study(tmp_path, {(64, 0): {"ctf": 20.0, "baseline": 25.0}})
    speeds = []
    for name, load in (("quiet", 0.3), ("loaded", 9.7)):
        data = json.loads(_speed(tmp_path).read_text())
        data["rows"][0]["loadavg_1min"] = [load, load]
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
        speeds.append(str(tmp_path / f"{name}.json"))
    assert not speed_load_warnings(speeds[:1])
    assert cli_main(["bench", "quality-speed", "--quality", str(quality), "--speed", *speeds, "--grid", "2",
                     "--out", str(tmp_path / "p.png")]) == 0
    err = capsys.readouterr().err
    assert "1-min load average 0.3 in" in err and "9.7 in" in err and "not on one scale" in err


def test_quality_speed_errors_name_the_field(tmp_path):
    quality = _study(tmp_path, {(64, 0): {"ctf": 20.0}})
    with pytest.raises(CtfgenError, match=r"units\[0\]: no 'grid'"):
        quality_speed_points(quality, [_speed(tmp_path)])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"info": {"vocab": 64}, "rows": [{"width": "tiny", "grid": 2, "samplers": [{"images_per_s": 1.0}]}]}))
    with pytest.raises(CtfgenError, match=r"bad.json: rows\[0\].samplers\[0\]: missing field 'name'"):
        quality_speed_points(quality, [bad], default_grid=2)
    points, _ = quality_speed_points(quality, [_speed(tmp_path)], default_grid=8)  # no sweep at 8x8
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"info": {"vocab": 64, "threads": 2}, "rows": []}))
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"info": {"vocab": 64, "threads": 1}, "rows": []}))
    with pytest.raises(CtfgenError, match=r"other.json: info.threads is 2, .*one.json has 1; .*not comparable"):
        quality_speed_points(quality, [one, other], default_grid=2)
    with pytest.raises(CtfgenError, match="nothing to plot"):
        plot_quality_vs_speed(points, tmp_path / "none.png")
