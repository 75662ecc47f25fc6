"""Adding an analysis is one file: a small analysis defined here (the mean |block output|
per layer) reaches results.json, TensorBoard and the terminal table, and one in its own file
(first_token_excess.py: an option, a key, a per-head figure that ranks heads, a dependency
on the head scores) reaches the CLI, --help, measure() and selections, without any other
file knowing them."""

import importlib
import json
import sys

import numpy as np
import pytest
import torch
from torch import Tensor
from transformers import AutoModelForCausalLM

import lit_massive
from helpers import (
    cli_output,
    reference_block_outputs,
    reference_windows,
    run_validate,
    tensorboard_events,
    tiny_run_args,
)
from lit_massive.analyses import ANALYSES, Analysis, Column, Forward, Setup, SumStatesMetric, register_analysis
from lit_massive.analyses.registry import unregister_analysis
from lit_massive.errors import InputError
from lit_massive.results.names import SCORES


class MeanAbs(SumStatesMetric):
    """Per layer: the sum over windows of each window's mean |block output|."""

    total: Tensor  # (L,) float64
    count: Tensor  # () int64

    def __init__(self, n_layer: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.zeros(n_layer, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, forward: Forward) -> None:
        for i, per_window in enumerate(forward.probed.reduced["mean_abs"]):  # reduced in each block's hook
            self.total[i] += per_window.sum(dtype=torch.float64)
        self.count += forward.input_ids.shape[0]

    def compute(self) -> dict[str, Tensor]:
        return {"mean_abs": self.total / self.count}


class MeanAbsAnalysis(Analysis):
    name = "mean_abs"
    keys = ("mean_abs_block_output",)
    reduces_blocks = True

    def new_metric(self, setup: Setup) -> MeanAbs:
        return MeanAbs(setup.layout.n_layer)

    def reduce_block(self, block):
        return block.output.detach().float().abs().mean(dim=(1, 2))  # (B,): all this analysis keeps of a block

    def section(self, computed, decode):
        return {"mean_abs_block_output": computed["mean_abs"].tolist()}

    @classmethod
    def publish(cls, out, model, name, entry):
        for layer, value in enumerate(entry["mean_abs_block_output"]):
            out.scalar(f"{name}/mean_abs", value, layer)

    @classmethod
    def columns(cls, entry):
        return [Column(70, "mean |x| (last layer)", f"{entry['mean_abs_block_output'][-1]:.4f}")]


@pytest.fixture
def mean_abs():
    """The analysis registered for one test: registries are global state."""
    register_analysis(MeanAbsAnalysis)
    yield MeanAbsAnalysis
    unregister_analysis(MeanAbsAnalysis.name)


def test_a_registered_analysis_reaches_results_tensorboard_and_terminal(
    tmp_path, tiny_gpt2_dir, corpus_jsonl, mean_abs, capsys
):
    run_dir, results = run_validate(
        tmp_path, *tiny_run_args(tiny_gpt2_dir, corpus_jsonl, 32, 4, 2), "--model.variants", '{"cut": [[1, 2]]}'
    )
    windows = reference_windows(tiny_gpt2_dir, corpus_jsonl, 32, 32, 4)
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    expected = [x.abs().double().mean(dim=(1, 2)).mean().item() for x in reference_block_outputs(model, windows)]
    got = results["variants"]["baseline"]["mean_abs_block_output"]
    assert got == pytest.approx(expected, rel=1e-6)
    assert results["variants"]["cut"]["mean_abs_block_output"] != got  # measured per variant
    scalars = tensorboard_events(run_dir, "baseline").Scalars("mean_abs")
    assert [e.step for e in scalars] == [0, 1, 2]
    assert [e.value for e in scalars] == pytest.approx(expected, rel=1e-6)
    terminal = capsys.readouterr().out
    assert "mean |x| (last layer)" in terminal and f"{expected[-1]:.4f}" in terminal


def test_without_it_the_key_is_not_there(tmp_path, tiny_gpt2_dir, corpus_jsonl):
    _, results = run_validate(tmp_path, *tiny_run_args(tiny_gpt2_dir, corpus_jsonl, 32, 2, 2))
    assert "mean_abs_block_output" not in results["variants"]["baseline"]
    # the built-ins, in results.json key order (the test's own analysis was removed again)
    assert list(ANALYSES) == [
        "layer_profile", "outlier_stats", "head_scores", "sink_rate", "learned_sinks", "secondary_sinks", "value_norms",
        "head_output_norm",
        "massive_update", "first_token_logit_gap", "logit_factors", "qkv_dims", "perplexity", "locator", "components",
        "super_weights", "linear_inputs", "feature_view", "tasks",
    ]  # fmt: skip


def test_a_name_is_registered_once():
    with pytest.raises(ValueError, match="registered twice"):

        class Twin(Analysis):
            name = "layer_profile"

        register_analysis(Twin)
    with pytest.raises(InputError, match="registered: layer_profile, outlier_stats, head_scores"):
        from lit_massive.analyses import analysis_class

        analysis_class("no_such")


@pytest.fixture
def excess():
    """tests/first_token_excess.py, imported (which registers it) for one test, then taken out."""
    module = importlib.import_module("first_token_excess")
    yield module
    unregister_analysis(module.FirstTokenExcess.name)
    del sys.modules["first_token_excess"]


def test_an_analysis_in_its_own_file_reaches_the_cli_help_results_and_selections(
    tmp_path, tiny_gpt2_dir, corpus_jsonl, excess, capsys
):
    assert "--model.analyses.first_token_excess.share" in cli_output(capsys, "validate", "--help")
    variants = {"by_excess": {"select": "top", "k": 2, "by": "first_token_excess"},
                "by_first": {"select": "top", "k": 2, "by": "first_token"}}  # fmt: skip
    _, results = run_validate(
        tmp_path,
        *tiny_run_args(tiny_gpt2_dir, corpus_jsonl, 32, 4, 2),
        "--model.analyses.head_scores.enabled", "true",
        "--model.analyses.first_token_excess.enabled", "true",
        "--model.analyses.first_token_excess.share", "0.5",
        "--model.variants", json.dumps(variants),
    )  # fmt: skip
    baseline = results["variants"]["baseline"]
    expected = np.array(baseline["head_scores"]) - 0.5
    np.testing.assert_allclose(baseline["first_token_excess"], expected, rtol=1e-12)
    # a per-head figure that ranks heads: the order of the first-token scores, shifted
    by_excess, by_first = results["variants"]["by_excess"], results["variants"]["by_first"]
    assert by_excess["pruned_heads"] == by_first["pruned_heads"] and len(by_excess["pruned_heads"]) == 2
    # the same from Python, with its option; off, its key is null; its dependency off, it does not run
    data = {"dataset": "toy", "seq_len": 32, "num_sequences": 2}
    on = {"head_scores": True, "first_token_excess": {"enabled": True, "share": 0.0}}
    measured = lit_massive.measure("toy", data, analyses=on).variants["baseline"]
    np.testing.assert_allclose(measured["first_token_excess"], measured["head_scores"], rtol=1e-12)
    off = lit_massive.measure("toy", data, analyses={"first_token_excess": True}).variants["baseline"]
    assert off["first_token_excess"] is None and off["head_scores"] is None


def test_bad_options_of_a_registered_analysis_are_one_line(excess):
    with pytest.raises(InputError, match="analyses.first_token_excess: no option 'shares'; valid: enabled, share"):
        lit_massive.measure("toy", {"dataset": "toy"}, analyses={"first_token_excess": {"shares": 1}})
    with pytest.raises(InputError, match="measure: head_scores is now analyses="):
        lit_massive.measure("toy", {"dataset": "toy"}, head_scores=True)


def test_the_head_figures_rank_heads_knows_without_torch_are_the_ones_the_analyses_declare():
    declared = {by: key for cls in ANALYSES.values() for by, key in cls.head_figures.items()}
    assert declared == SCORES
