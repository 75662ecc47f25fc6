"""Turn computed metric states into the plain numbers of results.json (DESIGN section 3)."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor


def _most_frequent(counts: Tensor, total: int) -> tuple[int, float]:
    """Index with the highest count and its share of `total`."""
    index = int(counts.argmax())
    return index, float(counts[index]) / max(total, 1)


def profile_layers(profile: dict[str, Tensor], decode: Callable[[int], str]) -> list[dict]:
    """One row per block: mean top-k and median, and where the per-sequence top-1 sits."""
    count = int(profile["count"])
    rows = []
    for i, (top, median) in enumerate(zip(profile["top"].tolist(), profile["median"].tolist(), strict=True)):
        dim, dim_frac = _most_frequent(profile["top1_dim_count"][i], count)
        pos, pos_frac = _most_frequent(profile["top1_position_count"][i], count)
        token, token_frac = _most_frequent(profile["top1_token_count"][i], count)
        rows.append(
            {
                "layer": i,
                "top": top,
                "median": median,
                "top1_over_median": top[0] / median if median > 0 else None,
                "massive_fraction": float(profile["massive_fraction"][i]),
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


def first_massive_layer(layers: list[dict]) -> int | None:
    """First block where most sequences have a massive top-1 (the paper's criterion)."""
    return next((row["layer"] for row in layers if row["massive_fraction"] >= 0.5), None)


def variant_results(profile: dict[str, Tensor], decode: Callable[[int], str], pruned_heads=()) -> dict:
    layers = profile_layers(profile, decode)
    return {
        "pruned_heads": [list(h) for h in pruned_heads],
        "num_sequences": int(profile["count"]),
        "first_massive_layer": first_massive_layer(layers),
        "layers": layers,
        "head_scores": None,
        "perplexity": None,
    }
