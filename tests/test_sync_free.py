"""The measured step reads nothing back to the host: on a GPU it never waits for the device.

The check runs on the CPU: a dispatch mode records every aten op of one `validation_step`
with every feature on, and the ops that read a device value on the host (or whose output
shape depends on data) must not be among them."""

import json
from unittest import mock

import pytest
import torch

from helpers import DEMO, run_validate
from lit_massive.models.toy import ToyConfig
from lit_massive.module import MassiveActivations
from lit_massive.probes.host_reads import HostReads

TRUTH = ToyConfig()


def test_the_recorder_sees_host_reads():
    x = torch.arange(6.0)
    with HostReads() as mode:
        x.sum().item()
        x[x > 2].nonzero()
        bool(x.any())
    assert {"_local_scalar_dense", "boolean-mask index", "nonzero"} <= set(mode.found)


@pytest.mark.slow  # in the full suite only: keeps the fast loop under 5 minutes
def test_validation_step_with_every_feature_reads_nothing_back(tmp_path):
    layer = TRUTH.massive_layer
    variants = {
        "cut": [[5, 1], [8, 3]],
        "zero": {"set_massive": {"layer": layer, "to": "zero"}, "prune_heads": [[2, 7]]},
        "mean": {"set_massive": {"layer": layer, "to": "mean"}},
        "control": {"set_random": {"layer": layer, "seed": 1}},
        "low": {"select": "bottom", "k": 2},
        "weights": {"zero_weights": [[layer, TRUTH.massive_dim, 0]]},
        "random_weights": {"zero_random_weights": {"layer": layer, "count": 10}},
    }
    recorded: list[HostReads] = []
    step = MassiveActivations.validation_step

    def recorded_step(self, batch, batch_idx):
        with HostReads() as mode:
            step(self, batch, batch_idx)
        recorded.append(mode)

    with mock.patch.object(MassiveActivations, "validation_step", recorded_step):
        _, results = run_validate(
            tmp_path,
            "--config", DEMO,
            "--data.num_sequences", "2",
            "--data.batch_size", "2",
            "--model.analyses.components.enabled", "true",
            "--model.analyses.outlier_stats.enabled", "true",
            "--model.variants", json.dumps(variants),
        )  # fmt: skip
    (mode,) = recorded
    assert {"topk", "median", "index_add_", "gather"} <= set(mode.ops)  # the step was recorded
    assert {"linalg_eigvalsh", "_linalg_eigh"} & set(mode.ops)  # the outlier spectrum, in the step too
    assert mode.found == []
    # the outlier statistics measured: the planted activation dominates one direction from its block on
    rows = results["variants"]["baseline"]["layers"]
    assert rows[layer]["top_direction_share"] > 0.9 > rows[0]["top_direction_share"]
    # and it measured: the planted activation is located, the edits took effect
    assert results["variants"]["baseline"]["first_massive_layer"] == layer
    assert results["variants"]["zero"]["change_vs_baseline"]["top1_pct"][layer] == pytest.approx(-100, abs=50)
