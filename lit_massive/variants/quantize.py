"""Fake-quantized variants (`{quantize: {...}}`): checked on the host, built once what they
depend on is known (this run's super-weight candidates for ``keep: super_weights``), and
described in results.json with the scales they used and what they kept. The rounding itself
runs in the probes (`probes.quantize`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lit_massive.errors import InputError
from lit_massive.probes.quantize import INPUTS, KEPT, SCALES, WINDOWS, FakeQuant
from lit_massive.variants.edits import massive_token_mask
from lit_massive.variants.specs import Quantize, edited_layers

KEEPS = ("none", "massive_tokens", "super_weights")
PER = ("tensor", "token")
BITS = range(2, 17)


@dataclass(frozen=True)
class QuantizeRecord:
    """What a quantize variant did, as results.json records it (its `edit`): `activations`
    ({bits, per}) and `weights` ({bits, group}) as given (null: not rounded), `layers`, `keep`;
    `kept_tokens` per layer (summed over the windows of every corpus; null without ``keep:
    massive_tokens``), `kept_weights` ([layer, row, col]; null without ``keep:
    super_weights``), `activation_scales` per layer (the mean scale of each rounded input over
    windows, per token averaged over its rounded tokens) and `weight_error` per layer
    (||W - Q(W)||^2 / ||W||^2 over the block's linear weights)."""

    to: str
    activations: dict[str, Any] | None
    weights: dict[str, Any] | None
    layers: list[int]
    keep: str
    kept_tokens: list[int] | None = None
    kept_weights: list[list[int]] | None = None
    activation_scales: list[dict[str, float | None]] | None = None
    weight_error: list[float | None] | None = None
    note: str | None = None


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_quantize(where: str, spec: dict, n_layer: int, check_layer) -> Quantize:
    """`quantize: {activations: {bits, per}, weights: {bits, group}, layers, keep}` (either part
    optional, not both absent), checked."""
    value = spec["quantize"]
    keys = {"activations", "weights", "layers", "keep"}
    if not isinstance(value, dict) or set(value) - keys or not {"activations", "weights"} & set(value):
        raise InputError(
            f"{where}: quantize={value!r}; expected {{activations: {{bits: 8, per: tensor|token}}, weights: "
            f"{{bits: 4, group: 128|channel}}, layers: all|[..], keep: none|massive_tokens|super_weights}} "
            f"with activations or weights"
        )
    out: dict[str, Any] = {"layers": check_layer(f"{where}: quantize.layers", value.get("layers", "all"), n_layer)}
    keep = value.get("keep", "none")
    if keep not in KEEPS:
        raise InputError(f"{where}: quantize.keep={keep!r}; valid: {', '.join(KEEPS)}")
    out["keep"] = keep
    for part, extra, choices in (("activations", "per", PER), ("weights", "group", None)):
        if part not in value:
            continue
        given = value[part]
        if not isinstance(given, dict) or set(given) - {"bits", extra} or "bits" not in given:
            raise InputError(f"{where}: quantize.{part}={given!r}; expected {{bits: B, {extra}: ...}}")
        bits = given["bits"]
        if not _int(bits) or bits not in BITS:
            raise InputError(f"{where}: quantize.{part}.bits={bits!r}; valid: {BITS.start}..{BITS.stop - 1}")
        if part == "activations":
            per = given.get("per", "tensor")
            if per not in choices:
                raise InputError(f"{where}: quantize.activations.per={per!r}; valid: {', '.join(PER)}")
            out[part] = {"bits": bits, "per": per}
        else:
            group = given.get("group", "channel")
            if group != "channel" and not (_int(group) and group >= 1):
                raise InputError(f"{where}: quantize.weights.group={group!r}; valid: channel or an integer >= 1")
            out[part] = {"bits": bits, "group": group}
    if keep == "massive_tokens" and "activations" not in out:
        raise InputError(f"{where}: quantize.keep=massive_tokens keeps activations; add activations: {{bits: B}}")
    if keep == "super_weights" and "weights" not in out:
        raise InputError(f"{where}: quantize.keep=super_weights keeps weights; add weights: {{bits: B}}")
    return Quantize(out)


def needs_super_weights(spec: Quantize) -> bool:
    """Whether the variant keeps this run's own super-weight candidates (a first pass)."""
    return spec.quantize.get("keep") == "super_weights"


def fake_quant(
    spec: Quantize, n_layer: int, threshold: float, ratio: float, baseline: dict[str, Any] | None, device: torch.device
) -> FakeQuant:
    """The probes' `FakeQuant` of a checked variant, on `device`."""
    q = spec.quantize
    layers = edited_layers(q["layers"], n_layer)
    act, weights = q.get("activations"), q.get("weights")
    kept: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    if q["keep"] == "super_weights":
        for c in (baseline or {}).get("super_weights") or []:
            if c["layer"] in layers:
                rows, cols = kept.setdefault(c["layer"], ([], []))
                rows.append(c["row"]), cols.append(c["col"])
        kept = {i: (torch.tensor(r, device=device), torch.tensor(c, device=device)) for i, (r, c) in kept.items()}
    return FakeQuant(
        layers=layers,
        act_bits=None if act is None else act["bits"],
        act_per="tensor" if act is None else act["per"],
        weight_bits=None if weights is None else weights["bits"],
        weight_group="channel" if weights is None else weights["group"],
        massive_tokens=(lambda x: massive_token_mask(x, threshold, ratio)) if q["keep"] == "massive_tokens" else None,
        kept_weights=kept,
        stats=torch.zeros(SCALES + len(INPUTS), n_layer, dtype=torch.float64, device=device),
        weight_error=torch.zeros(2, n_layer, dtype=torch.float64, device=device),
    )


def quantize_record(spec: Quantize, fq: FakeQuant | None, stats: list[list[float]] | None) -> QuantizeRecord:
    """The variant's `QuantizeRecord`; `stats`: its `FakeQuant.stats` summed over processes
    with its weight errors below (null before any pass)."""
    q = spec.quantize
    layers = [] if fq is None else fq.layers
    record = QuantizeRecord("quantize", q.get("activations"), q.get("weights"), layers, q["keep"])
    if fq is None or stats is None:
        return record
    windows = stats[WINDOWS]
    kept_tokens = [int(stats[KEPT][i]) for i in layers] if q["keep"] == "massive_tokens" else None
    scales = None
    if fq.act_bits is not None:
        scales = [
            {
                kind: stats[SCALES + k][i] / windows[i] if windows[i] and kind in fq.rounded_inputs else None
                for k, kind in enumerate(INPUTS)
            }
            for i in layers
        ]
    error = None
    if fq.weight_bits is not None:
        num, den = stats[SCALES + len(INPUTS)], stats[SCALES + len(INPUTS) + 1]
        error = [num[i] / den[i] if den[i] else None for i in layers]
    kept_weights = None
    note = None
    if q["keep"] == "super_weights":
        kept_weights = sorted(
            [i, r, c]
            for i, (rows, cols) in fq.kept_weights.items()
            for r, c in zip(rows.tolist(), cols.tolist(), strict=True)
        )
        note = None if kept_weights else "this run's baseline has no super-weight candidate in these layers: none kept"
    return QuantizeRecord(
        "quantize", q.get("activations"), q.get("weights"), layers, q["keep"], kept_tokens, kept_weights, scales,
        error, note,
    )  # fmt: skip
