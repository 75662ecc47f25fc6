"""Experiment 1, measured: |block output| of one text over tokens x feature dims."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from lit_massive.adapter import DecoderLayout
from lit_massive.functional import massive_dims
from lit_massive.hooks import probes
from lit_massive.results import FeatureViewResult


@dataclass
class FeatureView:
    """Experiment 1: |block output| of one text over tokens x feature dims, as a 3D plot."""

    text: str = "Summer is warm. Winter is cold."
    layers: list[int] | None = None  # null: the first block with a massive activation


def shown_layers(view: FeatureView, baseline: dict) -> list[int]:
    """The configured blocks, else the first block with a massive activation in the baseline
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
    values = {layer: probed.block_outputs[layer][0].float().cpu().abs() for layer in layers}  # (T, D) each
    return FeatureViewResult(
        text=view.text,
        tokens=[tokenizer.decode([int(i)]) for i in ids],
        massive_dims={layer: massive_dims(x, *criterion) for layer, x in values.items()},
        values={layer: x.tolist() for layer, x in values.items()},
    )
