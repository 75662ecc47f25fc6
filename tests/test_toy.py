"""The toy model: deterministic, its planted massive activation is found by a demo run, and
it is the only massive token."""

import pytest
import torch

from helpers import DEMO, run_validate
from lit_massive.models.toy import ToyConfig, build_toy_model


def test_demo_finds_planted_dim_position_and_first_block(tmp_path):
    truth = ToyConfig()
    _, results = run_validate(tmp_path, "--config", DEMO)
    variant = results["variants"]["baseline"]
    assert variant["first_massive_layer"] == truth.massive_layer
    for row in variant["layers"]:
        if row["layer"] < truth.massive_layer:
            assert row["massive_fraction"] == 0.0
            assert row["top"][0] < 100
        else:
            assert row["massive_fraction"] == 1.0
            assert (row["top1_dim"], row["top1_dim_fraction"]) == (truth.massive_dim, 1.0)
            assert (row["top1_position"], row["top1_position_fraction"]) == (truth.massive_position, 1.0)
            assert row["top"][0] > 1000 * row["median"]
            assert 0.5 * truth.massive_value < row["top"][0] < 1.5 * truth.massive_value


@pytest.mark.slow  # in the full suite only: keeps the fast loop under 5 minutes
def test_the_only_massive_token_is_position_0_so_the_two_head_scores_agree(tmp_path):
    """As in GPT-2, one massive token: the writer head's values (every position) are large
    but below the threshold, so the massive-token scores are the first-token scores and
    show the sink heads against the rest, not a flat 1."""
    truth = ToyConfig()
    _, results = run_validate(tmp_path, "--config", DEMO, "--data.num_sequences", "4")
    baseline = results["variants"]["baseline"]
    assert {e["position"] for e in baseline["massive"]} == {truth.massive_position}
    assert {e["layer"] for e in baseline["massive"]} == set(range(truth.massive_layer, truth.n_layer))
    massive = torch.tensor(baseline["massive_token_scores"])
    torch.testing.assert_close(massive, torch.tensor(baseline["head_scores"]), rtol=1e-6, atol=1e-9)
    assert float(massive.min()) < 0.5
    assert min(baseline["attention_to_massive"]) < 0.5
    for row in baseline["layers"][truth.writer_head[0] :]:  # the writer's values are top-2 and top-3
        assert 0.5 * truth.written_value < row["top"][2] <= row["top"][1] < 100


def test_toy_model_is_deterministic():
    a, b = build_toy_model(), build_toy_model()
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
