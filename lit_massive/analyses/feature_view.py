"""Experiment 1: |block output| of one text over tokens x feature dims, as a 3D plot, with
the massive dims it detects labelled (never hard-coded)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from lit_massive.analyses.base import Analysis, Setup
from lit_massive.analyses.block_stats import massive_dims
from lit_massive.analyses.registry import register_analysis
from lit_massive.errors import InputError
from lit_massive.models.families import DecoderLayout
from lit_massive.probes import probes
from lit_massive.report import figures
from lit_massive.variants.specs import BASELINE


@dataclass
class FeatureView:
    """Experiment 1: |block output| of one text over tokens x feature dims, as a 3D plot."""

    text: str = "Summer is warm. Winter is cold."
    layers: list[int] | None = None  # null: the first layer with a massive activation


@dataclass
class FeatureViewResult:
    """|block output| of one text, per shown layer (T, D), with the massive dims detected in it."""

    text: str
    tokens: list[str]
    massive_dims: dict[int, list[int]]
    values: dict[int, list[list[float]]]  # for the figure only; not in results.json

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "tokens": self.tokens, "massive_dims": self.massive_dims}


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
    `criterion` (threshold, ratio)."""
    ids = tokenizer(view.text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    if bos_token_id is not None:
        ids = torch.cat([ids.new_tensor([bos_token_id]), ids])
    with forward_context, probes(layout) as probed:
        layout.backbone(input_ids=ids[None].to(device), use_cache=False)
    values = {layer: probed.block_out[layer][0].float().cpu().abs() for layer in layers}  # (T, D) each
    return FeatureViewResult(
        text=view.text,
        tokens=[tokenizer.decode([int(i)]) for i in ids],
        massive_dims={layer: massive_dims(x, *criterion) for layer, x in values.items()},
        values={layer: x.tolist() for layer, x in values.items()},
    )


@register_analysis
class FeatureViewAnalysis(Analysis):
    """One text through the unpruned model after the pass; a top-level section of results.json."""

    name = "feature_view"
    option = "feature_view"

    def __init__(self, setup: Setup) -> None:
        super().__init__(setup)
        view = setup.options["feature_view"]
        self.view = view if isinstance(view, FeatureView) else FeatureView(**view)  # hparams may hold a dict
        n_layer = setup.layout.n_layer
        if self.view.layers is not None:
            wrong = [layer for layer in self.view.layers if not 0 <= layer < n_layer]
            if wrong or not self.view.layers:
                raise InputError(
                    f"feature_view.layers={self.view.layers}: {'layers ' + str(wrong) if wrong else 'empty'}"
                    f" out of range; valid layers are 0..{n_layer - 1}, or null for the first layer with a "
                    f"massive activation"
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
