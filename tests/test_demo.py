"""The demo end to end on a tiny data set: every stage runs, the report is written, a rerun reuses."""
import json

import pytest

from ctfgen.experiments.demo import Demo, DemoConfig


def test_demo_end_to_end_and_rerun(tmp_path, tiny_data, monkeypatch):
    cfg = DemoConfig(data=tiny_data, tokenizer_steps=3, tokenizer_batch=16, k=8, steps=3, batch_size=16,
                     warmup=1, samples_per_class=4, classifier_epochs=1, inception=False)
    logs = []
    page = Demo(cfg, tmp_path / "demo", progress=False, log=logs.append).run()
    text = page.read_text()
    assert "CTF" in text and "baseline" in text and "classifier-FID" in text
    for name in ("samples-ctf.png", "samples-baseline.png", "index.html", "tokenizer-reconstructions.png"):
        assert (page.parent / name).is_file(), name
    # the coarse-to-fine figure, and the command the report gives for it makes the same file
    import re
    import shlex

    from ctfgen.apps.cli import main as cli_main

    command = re.search(r"`(ctfgen sample [^`]+)`", text).group(1)
    monkeypatch.chdir(tmp_path)
    assert cli_main([*shlex.split(command)[1:], "--no-progress"]) == 0
    assert (tmp_path / "coarse-to-fine.png").read_bytes() == (page.parent / "coarse-to-fine.png").read_bytes()
    result = json.loads((tmp_path / "demo" / "eval-ctf.json").read_text())
    assert result["samples"]["count"] == 12
    assert result["metadata"]["sampling"]["guidance_scale"] == 2.0

    logs.clear()
    Demo(cfg, tmp_path / "demo", progress=False, log=logs.append).run()
    reused = [line for line in logs if "reusing" in line]
    assert len(reused) >= 6, logs  # tokenizer, codes, coarse map, pipelines, classifier, evaluations
    assert "train ar" in (tmp_path / "demo" / "report" / "README.md").read_text()  # timings kept across reruns
    timings = json.loads((tmp_path / "demo" / "timings.json").read_text())
    steps = {k: v for k, v in timings.items() if "(total)" not in k}
    assert list(timings)[-2:] == ["all steps (total)", "this run (total)"]
    assert timings["all steps (total)"] == pytest.approx(sum(steps.values()), abs=0.2)
    assert timings["this run (total)"] < timings["all steps (total)"]  # the rerun only reused

    from dataclasses import replace

    from ctfgen import CtfgenError
    with pytest.raises(CtfgenError, match="other demo settings .steps: 3 there, 4 now"):
        Demo(replace(cfg, steps=4), tmp_path / "demo", progress=False, log=logs.append).run()


def test_a_folder_made_before_a_settings_field_existed_still_matches(tmp_path):
    """A release that adds a field (at its default) must not refuse folders made before it."""
    import dataclasses
    import json

    from ctfgen.config import changed_settings
    from ctfgen.experiments.demo import DemoConfig

    saved = json.loads(json.dumps(dataclasses.asdict(DemoConfig())))
    del saved["data"]["skip_bad"]  # as if written before the field existed
    del saved["seed"]
    assert changed_settings(DemoConfig(), saved) == []
    saved["steps"] = 7
    assert changed_settings(DemoConfig(), saved) == [("steps", 7, DemoConfig().steps)]
    saved["gone"] = 1  # a field this release no longer has is reported, not ignored
    assert ("gone", 1, None) in changed_settings(DemoConfig(), saved)


def test_workspace_steps_reuse_finished_folders_log_their_experiment_and_make_nothing_when_told(tmp_path):
    """The shared steps of demo, quality bench and scaling study (experiments/workspace.py)."""
    import json
    from dataclasses import replace

    from ctfgen import CtfgenError
    from ctfgen.experiments.demo import DemoConfig
    from ctfgen.experiments.workspace import NotMade, Workspace

    logs, made = [], []

    def make(folder, info=None):
        def run():
            made.append(folder.name)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "manifest.json").write_text(json.dumps({"info": info or {}}))
        return run

    ws = Workspace(DemoConfig(steps=3), tmp_path / "x", name="probe", seed=0, log=logs.append)
    ws.begin()
    assert json.loads((tmp_path / "x" / "probe_config.json").read_text())["steps"] == 3
    ws.step("thing", tmp_path / "x" / "a", make(tmp_path / "x" / "a"))
    ws.step("thing", tmp_path / "x" / "a", make(tmp_path / "x" / "a"))
    assert made == ["a"] and logs == [f"[probe] thing -> {tmp_path / 'x' / 'a'}",
                                      f"[probe] thing: reusing {tmp_path / 'x' / 'a'}"]
    assert "thing" in ws.timings
    # an unfinished artifact (a tokenizer's training checkpoint) is made again, not reused
    b = tmp_path / "x" / "b"
    ws.step("other", b, make(b, {"unfinished": True}))
    ws.step("other", b, make(b))
    assert made == ["a", "b", "b"]
    ws.make = False
    with pytest.raises(NotMade):
        ws.step("missing", tmp_path / "x" / "c", make(tmp_path / "x" / "c"))
    with pytest.raises(NotMade):
        ws.sample_and_score("never", lambda: None, tmp_path / "clf", samples_per_class=1)
    assert ws.step("thing", tmp_path / "x" / "a", make(tmp_path / "x" / "a")) == tmp_path / "x" / "a"
    assert made == ["a", "b", "b"]
    with pytest.raises(CtfgenError, match="other probe settings .steps: 3 there, 4 now"):
        Workspace(replace(DemoConfig(), steps=4), tmp_path / "x", name="probe", seed=0).begin()
    Workspace(replace(DemoConfig(), steps=3, seed=5), tmp_path / "x", name="probe", seed=5).begin(extendable={"seed"})
