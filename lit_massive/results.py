"""What a run measured: `RunResults`, and the conversion of computed metric states into the
plain numbers of results.json (DESIGN section 3). Writers read only `RunResults`."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from torch import Tensor


def _finite(value: float) -> float | None:
    """JSON has no NaN: a statistic that could not be measured is null."""
    return value if math.isfinite(value) else None


def _matrix(values: Tensor) -> list[list[float | None]]:
    return [[_finite(v) for v in row] for row in values.tolist()]


def _most_frequent(counts: Tensor, total: int) -> tuple[int, float]:
    """Index with the highest count and its share of `total`; on a tie the lowest index
    (`argmax` returns the first maximum), whatever the number of processes."""
    index = int(counts.argmax())
    return index, float(counts[index]) / max(total, 1)


def profile_layers(profile: dict[str, Tensor], decode: Callable[[int], str]) -> list[dict]:
    """One row per block: mean top-k and median, and where the per-sequence top-1 sits."""
    rows = []
    for i, (top, median) in enumerate(zip(profile["top"].tolist(), profile["median"].tolist(), strict=True)):
        count = int(profile["finite_count"][i])  # sequences whose block output was finite
        dim, dim_frac = _most_frequent(profile["top1_dim_count"][i], count)
        pos, pos_frac = _most_frequent(profile["top1_position_count"][i], count)
        token, token_frac = _most_frequent(profile["top1_token_count"][i], count)
        top, median = [_finite(t) for t in top], _finite(median)
        rows.append(
            {
                "layer": i,
                "top": top,
                "median": median,
                "top1_over_median": top[0] / median if top[0] is not None and median else None,
                "massive_fraction": _finite(float(profile["massive_fraction"][i])),
                "finite_sequences": count,
                # sequences with more massive entries than model.massive_candidates: the locator
                # kept the largest ones only
                "locator_overflow": int(profile["locator_overflow"][i]),
                "nonfinite_values": int(profile["nonfinite_values"][i]),
                "top1_dim": dim,
                "top1_dim_fraction": dim_frac,
                "top1_position": pos,
                "top1_position_fraction": pos_frac,
                "top1_token_id": token,
                "top1_token": decode(token),
                "top1_token_fraction": token_frac,
            }
        )
    return rows


def locate_massive(rows: Tensor, count: int, decode: Callable[[int], str]) -> list[dict]:
    """Every (layer, dim, position) that is massive in at least one sequence: the token most
    often there (on a tie the lowest token id), the mean signed value where massive, and the
    share of sequences. Neither depends on the order of `rows`, which differs with the
    number of processes (rows are gathered rank by rank)."""
    groups: dict[tuple[int, int, int], list[tuple[int, float]]] = defaultdict(list)
    for layer, dim, position, token, value in rows.tolist():
        groups[(int(layer), int(dim), int(position))].append((int(token), value))
    out = []
    for (layer, dim, position), hits in sorted(groups.items()):
        counts = Counter(t for t, _ in hits)
        token = min(counts, key=lambda t: (-counts[t], t))
        out.append(
            {
                "layer": layer,
                "dim": dim,
                "position": position,
                "token_id": token,
                "token": decode(token),
                "value": math.fsum(v for _, v in hits) / len(hits),  # exactly rounded: any order
                "fraction": len(hits) / max(count, 1),
            }
        )
    return out


def component_entries(rows: Tensor) -> list[dict]:
    """Per massive (dim, position) and block: mean input, attention and MLP contributions,
    over the sequences where that (dim, position) is massive in some block output."""
    sums: dict[tuple[int, int, int], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0])
    for dim, position, layer, resid_in, attn, mlp in rows.tolist():
        acc = sums[(int(dim), int(position), int(layer))]
        acc[0] += resid_in
        acc[1] += attn
        acc[2] += mlp
        acc[3] += 1
    return [
        {
            "layer": layer,
            "dim": dim,
            "position": position,
            "resid_in": r / n,
            "attn": a / n,
            "mlp": m / n,
            "sequences": n,
        }
        for (dim, position, layer), (r, a, m, n) in sorted(sums.items())
    ]


def first_massive_layer(layers: list[dict]) -> int | None:
    """First block where most sequences have a massive top-1 (the paper's criterion)."""
    return next((row["layer"] for row in layers if (row["massive_fraction"] or 0.0) >= 0.5), None)


def _pct(new: float | None, old: float | None) -> float | None:
    return 100.0 * (new - old) / old if new is not None and old else None


def change_vs_baseline(layers: list[dict], baseline: list[dict]) -> dict:
    """Per block, 100 x (variant - baseline) / baseline for each top-k and the median, and
    each of those averaged over blocks."""
    change: dict = {}
    for j in range(len(baseline[0]["top"])):
        change[f"top{j + 1}_pct"] = [_pct(v["top"][j], b["top"][j]) for v, b in zip(layers, baseline, strict=True)]
    change["median_pct"] = [_pct(v["median"], b["median"]) for v, b in zip(layers, baseline, strict=True)]
    change["mean_over_layers"] = {
        key: sum(values) / len(values) if None not in values else None for key, values in change.items()
    }
    return change


def variant_results(computed: dict, decode: Callable[[int], str], baseline: dict | None = None) -> dict:
    """One variant's entry of results.json; the `baseline` entry adds `change_vs_baseline`."""
    profile = computed["profile"]
    layers = profile_layers(profile, decode)
    scores, ppl = computed["head_scores"], computed["perplexity"]
    overflow = [row["layer"] for row in layers if row["nonfinite_values"]]
    edit, components = computed.get("edit"), computed.get("components")
    out = {
        "pruned_heads": [list(h) for h in computed["pruned_heads"]],
        "edit": None if edit is None else asdict(edit),  # an `Edit` record
        "num_sequences": int(profile["count"]),
        "first_massive_layer": first_massive_layer(layers),
        "first_nonfinite_layer": overflow[0] if overflow else None,
        "layers": layers,
        "head_scores": None if scores is None else _matrix(scores["first_token"]),
        "massive_token_scores": None if scores is None else _matrix(scores["massive_tokens"]),
        # per block: the share of all attention mass on the window's massive tokens (mean over heads)
        "attention_to_massive": None
        if scores is None
        else [_finite(v) for v in scores["attention_to_massive"].tolist()],
        # per block: the attention each leading key position receives (mean over heads and queries)
        "received": None if scores is None else _matrix(scores["received"]),
        "perplexity": None if ppl is None else _finite(float(ppl["perplexity"])),
        "nll_sum": None if ppl is None else _finite(float(ppl["nll_sum"])),
        "scored_tokens": None if ppl is None else int(ppl["tokens"]),
        "nonfinite_tokens": None if ppl is None else int(ppl["nonfinite_tokens"]),
        "massive": locate_massive(profile["massive_rows"], int(profile["count"]), decode),
        "components": None if components is None else component_entries(components["rows"]),
        # sequences with more massive entries than model.massive_candidates: some were not followed
        "components_overflow": None if components is None else int(components["overflow"]),
    }
    if baseline is not None:
        out["change_vs_baseline"] = change_vs_baseline(layers, baseline["layers"])
        out["change_vs_baseline"]["perplexity_pct"] = _pct(out["perplexity"], baseline["perplexity"])
    return out


@dataclass
class FeatureViewResult:
    """Experiment 1: |block output| of one text, per shown block (T, D), with the massive
    dims detected in it."""

    text: str
    tokens: list[str]
    massive_dims: dict[int, list[int]]
    values: dict[int, list[list[float]]]  # for the figure only; not in results.json

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "tokens": self.tokens, "massive_dims": self.massive_dims}


@dataclass
class RunResults:
    """Everything one validation pass measured, computed by the LightningModule on every
    rank; the writers (results.json, TensorBoard, figures, tables) read only this."""

    model: dict[str, Any]  # what was measured: model shape, thresholds, which measurements ran
    data: dict[str, Any] | None  # the windows (None without a data module)
    precision: str
    world_size: int
    # strategy, whether the layers are sharded, parameter and peak memory per rank (`parallel_record`)
    parallel: dict[str, Any]
    timing: dict[str, float]  # wall_s, tokens, tokens_per_s, forward_passes_per_window
    sweep: dict[str, Any] | None  # order, seed, k values and variant names of a sweep
    # name -> that variant's results.json entry (`variant_results`): pruned heads, edit, layer
    # profile, head scores, perplexity, locator (`massive`), components; baseline first
    variants: dict[str, dict[str, Any]]
    feature_view: FeatureViewResult | None = None
    # versions, model revision, data fingerprint, git commit, date, hardware (`run_provenance`)
    provenance: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The content of results.json."""
        out = {
            "model": self.model,
            "data": self.data,
            "precision": self.precision,
            "world_size": self.world_size,
            "parallel": self.parallel,
            "timing": self.timing,
            "sweep": self.sweep,
            "variants": self.variants,
        }
        if self.provenance is not None:
            out["provenance"] = self.provenance
        if self.feature_view is not None:
            out["feature_view"] = self.feature_view.to_json()
        return out
