"""`compare`'s section for runs of one model with other weights (a GGUF quantization and its
float original, another dtype, a fine-tuned or later checkpoint): each run against the first
one given (the reference), layer by layer and massive entry by massive entry.

Two runs compare entry by entry only where a (layer, dim, position) means the same thing in
both: the same architecture (`model_type`, layers, width), vocabulary size and massive
thresholds (`massive_threshold`, `massive_ratio`), and the same windows (the `data` record:
corpus, split, files, window length, stride, count, BOS). The windows' token ids are not in
results.json, so the tokenizer is taken to be the same where the vocabulary size is: a GGUF
file and a checkpoint of one model name their tokenizers by different paths. A run that fails
a condition is left out with the reason; the others are compared.

Plain Python, no torch: `compare` answers in seconds (tests/test_startup.py).
"""

from __future__ import annotations

from typing import Any

from lit_massive.report.comparison import BASELINE, Run, corpora
from lit_massive.results.markdown import cell, markdown_table

KEY = "against_reference"  # comparison.json's key of this section
# the `data` keys that fix a run's windows: the same in two runs, the same token ids at each position
WINDOW_KEYS = ("dataset", "config_name", "split", "data_files", "seq_len", "stride", "num_windows", "uses_bos")
ENTRY_ROWS = 60  # massive entries listed in comparison.md per pair; all are in comparison.json
PCT_NOTE = "%: 100 x (run - reference) / reference (for a negative massive entry, + means larger in magnitude)"
VALUE_NOTE = (
    "value: an entry's mean over the windows where it is massive (share: of the windows); where the shares "
    "differ, the two means are over different windows"
)


def _pct(new: float | None, old: float | None) -> float | None:
    """100 x (new - old) / old (as a variant's change vs its baseline); null where either is
    unmeasured or old is 0."""
    return 100.0 * (new - old) / old if new is not None and old else None


def _change(old: float | None, new: float | None) -> dict[str, float | None]:
    """A statistic of the reference and the run, their difference and its %."""
    diff = new - old if new is not None and old is not None else None
    return {"reference": old, "other": new, "change": diff, "change_pct": _pct(new, old)}


def _mean(values: list[float | None]) -> float | None:
    """The mean over layers; null where a layer is unmeasured (as `change_vs_baseline`)."""
    return sum(values) / len(values) if values and None not in values else None  # type: ignore[arg-type]


def _architecture(run: Run) -> str:
    model = run.results["model"]
    return f"{model.get('model_type')}, {model.get('n_layer')} layers x {model.get('n_embd')}"


def weights_of(run: Run) -> str:
    """What a run's weights are, for the reader: a GGUF file's type and its tensors' types
    (`GGUF Q8_0: 22 Q8_0, 7 F32 tensors`; norms stay F32), else the parameters' dtype."""
    model = run.results["model"]
    if model.get("gguf_file"):
        types = model.get("gguf_tensor_types") or {}
        listed = ", ".join(f"{n} {t}" for t, n in sorted(types.items(), key=lambda item: (-item[1], item[0])))
        return f"GGUF {model.get('gguf_file_type') or '?'}" + (f": {listed} tensors" if listed else "")
    return str(model.get("parameter_dtype") or model.get("dtype") or "?")


def _windows(data: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if data is None else {key: data.get(key) for key in WINDOW_KEYS}


def _model_mismatch(reference: Run, run: Run) -> str | None:
    """Why `run` is not of the reference's model in the sense above; None where it is."""
    ref, other = reference.results["model"], run.results["model"]
    if _architecture(reference) != _architecture(run):
        return f"architecture differs ({_architecture(run)} vs the reference's {_architecture(reference)})"
    if ref.get("vocab_size") != other.get("vocab_size"):
        return (
            f"vocabulary differs ({other.get('vocab_size')} vs {ref.get('vocab_size')} tokens): "
            "another tokenizer, so other windows"
        )
    for key in ("massive_threshold", "massive_ratio"):
        if ref.get(key) != other.get(key):
            return f"model.{key} differs ({other.get(key)} vs {ref.get(key)}): massive means another thing"
    return None


def _windows_mismatch(ref_data: dict[str, Any] | None, data: dict[str, Any] | None) -> str:
    """The first `data` key whose value differs (or that the windows are not recorded)."""
    if ref_data is None or data is None:
        return "windows not recorded (given as tensors): positions cannot be matched"
    key = next(k for k in WINDOW_KEYS if ref_data.get(k) != data.get(k))
    return f"windows differ ({key} {data.get(key)!r} vs {ref_data.get(key)!r})"


def _layers(ref: list[dict], other: list[dict], entries: list[dict] | None) -> list[dict[str, Any]]:
    """Per layer: top-1 and median of the reference and the run and their change, the
    top-1's dim and position in each, and how many of the layer's massive entries stayed,
    went or came."""
    out = []
    for a, b in zip(ref, other, strict=True):
        row: dict[str, Any] = {"layer": a["layer"]}
        for name, old, new in (("top1", a["top"][0], b["top"][0]), ("median", a.get("median"), b.get("median"))):
            change = _change(old, new)
            row.update({f"{name}_{key}": value for key, value in change.items()})
        for key in ("top1_dim", "top1_position"):
            row[f"{key}_reference"], row[f"{key}_other"] = a.get(key), b.get(key)
        if entries is not None:
            mine = [e for e in entries if e["layer"] == a["layer"]]
            for status in ("kept", "gone", "new"):
                row[f"massive_{status}"] = sum(e["status"] == status for e in mine)
        out.append(row)
    return out


def _entries(ref: list[dict], other: list[dict]) -> list[dict[str, Any]]:
    """Every massive (layer, dim, position) of either run: kept (in both), gone (only in the
    reference) or new (only in the run), with each run's mean value where massive, their
    change, the token there and the share of windows where it is massive."""
    by_ref = {(e["layer"], e["dim"], e["position"]): e for e in ref}
    by_other = {(e["layer"], e["dim"], e["position"]): e for e in other}
    out = []
    for key in sorted(by_ref.keys() | by_other.keys()):
        a, b = by_ref.get(key), by_other.get(key)
        status = "kept" if a and b else "gone" if a else "new"
        value = _change(a and a["value"], b and b["value"])
        out.append(
            {
                "layer": key[0],
                "dim": key[1],
                "position": key[2],
                "status": status,
                "token_reference": a and a.get("token"),
                "token_other": b and b.get("token"),
                **{f"value_{k}": v for k, v in value.items()},
                "fraction_reference": a and a.get("fraction"),
                "fraction_other": b and b.get("fraction"),
            }
        )
    return out


def _same(entries: list[dict], field: str) -> dict[str, Any]:
    """The `field` (dim or position) values of the massive entries of each run, and whether
    they are the same set."""
    ref = sorted({e[field] for e in entries if e["status"] != "new"})
    other = sorted({e[field] for e in entries if e["status"] != "gone"})
    return {"reference": ref, "other": other, "same": ref == other}


def compare_pair(reference: Run, run: Run, corpus: str, variant: str, ref_entry: dict, entry: dict) -> dict[str, Any]:
    """One run against the reference on one corpus and variant (comparison.json's
    `against_reference.pairs[i]`)."""
    recorded = isinstance(ref_entry.get("massive"), list) and isinstance(entry.get("massive"), list)
    entries = _entries(ref_entry["massive"], entry["massive"]) if recorded else None
    layers = _layers(ref_entry["layers"], entry["layers"], entries)
    pair: dict[str, Any] = {
        "run": run.label,
        "corpus": corpus,
        "variant": variant,
        "weights": {"reference": weights_of(reference), "other": weights_of(run)},
        "precision": {"reference": reference.results.get("precision"), "other": run.results.get("precision")},
        "tokenizer": {
            "reference": (reference.results.get("data") or {}).get("tokenizer"),
            "other": (run.results.get("data") or {}).get("tokenizer"),
        },
        "mean_over_layers": {
            "top1_change_pct": _mean([r["top1_change_pct"] for r in layers]),
            "median_change_pct": _mean([r["median_change_pct"] for r in layers]),
        },
        "layers": layers,
        "perplexity": _change(ref_entry.get("perplexity"), entry.get("perplexity")),
        "bits_per_byte": _change(ref_entry.get("bits_per_byte"), entry.get("bits_per_byte")),
        "massive_recorded": recorded,
    }
    if entries is not None:
        kept = [e["value_change_pct"] for e in entries if e["status"] == "kept" and e["value_change_pct"] is not None]
        pair.update(
            {
                **{f"massive_{s}": sum(e["status"] == s for e in entries) for s in ("kept", "gone", "new")},
                "massive_same": all(e["status"] == "kept" for e in entries),
                "massive_dims": _same(entries, "dim"),
                "massive_positions": _same(entries, "position"),
                "value_change_pct_range": [min(kept), max(kept)] if kept else None,
                # kept entries whose most frequent token differs: other windows, or another tokenizer?
                "massive_token_differs": sum(
                    e["status"] == "kept" and e["token_reference"] != e["token_other"] for e in entries
                ),
                "massive": entries,
            }
        )
    return pair


def _corpora(run: Run) -> dict[str | None, tuple[str, dict[str, Any] | None, dict[str, dict]]]:
    """`corpora` of a run by the name its config gave each corpus (None: the default one), so
    the same corpus on other windows is found and said to differ."""
    keys = [run.results.get("corpus"), *(run.results.get("corpora") or {})]
    return dict(zip(keys, corpora(run.results), strict=True))


def against_reference(runs: list[Run]) -> dict[str, Any]:
    """comparison.json's `against_reference`: the reference (the first run), one pair per
    other run x corpus x variant that both have and that compare (module docstring), and
    each run left out with its reason."""
    reference, pairs, left_out = runs[0], [], []
    ref_corpora = _corpora(reference)
    for run in runs[1:]:
        why = _model_mismatch(reference, run)
        matched, reasons = 0, []
        for key, (name, data, variants) in [] if why else _corpora(run).items():
            if key not in ref_corpora:
                continue
            _, ref_data, ref_variants = ref_corpora[key]
            if _windows(ref_data) != _windows(data) or data is None:
                reasons.append(_windows_mismatch(ref_data, data))
                continue
            for variant in (v for v in variants if v in ref_variants):
                pairs.append(compare_pair(reference, run, name, variant, ref_variants[variant], variants[variant]))
                matched += 1
        if why or not matched:
            left_out.append({"run": run.label, "reason": why or (reasons[0] if reasons else "no corpus in common")})
    return {
        "reference": reference.label,
        "reference_weights": weights_of(reference),
        "pairs": pairs,
        "left_out": left_out,
    }


_TOKENIZER_NOTE = (
    " (token perplexity compares between them: the tokenizers note above counts each file's tokenizer as its own)"
)


def _named_apart(section: dict[str, Any]) -> bool:
    """Whether some compared run names its tokenizer otherwise than the reference (a GGUF file
    carries its own), which the table's notes count as another tokenizer."""
    return any(p["tokenizer"]["reference"] != p["tokenizer"]["other"] for p in section["pairs"])


def _several(section: dict[str, Any]) -> bool:
    """Whether pairs need their corpus and variant named: some run has more than one, or one
    is not the baseline."""
    runs = [p["run"] for p in section["pairs"]]
    return len(set(runs)) < len(runs) or any(p["variant"] != BASELINE for p in section["pairs"])


def _title(pair: dict[str, Any], several: bool) -> str:
    return f"{pair['run']} [{pair['variant']}, {pair['corpus']}]" if several else pair["run"]


def _signed(value: float | None, fmt: str = "+.3g") -> str:
    return cell(value, fmt)


def _massive_summary(pair: dict[str, Any]) -> str:
    """`15 kept, 0 gone, 0 new (dims and positions the same)`."""
    if not pair["massive_recorded"]:
        return "not recorded in both runs"
    counts = f"{pair['massive_kept']} kept, {pair['massive_gone']} gone, {pair['massive_new']} new"
    dims, positions = pair["massive_dims"]["same"], pair["massive_positions"]["same"]
    same = [name for name, ok in (("dims", dims), ("positions", positions)) if ok]
    differ = [name for name, ok in (("dims", dims), ("positions", positions)) if not ok]
    said = " and ".join(same) + " the same" if same else ""
    said += ("; " if same and differ else "") + (" and ".join(differ) + " differ" if differ else "")
    tokens = pair["massive_token_differs"]
    warn = f"; the token differs at {tokens} kept entries: other windows or another tokenizer?" if tokens else ""
    return f"{counts} ({said}){warn}"


def _value_range(pair: dict[str, Any]) -> str:
    """The kept entries' value changes, smallest to largest: `+0.0709 to +0.0713 (+0.0179% to +0.018%)`."""
    kept = pair.get("massive") or []
    moved = [e["value_change"] for e in kept if e["status"] == "kept" and e["value_change"] is not None]
    span = pair.get("value_change_pct_range")
    if not moved:
        return "-"
    pct = f" ({span[0]:+.3g}% to {span[1]:+.3g}%)" if span else ""
    return f"{min(moved):+.4g} to {max(moved):+.4g}{pct}"


def _ppl(pair: dict[str, Any]) -> str:
    p = pair["perplexity"]
    if p["change"] is None:
        return "perplexity n/a"
    return f"perplexity {p['reference']:.6g} -> {p['other']:.6g} ({p['change']:+.4g}, {_signed(p['change_pct'])}%)"


def reference_lines(section: dict[str, Any]) -> list[str]:
    """The terminal's short account: one line per pair, one per run left out."""
    if not section["pairs"]:
        reasons = "; ".join(f"{e['run']}: {e['reason']}" for e in section["left_out"])
        return [f"no comparison against the reference {section['reference']}: {reasons}"]
    head = (
        f"against the reference {section['reference']} ({section['reference_weights']}): runs of its model on its "
        f"windows; %: of the reference's value{_TOKENIZER_NOTE if _named_apart(section) else ''}"
    )
    several, lines = _several(section), [head]
    for pair in section["pairs"]:
        mean = pair["mean_over_layers"]
        lines.append(
            f"  {_title(pair, several)} ({pair['weights']['other']}): top-1 {_signed(mean['top1_change_pct'])}%, "
            f"median {_signed(mean['median_change_pct'])}% (mean over layers); massive entries "
            f"{_massive_summary(pair)}, their values {_value_range(pair)}; {_ppl(pair)}"
        )
    lines += [f"  not compared: {e['run']}: {e['reason']}" for e in section["left_out"]]
    return lines


def _layer_cells(row: dict[str, Any], recorded: bool) -> list[str]:
    moved = "" if row["top1_dim_reference"] == row["top1_dim_other"] else f" -> {cell(row['top1_dim_other'], 'd')}"
    cells = [
        str(row["layer"]),
        cell(row["top1_reference"], ".6g"), cell(row["top1_other"], ".6g"), _signed(row["top1_change"], "+.4g"),
        _signed(row["top1_change_pct"], "+.3g"),
        cell(row["median_reference"], ".4g"), cell(row["median_other"], ".4g"), _signed(row["median_change"], "+.3g"),
        _signed(row["median_change_pct"], "+.3g"),
        cell(row["top1_dim_reference"], "d") + moved,
    ]  # fmt: skip
    if recorded:
        cells.append(f"{row['massive_kept']} / {row['massive_gone']} / {row['massive_new']}")
    return cells


def _entry_cells(e: dict[str, Any]) -> list[str]:
    token = e["token_reference"] if e["token_reference"] is not None else e["token_other"]
    if e["status"] == "kept" and e["token_other"] != e["token_reference"]:
        token = f"{e['token_reference']!r} / {e['token_other']!r}"
    else:
        token = f"{token!r}"
    return [
        str(e["layer"]), str(e["dim"]), str(e["position"]), f"`{token}`", e["status"],
        cell(e["value_reference"], ".7g"), cell(e["value_other"], ".7g"), _signed(e["value_change"], "+.4g"),
        _signed(e["value_change_pct"], "+.3g"), cell(e["fraction_reference"], ".2f"), cell(e["fraction_other"], ".2f"),
    ]  # fmt: skip


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def reference_markdown(section: dict[str, Any]) -> str:
    """comparison.md's section: per pair, the summary, the layer table and the massive entries."""
    parts = ["", f"## Against the reference: {_md(section['reference'])} ({section['reference_weights']})", ""]
    if not section["pairs"]:
        parts += [f"- not compared: {e['run']}: {e['reason']}" for e in section["left_out"]]
        return "\n".join(parts) + "\n"
    parts += [
        "Runs of the reference's model (architecture, vocabulary, massive thresholds) on its windows, each against "
        "it; the tokenizer is taken to be the same where the vocabulary size is"
        + (_TOKENIZER_NOTE if _named_apart(section) else "")
        + ".",
        "",
        "- change: run - reference; " + PCT_NOTE,
        "- " + VALUE_NOTE,
    ]
    parts += [f"- not compared: {e['run']}: {e['reason']}" for e in section["left_out"]]
    several = _several(section)
    for pair in section["pairs"]:
        mean = pair["mean_over_layers"]
        parts += [
            "",
            f"### {_md(_title(pair, several))} ({pair['weights']['other']})",
            "",
            f"- top-1 {_signed(mean['top1_change_pct'])}%, median {_signed(mean['median_change_pct'])}% "
            "(mean over layers)",
            f"- massive entries: {_massive_summary(pair)}; their values {_value_range(pair)}",
            f"- {_ppl(pair)}; bits per byte {_signed(pair['bits_per_byte']['change'], '+.4g')}",
            "",
        ]
        head = ["layer", "top-1 ref", "top-1", "change", "%", "median ref", "median", "change", "%", "top-1 dim"]
        recorded = pair["massive_recorded"]
        head += ["massive kept / gone / new"] if recorded else []
        parts.append(markdown_table(head, [_layer_cells(r, recorded) for r in pair["layers"]]))
        if recorded and pair["massive"]:
            shown = pair["massive"][:ENTRY_ROWS]
            cols = ["layer", "dim", "position", "token", "status", "value ref", "value", "change", "%",
                    "share ref", "share"]  # fmt: skip
            parts += ["", markdown_table(cols, [[_md(c) for c in _entry_cells(e)] for e in shown])]
            if len(pair["massive"]) > len(shown):
                parts += ["", f"{len(pair['massive']) - len(shown)} more massive entries in comparison.json"]
    return "\n".join(parts) + "\n"
