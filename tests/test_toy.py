"""The toy model's planted massive activation is found by a full demo run."""

from conftest import REPO, run_validate
from lit_massive.toy import ToyConfig


def test_demo_finds_planted_dim_position_and_first_block(tmp_path):
    truth = ToyConfig()
    _, results = run_validate(tmp_path, "--config", str(REPO / "configs" / "demo.yaml"))
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
