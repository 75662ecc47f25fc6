"""Adding an analysis is one file and one registry line: a small analysis defined here (the
mean |block output| per layer) reaches results.json, TensorBoard and the terminal table
without any other file knowing it."""

import pytest
import torch
from torch import Tensor
from transformers import AutoModelForCausalLM

from helpers import reference_block_outputs, reference_windows, run_validate, tensorboard_events, tiny_run_args
from lit_massive.analyses import ANALYSES, Analysis, Column, Forward, Setup, SumStatesMetric, register_analysis
from lit_massive.errors import InputError


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
    del ANALYSES[MeanAbsAnalysis.name]


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
        "layer_profile", "outliers", "head_scores", "sink_rate", "learned_sinks", "secondary_sinks", "value_norms",
        "head_output_norm",
        "massive_update", "first_token_logit_gap", "logit_factors", "qkv_dims", "perplexity", "locator", "components",
        "super_weights", "linear_inputs", "feature_view", "tasks",
    ]  # fmt: skip


def test_a_name_is_registered_once():
    with pytest.raises(ValueError, match="registered twice"):

        class Twin(Analysis):
            name = "layer_profile"

        register_analysis(Twin)
    with pytest.raises(InputError, match="registered: layer_profile, outliers, head_scores"):
        from lit_massive.analyses import analysis_class

        analysis_class("no_such")
