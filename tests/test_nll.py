"""Held-out likelihood: exact (sums to 1 over every sequence), and the `ctfgen eval nll` command."""
import itertools
import math
import re

import numpy as np
import pytest
import torch

from ctfgen.evaluate.nll import gpt_nll, heldout_nll, stage2_nll
from ctfgen.models import build_model
from ctfgen.models.member_prior import MemberPrior

V, GRID = 4, 2  # a 2x2 grid of 4 codes: 256 sequences per class
CODE_TO_COARSE = torch.tensor([0, 1, 1, 1])  # clusters of unequal size
SMALL = dict(n_layer=1, n_head=2, dim=16)


def all_sequences() -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(V), repeat=GRID * GRID)))


def models(use_class=True):
    torch.manual_seed(0)
    base = build_model("baseline", "tiny", vocab_size=V, num_classes=2, grid=GRID, **SMALL).eval()
    ar = build_model("ar", "tiny", vocab_size=V, coarse_vocab=2, num_classes=2, grid=GRID, **SMALL).eval()
    aux = build_model("aux", "tiny", vocab_size=V, coarse_vocab=2, num_classes=2, grid=GRID,
                      code_to_coarse=CODE_TO_COARSE, use_class=use_class, **SMALL).eval()
    for m in (base, ar, aux):  # the head starts at zero (uniform): random weights make the test bite
        for name, w in m.named_parameters():
            w.data.normal_(0, 0.5)
    return base, ar, aux


@pytest.mark.parametrize("label", [0, 1])
def test_likelihoods_sum_to_one_over_every_sequence(label):
    base, ar, aux = models()
    x = all_sequences()
    y = torch.full((len(x),), label)
    uniform = MemberPrior.build("uniform", CODE_TO_COARSE, k=2)
    frequency = MemberPrior.build("frequency", CODE_TO_COARSE, k=2, train_codes=np.array([1, 1, 1, 2, 0]))
    totals = {"baseline": gpt_nll(base, x, y)}
    coarse_nll = gpt_nll(ar, CODE_TO_COARSE[x], y)
    for name, s2 in (("ctf", aux), ("ctf-uniform", uniform), ("ctf-frequency", frequency)):
        totals[name] = coarse_nll + stage2_nll(s2, x, y, batch_size=7)  # odd batches: no edge effects
    for name, nll in totals.items():
        p = torch.exp(-nll)
        assert float(p.sum()) == pytest.approx(1.0, abs=1e-6), name
        assert float(p.max()) > 2.0 / len(x), f"{name} is close to uniform: the test would be weak"


def test_stage2_without_class_and_without_mask_still_normalised():
    _, ar, aux = models(use_class=False)
    aux.config.mask_to_cluster = False  # scored renormalised over the cluster members
    x = all_sequences()
    y = torch.zeros(len(x), dtype=torch.long)
    p = torch.exp(-(gpt_nll(ar, CODE_TO_COARSE[x], y) + stage2_nll(aux, x, y)))
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-6)
    r = heldout_nll({"ar": ar, "aux": aux}, x[:10], y[:10])
    assert r["stage2_renormalised"] is True


def test_heldout_bits_add_up_and_priors_are_what_they_say():
    base, ar, aux = models()
    x = all_sequences()[::5]
    y = torch.arange(len(x)) % 2
    r = heldout_nll({"ar": ar, "aux": aux}, x, y)
    assert r["bits_per_token"] == pytest.approx(r["stage1_bits_per_token"] + r["stage2_bits_per_token"])
    assert r["nats_per_image"] == pytest.approx(r["bits_per_token"] * 4 * math.log(2))
    u = heldout_nll({"ar": ar, "aux": MemberPrior.build("uniform", CODE_TO_COARSE, k=2)}, x, y)
    # uniform stage 2: log2(cluster size) bits for each code
    expect = np.log2(np.array([1, 3, 3, 3]))[x.numpy()].mean()
    assert u["stage2_bits_per_token"] == pytest.approx(expect)
    assert u["stage2"] == "uniform" and r["stage2"] == "aux"
    assert heldout_nll({"baseline": base}, x, y)["bits_per_token"] > 0


def test_frequency_prior_counts_training_codes_with_smoothing():
    p = MemberPrior.build("frequency", CODE_TO_COARSE, k=2, train_codes=np.array([[1, 1], [1, 2]]))
    probs = p.log_prob(torch.arange(V)[None]).exp()[0]
    assert probs.tolist() == pytest.approx([1.0, 4 / 7, 2 / 7, 1 / 7])  # counts 3, 1, 0 in cluster 1, +1 each


def test_member_prior_samples_only_cluster_members():
    from ctfgen.sample import SamplingConfig
    from ctfgen.sample.sampler import sample_fine

    def sample_from_prior(prior, coarse, u, settings):  # the one stage-2 sampler; a prior ignores the class
        return sample_fine(prior, coarse, None, u, settings)

    p = MemberPrior.build("frequency", CODE_TO_COARSE, k=2, train_codes=np.array([1] * 50 + [3]))
    coarse = torch.tensor([[0, 1] * 200])
    codes = sample_from_prior(p, coarse, torch.rand(coarse.shape), SamplingConfig(stage2_temperature=1.0))
    assert bool((CODE_TO_COARSE[codes] == coarse).all())
    ones = int((codes[0, 1::2] == 1).sum())
    assert ones > 150  # 51/54 of the cluster's mass
    argmax = sample_from_prior(p, coarse, torch.rand(coarse.shape), SamplingConfig(stage2_argmax=True))
    assert set(argmax[0, 1::2].tolist()) == {1}


def test_bad_inputs_are_named():
    from ctfgen.errors import CtfgenError

    base, ar, aux = models()
    with pytest.raises(CtfgenError, match="tokens"):
        gpt_nll(base, torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    with pytest.raises(CtfgenError, match="training codes"):
        MemberPrior.build("frequency", CODE_TO_COARSE, k=2)
    with pytest.raises(CtfgenError, match="rule"):
        MemberPrior.build("mode", CODE_TO_COARSE, k=2)


def test_stage1_nats_reused_across_stage2s_give_the_same_result():
    _, ar, aux = models()
    x = all_sequences()[::3]
    y = torch.arange(len(x)) % 2
    keep = {}
    first = heldout_nll({"ar": ar, "aux": aux}, x, y, keep=keep)
    uniform = MemberPrior.build("uniform", CODE_TO_COARSE, k=2)
    reused = heldout_nll({"ar": ar, "aux": uniform}, x, y, stage1_N=keep["stage1_N"])
    fresh = heldout_nll({"ar": ar, "aux": uniform}, x, y)
    assert reused["bits_per_token"] == pytest.approx(fresh["bits_per_token"], abs=1e-12)
    assert reused["stage1_bits_per_token"] == pytest.approx(first["stage1_bits_per_token"], abs=1e-12)


def test_command_refuses_stages_and_maps_that_do_not_belong_together(tmp_path, capsys):
    """`ctfgen eval nll` checks every input against the others: both stages against the code store's
    tokenizer (not only the last one given), the stages' coarse maps against each other, and
    --coarse-map against stage 1's; each refusal names the folders."""
    from ctfgen.apps.cli import main as cli_main
    from ctfgen.cluster import CoarseMap
    from ctfgen.codes import CodesConfig, CodeStore
    from ctfgen.models.artifact import TrainedModel

    _, ar, aux = models()
    CodeStore.save(tmp_path / "codes", np.random.default_rng(0).integers(0, V, (6, 1, GRID * GRID)), np.arange(6) % 2,
                   config=CodesConfig(grid=[GRID, GRID], vocab_size=V, num_classes=2, split="test"),
                   made_from={"tokenizer": "TOK_B"})
    cmap = CoarseMap.from_labels(CODE_TO_COARSE, tokenizer_fingerprint="TOK_B")
    other_map = CoarseMap.from_labels(torch.tensor([0, 0, 1, 1]), tokenizer_fingerprint="TOK_B")
    cmap.save(tmp_path / "map")
    other_map.save(tmp_path / "other-map")
    folders = {}
    for name, model, tok, fp in (("ar", ar, "TOK_B", cmap.fingerprint), ("aux", aux, "TOK_B", cmap.fingerprint),
                                 ("ar-tokA", ar, "TOK_A", cmap.fingerprint), ("aux-mapY", aux, "TOK_B", "MAP_Y")):
        folders[name] = tmp_path / name
        TrainedModel(model, made_from={"tokenizer": tok, "coarse_map": fp}).save(folders[name])
    args = ["eval", "nll", "--codes", str(tmp_path / "codes"), "--quiet"]

    def refused(*more, match):
        assert cli_main(args + [str(x) for x in more]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and re.search(match, err), err

    assert cli_main(args + ["--ar", str(folders["ar"]), "--aux", str(folders["aux"])]) == 0
    assert "bits/token" in capsys.readouterr().out
    # stage 1 of tokenizer A, stage 2 of the store's tokenizer B: the first stage counts too
    refused("--ar", folders["ar-tokA"], "--aux", folders["aux"],
            match=rf"ar model \({re.escape(str(folders['ar-tokA']))}\) / tokenizer of codes .*TOK_B, found TOK_A")
    # same tokenizer, other coarse maps
    refused("--ar", folders["ar"], "--aux", folders["aux-mapY"],
            match=rf"stage 1 \({re.escape(str(folders['ar']))}\) / stage 2 \({re.escape(str(folders['aux-mapY']))}\) "
                  "coarse map mismatch")
    # a parameter-free stage 2 over another coarse map than stage 1's
    refused("--ar", folders["ar"], "--stage2", "uniform", "--coarse-map", tmp_path / "other-map",
            match=rf"coarse map {re.escape(str(tmp_path / 'other-map'))} / stage 1 .* mismatch")
    assert cli_main(args + ["--ar", str(folders["ar"]), "--stage2", "uniform", "--coarse-map", str(tmp_path / "map")]) == 0
    capsys.readouterr()
    refused("--baseline", folders["ar"], "--aux", folders["aux"], match="--aux .* goes with --ar")
