"""`ctfgen bench quality` end to end on a tiny data set: checkpoints, ablation tables, reuse, refusal."""
import json
from dataclasses import replace

import pytest

from ctfgen import CtfgenError
from ctfgen.experiments.quality import ABLATIONS, QualityBench, QualityConfig, resolve_ablations


def test_quality_bench_checkpoints_ablations_and_rerun(tmp_path, tiny_data):
    cfg = QualityConfig(data=tiny_data, tokenizer_steps=3, tokenizer_batch=16, k=8, steps=4, checkpoints=2,
                        batch_size=16, warmup=1, samples_per_class=4, classifier_epochs=1, inception="none",
                        ablation_steps=2, ablation_samples_per_class=4)
    out = tmp_path / "q"
    logs = []
    page = QualityBench(cfg, out, progress=False, log=logs.append).run(["mask", "stage2-argmax"])

    evals = {p.stem: json.loads(p.read_text()) for p in (out / "evals").glob("*.json")}
    for name in ("ctf", "baseline"):
        early, late = evals[f"{name}-step2"], evals[f"{name}-step4"]
        assert early["metadata"]["train_steps"] == 2 and late["metadata"]["train_steps"] == 4
        assert early["samples"]["count"] == 12
        # each checkpoint is evaluated with the weights of its own step
        assert early["metadata"]["models"] != late["metadata"]["models"]
    assert evals["ctf-step4"]["metadata"]["sampling"]["temperature"] == 1.1
    assert evals["baseline-step4"]["metadata"]["sampling"]["temperature"] == 1.0  # LlamaGen's default

    unmasked = evals["ablation-mask-not_masked"]["metadata"]
    assert unmasked["settings"]["mask_to_cluster"] is False and unmasked["settings"]["train_steps"] == 2
    assert evals["ablation-stage2-argmax-argmax"]["metadata"]["sampling"]["stage2_argmax"] is True
    assert (out / "ablations" / "models" / "stage2-kmeans-k8-s2-L4-unmasked").is_dir()

    text = page.read_text()
    assert "| 2 |" in text and "| 4 |" in text  # a row per checkpoint
    assert ABLATIONS["mask"].title in text and "not masked" in text and "argmax" in text
    assert (page.parent / "curves.png").is_file() and (page.parent / "samples-ctf-step4.png").is_file()
    assert (out / "samples" / "baseline-step4.npz").is_file()

    logs.clear()
    QualityBench(cfg, out, progress=False, log=logs.append).run(["mask", "stage2-argmax"])
    assert not [line for line in logs if "] train " in line or "sample + evaluate" in line], logs
    before_timings = text.split("## Time taken")[0]
    assert page.read_text().split("## Time taken")[0] == before_timings  # same numbers, from the saved evaluations

    # results of an older evaluation format: re-scored from the kept samples, or withdrawn
    for tag in ("ctf-step4", "ctf-step2"):
        r = json.loads((out / "evals" / f"{tag}.json").read_text())
        r["format"], r["metrics"]["is_classifier"] = 1, -1.0
        (out / "evals" / f"{tag}.json").write_text(json.dumps(r))
    (out / "samples" / "ctf-step2.npz").unlink()
    QualityBench(cfg, out, progress=False, log=logs.append).run()
    rescored = json.loads((out / "evals" / "ctf-step4.json").read_text())
    assert rescored["metrics"]["is_classifier"] == pytest.approx(evals["ctf-step4"]["metrics"]["is_classifier"])
    assert rescored["rescored"]["old_values"]["is_classifier"] == -1.0
    withdrawn = json.loads((out / "evals" / "ctf-step2.json").read_text())
    assert "is_classifier" not in withdrawn["metrics"] and withdrawn["withdrawn"]["old_values"]["is_classifier"] == -1.0
    assert withdrawn["metrics"]["fid_classifier"] == evals["ctf-step2"]["metrics"]["fid_classifier"]

    with pytest.raises(CtfgenError, match="other quality settings .steps: 4 there, 6 now"):
        QualityBench(replace(cfg, steps=6), out, progress=False, log=logs.append).run()


def test_quality_config_and_ablation_names_are_checked():
    with pytest.raises(CtfgenError, match="inception must be one of"):
        QualityConfig(inception="sometimes").check()
    with pytest.raises(CtfgenError, match="checkpoints .5. cannot exceed steps .4."):
        QualityConfig(steps=4, checkpoints=5).check()
    assert QualityConfig(steps=1000, checkpoints=4).checkpoint_steps() == [250, 500, 750, 1000]
    assert resolve_ablations(["all"]) == list(ABLATIONS)
    with pytest.raises(CtfgenError, match="unknown ablation 'K'"):
        resolve_ablations(["K"])


def test_quality_cli_names_a_bad_ablation(capsys):
    from ctfgen.apps.cli import main

    with pytest.raises(SystemExit) as e:  # refused while parsing, before anything runs
        main(["bench", "quality", "--ablate", "temperatures", "--out", "unused"])
    assert e.value.code == 2
    assert "argument --ablate: invalid choice: 'temperatures'" in capsys.readouterr().err
