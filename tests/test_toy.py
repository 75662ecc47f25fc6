"""The toy model: deterministic, and its planted massive activation is found by a demo run."""

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


def test_toy_model_is_deterministic():
    a, b = build_toy_model(), build_toy_model()
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
