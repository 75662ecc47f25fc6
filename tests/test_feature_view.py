"""Experiment 1: the feature view labels the massive dims it detects, and its attention view
shows what the model's heads compute over the text."""

import json
from contextlib import nullcontext

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers import DEMO, run_validate
from lit_massive.analyses.feature_view import FeatureView, choose_heads, measure_feature_view, top_heads
from lit_massive.figures.figures import attention_view_figure, feature_view_figure
from lit_massive.figures.style import NAN
from lit_massive.models.families import decoder_layout
from lit_massive.models.toy import ToyConfig, build_toy_model, build_toy_tokenizer
from lit_massive.probes.block_stats import massive_dims
from lit_massive.probes.hooks import Needs, probes

TRUTH = ToyConfig()


def test_feature_view_labels_the_detected_dims(massive_run):
    run_dir, results = massive_run
    view = results["feature_view"]
    assert view["tokens"] == ["Summer", "is", "warm", ".", "Winter", "is", "cold", "."]
    assert view["massive_dims"] == {str(TRUTH.massive_layer): [TRUTH.massive_dim]}
    assert (run_dir / "figures" / f"feature_view_layer{TRUTH.massive_layer}.png").stat().st_size > 0
    layout = decoder_layout(build_toy_model())
    ids = build_toy_tokenizer()(view["text"], add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad(), probes(layout, Needs(block_out=True)) as probed:
        layout.backbone(input_ids=ids)
    x = probed.block_out[TRUTH.massive_layer][0].abs()
    dims = massive_dims(x, 100.0, 1000.0)
    _, axes = feature_view_figure(x.tolist(), view["tokens"], dims, "t")
    for ax in axes:  # the 3D and the 2D view: the dims' range and the massive dim
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert str(TRUTH.massive_dim) in labels and labels[0] == "0" and labels[-1] == str(x.shape[1] - 1)


TEXT = "Summer is warm. Winter is cold."


def _reference(model: torch.nn.Module, ids: torch.Tensor) -> list[torch.Tensor]:
    """Per layer, (H, T, T) probabilities from transformers' own eager attention, no project code."""
    with torch.no_grad():
        return [a[0] for a in model(ids[None], output_attentions=True).attentions]


def _top4(first_token: torch.Tensor) -> list[int]:
    """Heads by first-token score, largest first, ties by index, written without project code."""
    return sorted(range(len(first_token)), key=lambda h: (-float(first_token[h]), h))[:4]


def _top4_anywhere(reference: list[torch.Tensor]) -> list[tuple[int, int]]:
    """(layer, head) of any layer by first-token score, largest first, ties by (layer, head)."""
    first = torch.stack([r[:, :, 0].mean(-1) for r in reference])  # (L, H)
    pairs = [(layer, head) for layer in range(first.shape[0]) for head in range(first.shape[1])]
    return sorted(pairs, key=lambda p: (-float(first[p]), p))[:4]


def _assert_maps_are_eager_attention(view, pairs, reference, t: int) -> None:
    """Each shown head's probabilities are eager attention's; its logits are log p up to a
    per-row constant where a key is allowed and NaN where it is masked; its first-token score
    is the mean over queries of p_i0."""
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    for layer, head in pairs:
        p, s = reference[layer][head], view.logits[layer][head]
        assert view.probs[layer][head].dtype == s.dtype == torch.float32 and s.shape == (t, t)
        torch.testing.assert_close(view.probs[layer][head], p, atol=1e-5, rtol=0)
        assert view.first_token_scores[layer][head] == pytest.approx(float(p[:, 0].mean()), abs=1e-5)
        assert torch.equal(s.isnan(), ~causal)
        # softmax is shift-invariant per row: s_ij - s_i0 = log p_ij - log p_i0
        torch.testing.assert_close((s - s[:, :1])[causal], (p.log() - p[:, :1].log())[causal], atol=1e-4, rtol=0)


def _models(name: str, family_dir) -> tuple:
    """(measured model in its default backend, the same weights in eager attention, tokenizer, BOS id)."""
    if name == "toy":
        return build_toy_model(), build_toy_model(attn_implementation="eager"), build_toy_tokenizer(), None
    directory = family_dir(name)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return (
        AutoModelForCausalLM.from_pretrained(directory),
        AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager"),
        tokenizer,
        tokenizer.bos_token_id,
    )


@pytest.mark.parametrize("name, layers", [("toy", [TRUTH.sink_head[0], TRUTH.writer_head[0]]), ("llama", [0, 2])])
def test_attention_view_is_the_models_attention(name, layers, family_dir):
    """With `layers` set, each shown layer's view holds its 4 heads with the largest
    first-token score, and their maps are the model's attention (`_assert_maps_are_eager_attention`).
    The toy measures through sdpa, llama (grouped-query, RoPE, BOS first) too."""
    model, eager, tokenizer, bos = _models(name, family_dir)
    assert model.config._attn_implementation == "sdpa"
    layout, cpu = decoder_layout(model), torch.device("cpu")
    shown = FeatureView(TEXT, layers=layers)
    view = measure_feature_view(layout, tokenizer, shown, layers, (100.0, 1000.0), nullcontext(), cpu, bos)
    ids = tokenizer(TEXT, add_special_tokens=bos is not None, return_tensors="pt")["input_ids"][0]
    reference = _reference(eager, ids)
    assert list(view.attention_heads) == layers
    for layer in layers:
        assert view.attention_heads[layer] == _top4(reference[layer][:, :, 0].mean(-1))
        assert view.attention_views[f"layer{layer}_attention"] == [(layer, h) for h in view.attention_heads[layer]]
    _assert_maps_are_eager_attention(view, [(la, h) for la in layers for h in view.attention_heads[la]], reference,
                                      len(ids))  # fmt: skip
    if name == "toy":  # the planted sink heads lead their layers' views
        assert view.attention_heads[TRUTH.sink_head[0]][0] == TRUTH.sink_head[1]
        assert view.attention_heads[TRUTH.writer_head[0]][0] == TRUTH.writer_head[1]
        assert view.first_token_scores[TRUTH.sink_head[0]][TRUTH.sink_head[1]] > 0.99


def test_default_heads_rank_by_first_token_score_then_index():
    assert choose_heads([0.5, 0.9, 0.5, 0.9, 0.1, 0.7], None) == [1, 3, 5, 0]
    assert choose_heads([0.2, float("nan"), 0.3], None) == [2, 0, 1]  # fewer heads than 4: all of them
    assert choose_heads([0.2, 0.9, 0.3], [2, 0]) == [2, 0]


@pytest.mark.parametrize("name", ["toy", "llama"])
def test_by_default_the_view_shows_the_heads_that_sink_most_in_any_layer(name, family_dir):
    """Neither layers nor heads set: one view of the 4 heads of all layers with the largest
    first-token score in the text, largest first; on the toy, its planted sink heads
    (5, 1) and (8, 3) lead (at the massive layer 2 every head attends about evenly)."""
    model, eager, tokenizer, bos = _models(name, family_dir)
    layout, cpu = decoder_layout(model), torch.device("cpu")
    massive = [TRUTH.massive_layer]  # the |block output| view's layer
    view = measure_feature_view(layout, tokenizer, FeatureView(TEXT), massive, (100.0, 1000.0), nullcontext(), cpu, bos)
    ids = tokenizer(TEXT, add_special_tokens=bos is not None, return_tensors="pt")["input_ids"][0]
    reference = _reference(eager, ids)
    expected = _top4_anywhere(reference)
    assert view.attention_views == {"attention": expected}
    assert view.attention_heads == {
        la: [h for la2, h in expected if la2 == la] for la in dict.fromkeys(la for la, _ in expected)
    }
    _assert_maps_are_eager_attention(view, expected, reference, len(ids))
    assert list(view.values) == massive
    if name == "toy":
        assert expected[:2] == [TRUTH.sink_head, TRUTH.writer_head]
        assert max(float(r[:, 0].mean()) for r in reference[TRUTH.massive_layer]) < 0.4


def test_heads_without_layers_are_shown_at_the_first_massive_layer():
    layout, cpu = decoder_layout(build_toy_model()), torch.device("cpu")
    shown = FeatureView(TEXT, heads=[TRUTH.sink_head[1], 0])
    view = measure_feature_view(layout, build_toy_tokenizer(), shown, [2], (100.0, 1000.0), nullcontext(), cpu)
    assert view.attention_heads == {2: [TRUTH.sink_head[1], 0]}
    assert view.attention_views == {"layer2_attention": [(2, TRUTH.sink_head[1]), (2, 0)]}


def test_heads_of_any_layer_rank_by_first_token_score_then_layer_and_head():
    scores = {(3, 0): 0.5, (1, 2): 0.9, (0, 1): float("nan"), (2, 1): 0.5, (0, 3): 0.2, (5, 5): 0.9}
    assert top_heads(scores) == [(1, 2), (5, 5), (2, 1), (3, 0)]
    assert top_heads({(0, 1): float("nan"), (4, 0): 0.1}) == [(4, 0), (0, 1)]


def test_the_run_shows_the_heads_that_sink_most(massive_run):
    """The default view in a run: the 4 heads of any layer with the largest first-token
    score, each with its score in results.json, in one figure; no (T, T) map in results.json."""
    run_dir, results = massive_run
    view = results["feature_view"]
    ids = build_toy_tokenizer()(TEXT, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    reference = _reference(build_toy_model(attn_implementation="eager"), ids)
    expected = _top4_anywhere(reference)
    assert [(int(la), h) for la, heads in view["attention_heads"].items() for h in heads] == expected
    scores = [view["first_token_scores"][str(la)][str(h)] for la, h in expected]
    assert scores == pytest.approx([float(reference[la][h][:, 0].mean()) for la, h in expected], abs=1e-5)
    assert set(view) == {"text", "tokens", "massive_dims", "attention_heads", "first_token_scores"}
    assert (run_dir / "figures" / "feature_view_attention.png").stat().st_size > 0
    assert not list((run_dir / "figures").glob("feature_view_layer*_attention.png"))


def test_configured_heads_are_shown_in_their_order(tmp_path):
    shown = {"text": TEXT, "layers": [TRUTH.sink_head[0]], "heads": [7, TRUTH.sink_head[1]]}
    run_dir, results = run_validate(
        tmp_path, "--config", DEMO, "--data.num_sequences", "2", "--model.analyses.feature_view", json.dumps(shown)
    )
    view = results["feature_view"]
    layer = str(TRUTH.sink_head[0])
    assert view["attention_heads"] == {layer: shown["heads"]}
    ids = build_toy_tokenizer()(TEXT, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    first = _reference(build_toy_model(attn_implementation="eager"), ids)[TRUTH.sink_head[0]][:, :, 0].mean(-1)
    scores = view["first_token_scores"][layer]
    assert scores == pytest.approx({str(h): float(first[h]) for h in shown["heads"]}, abs=1e-5)
    assert scores[str(TRUTH.sink_head[1])] > 0.99
    assert (run_dir / "figures" / f"feature_view_layer{layer}_attention.png").stat().st_size > 0


@pytest.mark.parametrize(
    "heads, expected", [("[12]", "heads [12] out of range"), ("[-1, 3]", "heads [-1] out of range"), ("[]", "empty")]
)
def test_a_head_out_of_range_stops_the_run_before_it_starts(tmp_path, heads, expected):
    with pytest.raises(SystemExit) as info:
        run_validate(tmp_path, "--config", DEMO, "--model.analyses.feature_view.heads", heads)
    message = str(info.value.code)
    assert message.startswith("lit_massive: error: ") and "\n" not in message
    assert f"feature_view.heads={json.loads(heads)}" in message and expected in message and "0..11" in message
    assert not list(tmp_path.glob("lightning_logs/*"))


def test_attention_figure_puts_the_tokens_on_both_axes():
    tokens = ["<|endoftext|>", "a", "$x$", "\n"]
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]] * 4).masked_fill(~torch.ones(4, 4, dtype=torch.bool).tril(), NAN)
    probs = torch.softmax(logits.nan_to_num(float("-inf")), -1)
    fig, axes = attention_view_figure([logits, logits], [probs, probs], [3, 0], [0.9, 0.4], tokens, "t")
    assert len(axes) == 2 and len(axes[0]) == 2
    labels = ["<|endoftext|>", "a", r"\$x\$", r"\n"]
    assert [t.get_text() for t in axes[1][0].get_xticklabels()] == labels  # key tokens, bottom row
    assert [t.get_text() for t in axes[0][0].get_yticklabels()] == labels  # query tokens, first column
    assert [ax.get_title() for ax in axes[0]] == ["head 3\nfirst-token score 0.900", "head 0\nfirst-token score 0.400"]
    shown = axes[1][1].get_images()[0]
    assert shown.get_clim() == (0.0, pytest.approx(1.0))  # probabilities: 0 to the largest shown
    assert bool(shown.get_array().mask[0, 1]) and not bool(shown.get_array().mask[1, 0])  # masked keys blank
    assert axes[0][0].get_images()[0].get_clim() == (0.0, 3.0)  # logits: their range, NaN left out
