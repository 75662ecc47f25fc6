"""The variant plan: every variant of a run, baseline first, the heads each prunes and the
block edit it applies, resolved once what they depend on is known."""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from lit_massive.errors import RunWarning
from lit_massive.probes.hooks import BlockEdit
from lit_massive.probes.quantize import FakeQuant
from lit_massive.probes.weights import ZeroedWeights
from lit_massive.results.schema import LocatedEntry, load_massive, load_scores, scores_tensor
from lit_massive.variants.checks import parse_variants
from lit_massive.variants.edits import GROUPS, GroupMeans
from lit_massive.variants.qk_dims import (
    NOTHING_MASSIVE,
    AttentionShape,
    Keep,
    QKEdit,
    chosen_dims,
    keep_masks,
    needs_baseline,
    qk_record,
)
from lit_massive.variants.quantize import QuantizeRecord, fake_quant, needs_super_weights, quantize_record
from lit_massive.variants.specs import (
    BASELINE,
    SCORES,
    SUPER,
    BlockEditSpec,
    Edit,
    Head,
    QKEditSpec,
    Quantize,
    Select,
    SetMassive,
    Shape,
    Sweep,
    WeightEditSpec,
    ZeroQKDims,
    ZeroRandomQKDims,
    ZeroRandomWeights,
    ZeroWeights,
    edited_layers,
    rank_heads,
)
from lit_massive.variants.weights import NOTHING_ZEROED, WeightEdit, chosen_weights, weight_record, zeroed_on


def resolve(
    specs: dict[str, list[Head] | Select], run_scores: dict[str, Tensor] | None
) -> dict[str, list[Head] | None]:
    """Heads per variant; None where the selection waits for this run's scores (`by` ->
    (L, H))."""
    out: dict[str, list[Head] | None] = {}
    for name, spec in specs.items():
        if not isinstance(spec, Select):
            out[name] = spec
        elif spec.scores is not None:
            out[name] = rank_heads(load_scores(spec.scores, by=spec.by), spec.select)[: spec.k]
        else:
            out[name] = None if run_scores is None else rank_heads(run_scores[spec.by], spec.select)[: spec.k]
    return out


def head_mask(heads: list[Head], n_layer: int, n_head: int) -> Tensor:
    """(L, H) ones with zeros at the pruned heads."""
    mask = torch.ones(n_layer, n_head)
    for layer, head in heads:
        mask[layer, head] = 0.0
    return mask


def group_means(
    entries: list[LocatedEntry], layers: list[int], positions: str, device: torch.device
) -> dict[int, GroupMeans]:
    """Per block of `layers`, the mean massive value of each (first|rest, dim): the located
    (dim, position) means of the block weighted by how many windows each is massive in (its
    `fraction`), so each is the mean over every massive entry of that dim and group. Only the
    groups `positions` edits."""
    wanted = range(len(GROUPS)) if positions == "all" else [GROUPS.index(positions)]
    hits: dict[tuple[int, int, int], list[tuple[float, float]]] = defaultdict(list)
    for e in entries:
        group = int(e["position"] > 0)
        if e["layer"] in layers and group in wanted:
            hits[(e["layer"], group, e["dim"])].append((e["value"], e["fraction"]))
    out = {}
    for layer in layers:
        keys = sorted(k for k in hits if k[0] == layer)
        values = [math.fsum(v * w for v, w in hits[k]) / math.fsum(w for _, w in hits[k]) for k in keys]
        out[layer] = GroupMeans(
            torch.tensor([k[1] for k in keys], dtype=torch.long, device=device),
            torch.tensor([k[2] for k in keys], dtype=torch.long, device=device),
            torch.tensor(values, dtype=torch.float32, device=device),
            max((k[2] + 1 for k in keys), default=0),
        )
    return out


class VariantPlan:
    """Every variant of a run, baseline first: the heads each prunes (once its selection is
    resolved), the block edit it applies (once its `mean` values are located) or the weights
    it zeroes (once this run's super-weight candidates are known)."""

    def __init__(
        self,
        variants: dict[str, Any] | None,
        sweep: Sweep | None,
        n_layer: int,
        n_head: int,
        shapes: list[Shape] | None = None,
        attention: AttentionShape | None = None,
    ) -> None:
        self.n_layer, self.n_head, self.shapes, self.attention = n_layer, n_head, shapes, attention
        self.specs, edits = parse_variants(variants, sweep, n_layer, n_head, shapes, attention)
        self.edits, self.weight_edits, self.qk_edits, self.quantized = split_edits(edits)
        self.fake_quants: dict[str, FakeQuant] = {}  # quantize variants: their rounding, once prepared
        self._quant_stats: dict[str, list[list[float]]] | None = None
        self.qk_dims: dict[str, tuple[list, list]] = {}  # q/k edits: the (layer, head, dim) zeroed in q and in k
        self.qk_keep: dict[str, Keep] = {}  # q/k edits: per layer, the keep masks on the device
        self.zeroed: dict[str, list[ZeroedWeights]] = {}  # weight edits: per block, on the device
        self.names = [BASELINE, *self.specs]
        self.pruned_heads: dict[str, list[Head] | None] = {BASELINE: [], **resolve(self.specs, run_scores=None)}
        self.means: dict[str, dict[int, GroupMeans]] = {}  # `mean` edits: per edited block
        self.counts: dict[str, Tensor] = {}  # edits: (2, L) on the device, what each block's edit changed
        self._counted: dict[str, list[list[int]]] | None = None  # the counts over all processes, read once

    def baseline_keys(self) -> set[str]:
        """The results.json keys of this run's own baseline that some variant is defined by:
        the per-head figure a selection without ``scores`` ranks by (``by``), the locator's ``massive`` entries for
        a ``mean`` edit without ``from``, the ``super_weights`` candidates for ``zero_weights: super``. Empty: no
        first pass is needed."""
        keys = set()
        keys |= {SCORES[s.by] for s in self.specs.values() if isinstance(s, Select) and s.scores is None}
        if any(isinstance(e, SetMassive) and e.to == "mean" and e.source is None for e in self.edits.values()):
            keys.add("massive")
        if any(isinstance(e, ZeroWeights) and e.zero_weights == SUPER for e in self.weight_edits.values()):
            keys.add("super_weights")
        if any(needs_baseline(e) for e in self.qk_edits.values()):
            keys.add("qkv_massive_dims")
        if any(needs_super_weights(e) for e in self.quantized.values()):
            keys.add("super_weights")
        return keys

    def prepare(
        self, baseline: dict[str, Any] | None, device: torch.device, threshold: float = 100.0, ratio: float = 1000.0
    ) -> None:
        """Resolve what waited for this run's `baseline` entry (from a first pass, holding
        `baseline_keys`), give every `mean` edit its means on `device`, every edit zero counts
        and every weight edit its weights on `device`."""
        run_scores = {by: scores_tensor(baseline[key]) for by, key in SCORES.items() if (baseline or {}).get(key)}
        if run_scores:
            self.pruned_heads.update(resolve(self.specs, run_scores))
        self.counts = {name: torch.zeros(2, self.n_layer, dtype=torch.int64, device=device) for name in self.edits}
        self._counted = None
        self.zeroed = weights_on(self.weight_edits, self.shapes, baseline, device)
        self._quant_stats = None
        for name, spec in self.quantized.items():
            self.fake_quants[name] = fake_quant(spec, self.n_layer, threshold, ratio, baseline, device)
        for name, spec in self.qk_edits.items():
            self.qk_dims[name], self.qk_keep[name] = qk_dims_on(name, spec, self.attention, baseline, device)
        for name, edit in self.edits.items():
            if isinstance(edit, SetMassive) and edit.to == "mean":
                self.means[name] = mean_values(name, edit, self.n_layer, baseline, device)

    def new_counts(self) -> dict[str, Tensor]:
        """Zero (2, L) counts for every block edit, on this run's device (another corpus's own)."""
        return {name: torch.zeros_like(c) for name, c in self.counts.items()}

    def count_into(self, counts: dict[str, Tensor]) -> None:
        """From now on, the block edits count what they change into `counts` (from `prepare`
        or `new_counts`) and `describe` reports those: one set of counts per corpus."""
        self.counts, self._counted = counts, None

    def _edit_counts(self) -> dict[str, list[list[int]]]:
        """Each edit's (2, L) counts summed over all processes, read on the host once. The
        first call is a collective where several processes run: `describe` makes it, and
        every rank describes every variant in the same order."""
        if self._counted is None:
            self._counted = summed_over_processes(self.counts)
        return self._counted

    def head_masks(self) -> Tensor:
        """(V, L, H): zeros at each variant's pruned heads; ones while its heads are unknown."""
        masks = torch.ones(len(self.names), self.n_layer, self.n_head)
        for v, name in enumerate(self.names):
            if self.pruned_heads[name] is not None:
                masks[v] = head_mask(self.pruned_heads[name], self.n_layer, self.n_head)
        return masks

    def describe(self, name: str) -> dict[str, Any]:
        """What variant `name` is, the first keys of its results.json entry."""
        self._edit_counts()  # on every rank, for every name: its first call may be a collective
        self._quantize_stats()
        edit = self.edits.get(name)
        if name in self.weight_edits:
            record: Edit | WeightEdit | QKEdit | QuantizeRecord | None
            record = weight_record(self.weight_edits[name], self.zeroed[name])
        elif name in self.quantized:
            record = quantize_record(self.quantized[name], self.fake_quants.get(name), self._quantize_stats().get(name))
        elif name in self.qk_edits:
            record = qk_record(self.qk_edits[name], *self.qk_dims.get(name, ([], [])), self.n_layer)
        elif edit is not None:
            record = edit_record(edit, self.n_layer, self.means.get(name), self._edit_counts().get(name))
        else:
            record = None
        return {"pruned_heads": [list(h) for h in self.pruned_heads[name]], "edit": record and asdict(record)}

    def block_edits(self, name: str, windows: Sequence[int], threshold: float, ratio: float) -> list[BlockEdit]:
        """Variant `name`'s per-block edits for a batch of windows (their dataset indices);
        none for a variant without an edit."""
        edit = self.edits.get(name)
        if edit is None:
            return []
        return edit.block_edits(self.n_layer, threshold, ratio, windows, self.means.get(name), self.counts.get(name))

    def _quantize_stats(self) -> dict[str, list[list[float]]]:
        """Each quantize variant's statistics and weight errors summed over all processes, read
        on the host once (a collective where several processes run, like `_edit_counts`)."""
        if self._quant_stats is None:
            rows = {name: torch.cat([f.stats, f.weight_error]) for name, f in self.fake_quants.items()}
            self._quant_stats = summed_over_processes(rows)
        return self._quant_stats

    def fake_quant(self, name: str) -> FakeQuant | None:
        """Variant `name`'s fake quantization (None for the others)."""
        return self.fake_quants.get(name)

    def qk_masks(self, name: str) -> Keep:
        """Variant `name`'s keep masks of q and k per layer (none for the others)."""
        return self.qk_keep.get(name, {})

    def zeroed_weights(self, name: str) -> list[ZeroedWeights]:
        """Variant `name`'s weights to zero during its passes (per block); none for the others."""
        return self.zeroed.get(name, [])


def split_edits(
    edits: dict[str, BlockEditSpec | WeightEditSpec | QKEditSpec],
) -> tuple[dict[str, BlockEditSpec], dict[str, WeightEditSpec], dict[str, QKEditSpec], dict[str, Quantize]]:
    """The checked edits of `parse_variants` by kind: block edits, weight edits, q/k edits and
    quantize variants, each in the variants' order."""
    weights, qk = (ZeroWeights, ZeroRandomWeights), (ZeroQKDims, ZeroRandomQKDims)
    quantized = {n: e for n, e in edits.items() if isinstance(e, Quantize)}
    weight_edits = {n: e for n, e in edits.items() if isinstance(e, weights)}
    qk_edits = {n: e for n, e in edits.items() if isinstance(e, qk)}
    others = {**weight_edits, **qk_edits, **quantized}
    return {n: e for n, e in edits.items() if n not in others}, weight_edits, qk_edits, quantized


def weights_on(
    weight_edits: dict[str, WeightEditSpec],
    shapes: list[Shape] | None,
    baseline: dict[str, Any] | None,
    device: torch.device,
) -> dict[str, list[ZeroedWeights]]:
    """Each weight edit's weights to zero, per block on `device` (`super` from the first pass's
    `baseline`); warns (for `VariantPlan.prepare`'s caller) of an edit that zeroes nothing."""
    zeroed = {name: zeroed_on(chosen_weights(spec, shapes, baseline), device) for name, spec in weight_edits.items()}
    for name in weight_edits:
        if not zeroed[name]:  # only `super` can come out empty: the checks refuse an empty list
            warnings.warn(f"variant {name!r}: {NOTHING_ZEROED}", RunWarning, stacklevel=3)
    return zeroed


def qk_dims_on(
    name: str, spec: QKEditSpec, attention: AttentionShape | None, baseline: dict[str, Any] | None, device: torch.device
) -> tuple[tuple[list, list], Keep]:
    """Q/k edit `name`'s (layer, head, dim) zeroed in q and in k, and its keep masks per layer on
    `device`; warns (for `VariantPlan.prepare`'s caller) when it zeroes nothing."""
    dims = chosen_dims(spec, attention, baseline)
    keep = keep_masks(*dims, attention, device)
    if not keep:  # only `massive` and its control can come out empty
        warnings.warn(f"variant {name!r}: {NOTHING_MASSIVE}", RunWarning, stacklevel=3)
    return dims, keep


def mean_values(
    name: str, edit: SetMassive, n_layer: int, baseline: dict[str, Any] | None, device: torch.device
) -> dict[int, GroupMeans]:
    """`mean` edit `name`'s group means per edited block on `device`, from its ``from`` file or
    the first pass's `baseline`; warns (for `VariantPlan.prepare`'s caller) when none is located."""
    entries = load_massive(edit.source) if edit.source is not None else baseline["massive"]
    means = group_means(entries, edited_layers(edit.layer, n_layer), edit.positions, device)
    if not any(m.width for m in means.values()):
        warnings.warn(f"variant {name!r}: {nothing_located(edit)}", RunWarning, stacklevel=3)
    return means


def nothing_located(edit: SetMassive) -> str:
    """Why `mean` edit `edit` sets nothing: no massive value is located where it edits."""
    where = edit.source or "this run's baseline"
    at = f"layer {edit.layer}" if isinstance(edit.layer, int) else f"layers {edit.layer}"
    if edit.positions != "all":
        at += f" (positions: {edit.positions})"
    return (
        f"nothing massive is located at {at} in {where}, so its mean edit sets "
        f"nothing and changes nothing (lower model.massive_threshold / massive_ratio to edit smaller values)"
    )


def summed_over_processes(rows: dict[str, Tensor]) -> dict[str, list]:
    """Each named row (all of one shape) summed over all processes, read on the host. A
    collective where several processes run (unless `rows` is empty): every rank calls it at
    the same point."""
    if not rows:
        return {}
    total = torch.stack(list(rows.values()))
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(total)
    return dict(zip(rows, total.tolist(), strict=True))


def edit_record(
    edit: BlockEditSpec, n_layer: int, means: dict[int, GroupMeans] | None, counted: list[list[int]] | None
) -> Edit:
    """What results.json says block edit `edit` did (`Edit`): per edited block, what it changed
    (`counted`, its (2, L) counts over all processes) and, for a `mean` edit, its `means`."""
    record = edit.record(n_layer)
    if counted is not None:
        blocks = [
            {
                "layer": i,
                "edited": counted[0][i],
                "means": None if means is None else len(means[i].dims),
                "unmatched": None if means is None else counted[1][i],
            }
            for i in record.layers
        ]
        record = replace(record, blocks=blocks)
    if means is None:
        return record
    n = sum(len(m.dims) for m in means.values())
    return replace(record, entries=n, note=None if n else nothing_located(edit))
