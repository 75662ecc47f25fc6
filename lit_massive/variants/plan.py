"""The variant plan: every variant of a run, baseline first, the heads each prunes and the
block edit it applies, resolved once what they depend on is known."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import Any

import torch
from torch import Tensor

from lit_massive.probes.hooks import BlockEdit
from lit_massive.report.schema import load_massive, load_scores, scores_tensor
from lit_massive.variants.checks import parse_variants
from lit_massive.variants.specs import (
    BASELINE,
    SCORES,
    BlockEditSpec,
    Edit,
    Head,
    MeanEntries,
    Select,
    SetMassive,
    Sweep,
    rank_heads,
)


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


class VariantPlan:
    """Every variant of a run, baseline first: the heads each prunes (once its selection is
    resolved) and the block edit it applies (once its `mean` values are located)."""

    def __init__(self, variants: dict[str, Any] | None, sweep: Sweep | None, n_layer: int, n_head: int) -> None:
        self.n_layer, self.n_head = n_layer, n_head
        self.specs, self.edits = parse_variants(variants, sweep, n_layer, n_head)
        self.names = [BASELINE, *self.specs]
        self.pruned_heads: dict[str, list[Head] | None] = {BASELINE: [], **resolve(self.specs, run_scores=None)}
        self.means: dict[str, MeanEntries] = {}

    def baseline_keys(self) -> set[str]:
        """The results.json keys of this run's own baseline that some variant is defined by:
        head scores for a selection without ``scores``, the locator's ``massive`` entries for
        a ``mean`` edit without ``from``. Empty: no first pass is needed."""
        keys = set()
        if any(isinstance(s, Select) and s.scores is None for s in self.specs.values()):
            keys |= set(SCORES.values())
        if any(isinstance(e, SetMassive) and e.to == "mean" and e.source is None for e in self.edits.values()):
            keys.add("massive")
        return keys

    def prepare(self, baseline: dict[str, Any] | None, device: torch.device) -> None:
        """Resolve what waited for this run's `baseline` entry (from a first pass, holding
        `baseline_keys`), and give every `mean` edit its entries on `device`."""
        if baseline is not None and baseline.get(SCORES["first_token"]) is not None:
            run_scores = {by: scores_tensor(baseline[key]) for by, key in SCORES.items()}
            self.pruned_heads.update(resolve(self.specs, run_scores))
        for name, edit in self.edits.items():
            if isinstance(edit, SetMassive) and edit.to == "mean":
                entries = load_massive(edit.source) if edit.source is not None else baseline["massive"]
                at = [e for e in entries if e["layer"] == edit.layer]
                if not at:
                    warnings.warn(f"variant {name!r}: {self._nothing_located(edit)}", stacklevel=2)
                self.means[name] = MeanEntries(
                    torch.tensor([e["position"] for e in at], dtype=torch.long, device=device),
                    torch.tensor([e["dim"] for e in at], dtype=torch.long, device=device),
                    torch.tensor([e["value"] for e in at], dtype=torch.float32, device=device),
                )

    @staticmethod
    def _nothing_located(edit: SetMassive) -> str:
        where = edit.source or "this run's baseline"
        return (
            f"nothing massive is located at layer {edit.layer} in {where}, so its mean edit sets "
            f"nothing and changes nothing (lower model.massive_threshold / massive_ratio to edit smaller values)"
        )

    def _record(self, name: str, edit: BlockEditSpec) -> Edit:
        """What results.json says the edit did."""
        record = edit.record()
        if name not in self.means:
            return record
        n = len(self.means[name].positions)
        return replace(record, entries=n, note=None if n else self._nothing_located(edit))

    def head_masks(self) -> Tensor:
        """(V, L, H): zeros at each variant's pruned heads; ones while its heads are unknown."""
        masks = torch.ones(len(self.names), self.n_layer, self.n_head)
        for v, name in enumerate(self.names):
            if self.pruned_heads[name] is not None:
                masks[v] = head_mask(self.pruned_heads[name], self.n_layer, self.n_head)
        return masks

    def describe(self, name: str) -> dict[str, Any]:
        """What variant `name` is, the first keys of its results.json entry."""
        edit = self.edits.get(name)
        return {
            "pruned_heads": [list(h) for h in self.pruned_heads[name]],
            "edit": None if edit is None else asdict(self._record(name, edit)),
        }

    def block_edit(self, name: str, windows: Sequence[int], threshold: float, ratio: float) -> BlockEdit | None:
        """Variant `name`'s edit for a batch of windows (their dataset indices), or None."""
        edit = self.edits.get(name)
        if edit is None:
            return None
        return edit.block_edit(threshold, ratio, windows, self.means.get(name))
