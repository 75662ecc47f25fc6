"""Edge shapes a new user tries first: a one-layer, one-head model (every per-layer figure has
one element, which torchmetrics would squeeze to a scalar), a model directory that holds
no tokenizer, and a tokenizer that is not the model's."""

import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from helpers import DEMO, run_validate


@pytest.fixture(scope="module")
def one_layer_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_embd=32, n_head=1, n_positions=64, vocab_size=2090)  # the toy tokenizer's
    path = tmp_path_factory.mktemp("one_layer")
    GPT2LMHeadModel(config).save_pretrained(path)
    return path


@pytest.mark.slow  # in the full suite only: keeps the fast loop under 5 minutes
def test_a_one_layer_one_head_model_has_one_row_of_everything(tmp_path, one_layer_dir):
    _, results = run_validate(
        tmp_path, "--config", DEMO, "--model.model_name_or_path", str(one_layer_dir),
        "--data.tokenizer", "toy", "--data.seq_len", "32", "--data.num_sequences", "4",
        "--model.analyses.components.enabled", "true", "--model.analyses.outlier_stats.enabled", "true",
        "--model.analyses.feature_view", "null", "--model.variants", json.dumps({"cut": [[0, 0]]}),
    )  # fmt: skip
    baseline = results["variants"]["baseline"]
    assert [row["layer"] for row in baseline["layers"]] == [0]
    assert len(baseline["layers"][0]["top"]) == 3 and None not in baseline["layers"][0]["top"]  # model.top_k
    assert baseline["layers"][0]["kurtosis"] is not None
    for key in ("head_scores", "massive_update_norm", "head_output_norm"):
        assert len(baseline[key]) == 1 and len(baseline[key][0]) == 1, key
    assert len(baseline["attention_to_massive"]) == 1 and len(baseline["sink_rate"]) == 1
    # block 0 reads the embeddings: no massive token, so no update from one
    assert baseline["massive_update_norm"] == [[0.0]]
    # the one head, pruned: its output is gone, and perplexity moves
    assert results["variants"]["cut"]["nll_sum"] != pytest.approx(baseline["nll_sum"], rel=1e-9)


def test_a_model_directory_without_a_tokenizer_is_refused_in_one_line(tmp_path, one_layer_dir):
    with pytest.raises(SystemExit) as info:
        run_validate(tmp_path, "--config", DEMO, "--model.model_name_or_path", str(one_layer_dir),
                     "--data.seq_len", "32")  # fmt: skip
    message = str(info.value.code)
    assert message.startswith(f"lit_massive: error: tokenizer {str(one_layer_dir)!r} has an empty vocabulary")
    assert "data.tokenizer" in message and "\n" not in message
    assert not list(tmp_path.glob("**/version_*"))  # refused before a run directory exists


def test_token_ids_outside_the_vocabulary_are_refused_in_one_line(tmp_path):
    """The toy tokenizer's 2090 ids on a model with 512 embeddings: refused before the run,
    not an IndexError in the embedding."""
    path = tmp_path / "small_vocab"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=1, n_positions=64, vocab_size=512)).save_pretrained(path)
    with pytest.raises(SystemExit) as info:
        run_validate(tmp_path, "--config", DEMO, "--model.model_name_or_path", str(path),
                     "--data.tokenizer", "toy", "--data.seq_len", "32")  # fmt: skip
    message = str(info.value.code)
    assert message.startswith("lit_massive: error: the windows hold token id ")
    assert "vocabulary of 512 tokens" in message and "\n" not in message
    assert not list(tmp_path.glob("**/version_*"))
