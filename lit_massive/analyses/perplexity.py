"""Perplexity: token-level, from summed next-token NLL of the scored tokens of each window, and
from the same sums, per UTF-8 byte and per word of the scored text (bits per byte, byte and
word perplexity)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_massive.analyses.base import Analysis, Column, Forward, Setup, SumStatesMetric
from lit_massive.analyses.layer_profile import finite, pct
from lit_massive.analyses.registry import register_analysis
from lit_massive.results.markdown import cell

NLL_CHUNK_LOGITS = 2**24  # logits per LM-head chunk: 64 MB in float32, whatever the vocabulary


def token_nll(
    hidden: Tensor,
    lm_head: nn.Linear,
    input_ids: Tensor,
    score_from: Tensor,
    softcap: float | None = None,
    chunk_logits: int = NLL_CHUNK_LOGITS,
) -> tuple[Tensor, Tensor, Tensor]:
    """Next-token NLL of the scored positions (>= score_from, per sequence) from the final
    hidden state (B, T, D): their float64 sum, their count, and how many were not finite
    (left out of the sum). The LM head runs on chunks of positions, so the (B, T, V) logits
    (and their float32 copy) never exist at once: Llama 3's 128k or Gemma's 256k vocabulary
    costs one chunk. `softcap` is the family's final-logit softcapping (Gemma 2). Cross-entropy
    is log-softmax based, in float32 whatever the logits dtype; the last position has no target."""
    b, t = input_ids.shape
    position = torch.arange(1, t, device=input_ids.device)  # target positions
    scored = position[None, :] >= score_from[:, None]  # (B, T-1)
    total = torch.zeros((), dtype=torch.float64, device=input_ids.device)
    nonfinite = torch.zeros((), dtype=torch.int64, device=input_ids.device)
    step = max(1, chunk_logits // (b * lm_head.out_features))
    for start in range(0, t - 1, step):
        end = min(start + step, t - 1)
        logits = lm_head(hidden[:, start:end])  # (B, c, V)
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        nll = F.cross_entropy(
            logits.float().flatten(0, 1), input_ids[:, start + 1 : end + 1].flatten(), reduction="none"
        ).view(b, -1)
        keep = scored[:, start:end]
        finite = torch.isfinite(nll)
        total += torch.where(keep & finite, nll, 0.0).sum(dtype=torch.float64)
        nonfinite += (keep & ~finite).sum()
    return total, scored.sum(), nonfinite


class Perplexity(SumStatesMetric):
    """Token-level perplexity from summed next-token NLL (float64) and token counts, and from the
    same NLL sum, bits per byte and byte and word perplexity over the scored text's UTF-8 bytes
    and words (summed per window, so several processes give the counts of one)."""

    higher_is_better = False

    nll_sum: Tensor  # () float64
    tokens: Tensor  # () int64, scored tokens
    nonfinite_tokens: Tensor  # () int64, scored tokens whose NLL was inf/NaN (not in nll_sum)
    scored_bytes: Tensor  # () int64, UTF-8 bytes of the scored text
    scored_words: Tensor  # () int64, whitespace-separated words of the scored text
    uncounted: Tensor  # () int64, batches without text counts (windows given as ids): no per-byte numbers

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("nll_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("tokens", "nonfinite_tokens", "scored_bytes", "scored_words", "uncounted"):
            self.add_state(name, torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(
        self,
        total: Tensor,
        tokens: Tensor,
        nonfinite: Tensor,
        scored_bytes: list[int] | None = None,
        scored_words: list[int] | None = None,
    ) -> None:
        """One batch's NLL sum, scored tokens and non-finite token losses (`token_nll`), and its
        windows' scored bytes and words (host ints; None: the windows have no text counts)."""
        self.nll_sum += total
        self.tokens += tokens
        self.nonfinite_tokens += nonfinite
        if scored_bytes is None or scored_words is None:
            self.uncounted += 1
        else:
            self.scored_bytes += sum(scored_bytes)
            self.scored_words += sum(scored_words)

    def compute(self) -> dict[str, Tensor]:
        """exp(NLL sum / tokens), NLL sum / (ln 2 bytes), exp(NLL sum / bytes), exp(NLL sum / words);
        NaN when any scored token's NLL was not finite."""
        nll = self.nll_sum
        if self.nonfinite_tokens > 0:
            nll = torch.full_like(nll, float("nan"))
        byte_nll = nll / self.scored_bytes.clamp(min=1)
        return {
            "perplexity": torch.exp(nll / self.tokens.clamp(min=1)),
            "bits_per_byte": byte_nll / math.log(2),
            "byte_perplexity": torch.exp(byte_nll),
            "word_perplexity": torch.exp(nll / self.scored_words.clamp(min=1)),
            "nll_sum": self.nll_sum,
            "tokens": self.tokens,
            "nonfinite_tokens": self.nonfinite_tokens,
            "scored_bytes": self.scored_bytes,
            "scored_words": self.scored_words,
            "uncounted": self.uncounted,
        }


@dataclass
class PerplexityOptions:
    """Token-level perplexity (and, with the windows' text, bits per byte, byte and word
    perplexity): needs the LM head's logits.

    Args:
        enabled: measure it.
    """

    enabled: bool = True


@register_analysis
class PerplexityAnalysis(Analysis):
    """What pruning or an edit costs: perplexity of every variant on the same windows."""

    name = "perplexity"
    Options = PerplexityOptions
    moved = {"perplexity": "enabled"}
    keys = (
        "perplexity",
        "bits_per_byte",
        "byte_perplexity",
        "word_perplexity",
        "nll_sum",
        "scored_tokens",
        "scored_bytes",
        "scored_words",
        "nonfinite_tokens",
    )

    def new_metric(self, setup: Setup) -> Perplexity:
        return Perplexity()

    def update(self, variant: str, forward: Forward) -> None:
        lay = forward.layout  # the LM head runs in chunks: no (B, T, V) logits at once
        nll = token_nll(forward.final_hidden, lay.lm_head, forward.input_ids, forward.score_from,
                        lay.final_logit_softcap)  # fmt: skip
        self.metrics[variant].update(*nll, forward.scored_bytes, forward.scored_words)

    def section(self, computed: dict[str, Tensor], decode: Callable[[int], str]) -> dict[str, Any]:
        counted = int(computed["uncounted"]) == 0  # every window came with its text's counts
        text = ("bits_per_byte", "byte_perplexity", "word_perplexity")
        return {
            "perplexity": finite(float(computed["perplexity"])),
            **{key: finite(float(computed[key])) if counted else None for key in text},
            "nll_sum": finite(float(computed["nll_sum"])),
            "scored_tokens": int(computed["tokens"]),
            "scored_bytes": int(computed["scored_bytes"]) if counted else None,
            "scored_words": int(computed["scored_words"]) if counted else None,
            "nonfinite_tokens": int(computed["nonfinite_tokens"]),
        }

    @classmethod
    def change(cls, entry: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
        return {"perplexity_pct": pct(entry["perplexity"], baseline["perplexity"])}

    @classmethod
    def publish(cls, out, model: str, name: str, entry: dict[str, Any]) -> None:
        out.scalar(f"{name}/perplexity", entry["perplexity"], 0)

    @classmethod
    def columns(cls, entry: dict[str, Any]) -> list[Column]:
        change = entry.get("change_vs_baseline")
        return [
            Column(30, "perplexity", cell(entry["perplexity"], ".4f")),
            Column(50, "perplexity %", "-" if change is None else cell(change["perplexity_pct"], "+.2f")),
        ]

    @classmethod
    def summary_columns(cls, entry: dict[str, Any]) -> list[Column]:
        change = entry.get("change_vs_baseline", {})
        return [
            Column(20, "perplexity", cell(entry["perplexity"], ".4f")),
            Column(30, "perplexity change %", cell(change.get("perplexity_pct"), "+.3f")),
        ]

    @classmethod
    def warnings(cls, name: str, entry: dict[str, Any]) -> list[str]:
        if not entry["nonfinite_tokens"]:
            return []
        return [
            f"{name}: inf/NaN (precision overflow?) in {entry['nonfinite_tokens']} token NLLs: "
            f"perplexity is null; see results.json"
        ]
