"""Experiment 1: |block output| of one text over tokens x feature dims, as a 3D plot, with
the massive dims it detects labelled (never hard-coded); and, from the same forward pass,
the attention logits and probabilities of a few heads over that text (the paper's figures 6
and 7): by default the heads that sink most in it, whatever their layer."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from lit_massive.analyses.base import Analysis, Setup
from lit_massive.analyses.registry import register_analysis
from lit_massive.errors import InputError
from lit_massive.figures import figures
from lit_massive.models.families import DecoderLayout
from lit_massive.probes import Needs, probes
from lit_massive.probes.attention import AttentionCall, attention_probe, masked_softmax_, received_attention
from lit_massive.probes.block_stats import massive_dims
from lit_massive.variants.specs import BASELINE


@dataclass
class FeatureView:
    """Experiment 1: |block output| of one text over tokens x feature dims (a 3D plot) and
    the attention of its top heads, after the pass; null: none.

    Args:
        text: the text.
        layers: the layers shown; null: the first layer with a massive activation.
        heads: the heads of the attention view at each shown layer; null: the top first-token heads.
    """

    text: str = "Summer is warm. Winter is cold."
    layers: list[int] | None = None  # null: the first layer with a massive activation
    # attention view: these heads at each shown layer; null: with `layers` null, the
    # DEFAULT_HEADS heads of any layer with the largest first-token score in this text, else
    # each shown layer's DEFAULT_HEADS top first-token heads
    heads: list[int] | None = None


DEFAULT_HEADS = 4  # heads in the attention view when none are configured

Head = tuple[int, int]  # (layer, head)
ANYWHERE = "attention"  # the name of the attention view of the heads of any layer


@dataclass
class FeatureViewResult:
    """|block output| of one text, per shown layer (T, D), with the massive dims detected in it."""

    text: str
    tokens: list[str]
    massive_dims: dict[int, list[int]]
    values: dict[int, list[list[float]]]  # for the figure only; not in results.json
    # the attention view, per layer: its heads, and each head's first-token score over this text
    attention_heads: dict[int, list[int]] = field(default_factory=dict)
    first_token_scores: dict[int, dict[int, float]] = field(default_factory=dict)
    # per layer and head, (T, T) float32: logits s_ij (NaN where masked) and
    # probabilities p_ij; for the figures only, not in results.json
    logits: dict[int, dict[int, Tensor]] = field(default_factory=dict)
    probs: dict[int, dict[int, Tensor]] = field(default_factory=dict)
    # the attention figures: name -> its panels, (layer, head) in order: ANYWHERE (the heads of
    # any layer with the largest first-token score) or "layer{i}_attention" (block i's heads)
    attention_views: dict[str, list[Head]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "tokens": self.tokens,
            "massive_dims": self.massive_dims,
            "attention_heads": self.attention_heads,
            "first_token_scores": self.first_token_scores,
        }


def shown_layers(view: FeatureView, baseline: dict) -> list[int]:
    """The configured layers, else the first layer with a massive activation in the baseline
    (else the one with the largest top-1 / median)."""
    if view.layers is not None:
        return view.layers
    first = baseline["first_massive_layer"]
    if first is not None:
        return [first]
    ratios = [row["top1_over_median"] or 0.0 for row in baseline["layers"]]
    return [max(range(len(ratios)), key=ratios.__getitem__)]


def _rank(score: float) -> float:
    """Sort key of a first-token score: the largest first, an unmeasured (NaN) one last."""
    return -score if score == score else 1.0


def choose_heads(first_token: list[float], heads: list[int] | None) -> list[int]:
    """The configured `heads`, else the DEFAULT_HEADS (at most all) with the largest
    first-token score in this text, largest first, ties by head index: the sink heads the
    paper's attention view shows."""
    if heads is not None:
        return list(heads)
    return sorted(range(len(first_token)), key=lambda h: (_rank(first_token[h]), h))[:DEFAULT_HEADS]


def top_heads(scores: dict[Head, float]) -> list[Head]:
    """The DEFAULT_HEADS (layer, head) pairs with the largest first-token score, largest
    first, ties by (layer, head): the heads that sink most in the text, in any layer (at the
    first massive layer a model's heads may attend evenly; its sinks come later)."""
    return sorted(scores, key=lambda pair: (_rank(scores[pair]), pair))[:DEFAULT_HEADS]


def _by_layer(panels: list[Head], scores: dict[Head, float]) -> tuple[dict[int, list[int]], dict[int, dict]]:
    """Panels as results.json holds them, layers in the order they first come: layer -> heads,
    layer -> head -> first-token score."""
    heads = {layer: [h for la, h in panels if la == layer] for layer in dict.fromkeys(la for la, _ in panels)}
    return heads, {layer: {h: scores[layer, h] for h in hs} for layer, hs in heads.items()}


@torch.no_grad()  # not inference_mode: sharded layers reuse gather buffers in later passes
def measure_feature_view(
    layout: DecoderLayout,
    tokenizer,
    view: FeatureView,
    layers: list[int],
    criterion: tuple[float, float],
    forward_context: AbstractContextManager,
    device: torch.device,
    bos_token_id: int | None = None,
) -> FeatureViewResult:
    """Block outputs of the unpruned model for `view.text` (tokenised without special
    tokens, after `bos_token_id` when the windows have one, so the text is seen as the
    windows are), as float32 |values| at `layers`, and the massive dims detected in each by
    `criterion` (threshold, ratio). From the same pass, inside each block's attention
    function, the logits and probabilities of the attention view's heads over the text, with
    their first-token scores there: with neither `view.layers` nor `view.heads` set, the
    DEFAULT_HEADS of all layers with the largest score (`top_heads`), in one view; else per
    shown layer, its `view.heads` or its top heads (`choose_heads`), one view each."""
    ids = tokenizer(view.text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    if bos_token_id is not None:
        ids = torch.cat([ids.new_tensor([bos_token_id]), ids])
    anywhere = view.layers is None and view.heads is None
    watched = set(range(layout.n_layer)) if anywhere else set(layers)
    seen: set[int] = set()
    scores: dict[Head, float] = {}
    maps: dict[Head, tuple[Tensor, Tensor]] = {}  # (logits, probs) of the heads kept so far

    def keep(i: int, call: AttentionCall) -> None:
        if i not in watched:
            return
        seen.add(i)
        logits = call.logits()  # (1, H, T, T) float32, before the mask
        probs, _ = masked_softmax_(logits.clone(), call)
        first = received_attention(probs)[0, :, 0].tolist()  # (H,): mean over the text's queries of p_i0
        heads = choose_heads(first, view.heads)
        # a masked (future) key's logit is never used: blank (NaN), not a number to read
        blank = logits.masked_fill_(~call.allowed(), float("nan"))[0]
        for h in heads:
            scores[i, h] = first[h]
            maps[i, h] = blank[h].cpu(), probs[0, h].cpu()
        if anywhere:  # only the best so far keep their (T, T) maps: memory stays flat in depth
            best = set(top_heads(scores))
            for pair in [pair for pair in maps if pair not in best]:
                del maps[pair], scores[pair]

    with forward_context, probes(layout, Needs(block_out=True)) as probed, attention_probe(layout, keep):
        layout.backbone(input_ids=ids[None].to(device), use_cache=False)
    missing = sorted(watched - seen)
    if missing:  # like `probes`: say so rather than show nothing for them
        raise RuntimeError(f"layers {missing}: attention did not go through the attention-function registry")
    views = (
        {ANYWHERE: top_heads(scores)}
        if anywhere
        else {f"layer{la}_attention": [p for p in scores if p[0] == la] for la in layers}
    )
    attention_heads, first_token_scores = _by_layer([p for panels in views.values() for p in panels], scores)
    values = {layer: probed.block_out[layer][0].float().cpu().abs() for layer in layers}  # (T, D) each
    return FeatureViewResult(
        text=view.text,
        tokens=[tokenizer.decode([int(i)]) for i in ids],
        massive_dims={layer: massive_dims(x, *criterion) for layer, x in values.items()},
        values={layer: x.tolist() for layer, x in values.items()},
        attention_heads=attention_heads,
        first_token_scores=first_token_scores,
        logits={la: {h: maps[la, h][0] for h in hs} for la, hs in attention_heads.items()},
        probs={la: {h: maps[la, h][1] for h in hs} for la, hs in attention_heads.items()},
        attention_views=views,
    )


@register_analysis
class FeatureViewAnalysis(Analysis):
    """One text through the unpruned model after the pass; a top-level section of results.json."""

    name = "feature_view"
    Options = FeatureView
    optional = True
    moved = {"feature_view": ""}

    def __init__(self, setup: Setup) -> None:
        super().__init__(setup)
        self.view = setup.of("feature_view")
        n_layer = setup.layout.n_layer
        if self.view.layers is not None:
            wrong = [layer for layer in self.view.layers if not 0 <= layer < n_layer]
            if wrong or not self.view.layers:
                raise InputError(
                    f"feature_view.layers={self.view.layers}: {'layers ' + str(wrong) if wrong else 'empty'}"
                    f" out of range; valid layers are 0..{n_layer - 1}, or null for the first layer with a "
                    f"massive activation"
                )
        n_head = setup.layout.n_head
        if self.view.heads is not None:
            wrong = [head for head in self.view.heads if not 0 <= head < n_head]
            if wrong or not self.view.heads:
                problem = f"heads {wrong} out of range" if wrong else "empty"
                raise InputError(
                    f"feature_view.heads={self.view.heads}: {problem}; valid heads are 0..{n_head - 1}, or null for "
                    f"the {DEFAULT_HEADS} with the largest first-token score in the text"
                )

    def finish(self, module: Any, variants: dict[str, dict]) -> FeatureViewResult | None:
        datamodule = module.trainer.datamodule
        tokenizer = getattr(datamodule, "tokenizer", None)
        if tokenizer is None:
            return None
        o = module.hparams
        return measure_feature_view(
            module.layout,
            tokenizer,
            self.view,
            shown_layers(self.view, variants[BASELINE]),
            (o.massive_threshold, o.massive_ratio),
            module.trainer.precision_plugin.forward_context(),
            module.device,
            getattr(datamodule, "bos_token_id", None),
        )

    @classmethod
    def publish_run(cls, out, model: str, results) -> None:
        view: FeatureViewResult | None = results.sections.get(cls.name)
        if view is None:
            return
        threshold, ratio = results.model["massive_threshold"], results.model["massive_ratio"]
        for layer, dims in view.massive_dims.items():
            title = f"{model}: layer {layer}, {view.text!r}"
            note = None
            if dims:
                title += f", massive dims {dims}"
            else:  # the layer may be the windows' first massive one while this short text stays below
                values = torch.tensor(view.values[layer])
                peak, median = float(values.max()), float(values.flatten().median())
                times = f"{peak / median:.0f}x" if median > 0 else "inf x"
                note = (
                    f"nothing massive in this text: its largest |value| is {peak:.4g} = {times} the median, "
                    f"the criterion is > {threshold:g} and > {ratio:g}x; the 3 largest dims are labelled"
                )
            fig, _ = figures.feature_view_figure(view.values[layer], view.tokens, dims, title, note)
            out.figure(f"feature_view/figures/layer{layer}", fig)
        for name, panels in view.attention_views.items():
            one_layer = name != ANYWHERE  # its panels name only their heads, its title the layer
            fig, _ = figures.attention_view_figure(
                [view.logits[layer][h] for layer, h in panels],
                [view.probs[layer][h] for layer, h in panels],
                [h for _, h in panels] if one_layer else panels,
                [view.first_token_scores[layer][h] for layer, h in panels],
                view.tokens,
                _attention_title(model, view.text, panels, one_layer),
            )
            out.figure(f"feature_view/figures/{name}", fig)


def _attention_title(model: str, text: str, panels: list[Head], one_layer: bool) -> str:
    if one_layer:
        return f"{model}: layer {panels[0][0]} attention over {text!r}"
    return f"{model}: attention over {text!r} of the {len(panels)} heads (any layer) with the largest first-token score"
