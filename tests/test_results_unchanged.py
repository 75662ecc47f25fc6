"""Restructuring changes no number: a run with every analysis and every variant form on the
toy model, over two corpora (tests/data/all_features.yaml), gives the results recorded
before the house's second step (tests/data/all_features_record.json).

The record keeps, per variant entry and key, the non-numbers exactly (as a digest) and the
numbers as order-sensitive sums (count, sum, sum of squares, position-weighted sum, min,
max): a changed, moved or dropped number changes one of them, and the file stays small
(the full results.json is 4 MB). Rewrite the record only for a change meant to alter the
numbers: ``python tests/test_results_unchanged.py``.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import lit_massive

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "data" / "all_features.yaml"
RECORD = HERE / "data" / "all_features_record.json"
COMPARED = ("model", "corpus", "precision", "world_size", "sweep", "feature_view")  # besides the variants


def leaves(value: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every leaf of a JSON value with its path."""
    if isinstance(value, dict):
        return [leaf for key in sorted(value) for leaf in leaves(value[key], f"{path}/{key}")]
    if isinstance(value, list):
        return [leaf for i, item in enumerate(value) for leaf in leaves(item, f"{path}/{i}")]
    return [(path, value)]


def summary(value: Any) -> dict[str, Any]:
    """One key's value as the record keeps it."""
    numbers, others = [], []
    for path, leaf in leaves(value):
        is_number = isinstance(leaf, int | float) and not isinstance(leaf, bool) and math.isfinite(leaf)
        (numbers if is_number else others).append((path, leaf))
    digest = hashlib.sha256(json.dumps([(p, repr(v)) for p, v in others]).encode()).hexdigest()[:16]
    digest_paths = hashlib.sha256(json.dumps([p for p, _ in numbers]).encode()).hexdigest()[:16]
    xs = [float(v) for _, v in numbers]
    return {
        "others": digest,
        "number_paths": digest_paths,
        "n": len(xs),
        "sum": math.fsum(xs),
        "sq": math.fsum(x * x for x in xs),
        "weighted": math.fsum((i + 1) * x for i, x in enumerate(xs)),
        "min": min(xs, default=None),
        "max": max(xs, default=None),
    }


def record_of(results: dict[str, Any]) -> dict[str, Any]:
    """The record of a run: every key of every variant entry of every corpus, and `COMPARED`."""
    corpora = {"": results["variants"], **{c: v["variants"] for c, v in (results.get("corpora") or {}).items()}}
    record = {key: summary(results.get(key)) for key in COMPARED}
    for corpus, variants in corpora.items():
        for name, entry in variants.items():
            for key, value in entry.items():
                record[f"{corpus}/{name}/{key}"] = summary(value)
    return record


def run_all_features() -> dict[str, Any]:
    """tests/data/all_features.yaml through the Python API (no figures: the pass alone)."""
    config = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    model = dict(config["model"])
    results = lit_massive.measure(model.pop("model_name_or_path"), config["data"], **model)
    return json.loads(json.dumps(results.to_json(), default=str))


def close(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def test_every_number_of_a_run_with_every_feature_on_is_unchanged():
    recorded = json.loads(RECORD.read_text(encoding="utf-8"))
    now = record_of(run_all_features())
    assert sorted(now) == sorted(recorded), "keys added or gone: " + ", ".join(sorted(set(now) ^ set(recorded)))
    changed = [
        f"{key}: {field} {recorded[key][field]!r} -> {now[key][field]!r}"
        for key in recorded
        for field in recorded[key]
        if not close(recorded[key][field], now[key][field])
    ]
    assert not changed, "\n".join(changed[:40])


if __name__ == "__main__":
    RECORD.write_text(json.dumps(record_of(run_all_features()), indent=0, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {RECORD}", file=sys.stderr)
    pytest.main([__file__, "-q"])
