"""The paper's value-update decomposition (section 4.2): each head's output o_i splits into
the part that comes from the massive tokens C, u_i = sum_{j in C} p_ij v_j, and the rest.
The paper finds u_i nearly the same for every query: an implicit attention bias.

At each block, C is the set of massive tokens of the stream that block's attention reads:
the positions where the previous block's output meets the massive criterion (none at
block 0, and none before the massive activations appear: there the update is 0 and the
cosine null). C is thus known when the block runs, and the decomposition is computed in
the block's hook from its attention record (`probes.attention.HeadRecord`: the call, row
log-sum-exps and head outputs, `Needs.head_update`), which is released right after, so
nothing of T x D per block outlives its block. The probabilities on C are recomputed from
their logits, exactly: p_ij = exp(s_ij - lse_i) where query i may attend to key j."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from lit_massive.analyses.base import Block, Forward, Setup
from lit_massive.analyses.head_means import HeadFiguresAnalysis, HeadMeans
from lit_massive.analyses.head_scores import matrix
from lit_massive.analyses.registry import register_analysis
from lit_massive.figures import head_figures
from lit_massive.probes import Needs
from lit_massive.probes.attention import HeadRecord

# massive tokens per window the decomposition follows (at most `model.massive_candidates`): a
# window has a few (BOS, delimiters), and every slot costs a (B, H, T) column of logits per
# block, so 256 slots were a second attention pass at T = 256; a window with more is left
# out of the means and counted (`massive_update_overflow`)
TOKEN_SLOTS = 32


def massive_update(record: HeadRecord, massive: Tensor, slots: int) -> dict[str, Tensor]:
    """Per window and head (B, H) of one block: the mean over queries of ||u_i|| and of
    ||o_i - u_i||, and the mean, over the queries that may attend to a massive token, of the
    cosine between u_i and the mean of u over those queries (NaN where there is none).
    `massive` (B, T) bool marks each window's massive tokens; the first `slots` of them
    count (the caller leaves out a window with more: `overflowing`)."""
    call = record.call
    b, h, t, hd = call.query.shape
    h_kv = call.key.shape[1]
    m = min(slots, t)
    positions = massive.float().topk(m, dim=1).indices  # (B, M): the massive tokens first
    valid = massive.gather(1, positions)  # (B, M)
    index = positions[:, None, :, None].expand(-1, h_kv, -1, hd)
    keys, values = call.key.gather(2, index), call.value.gather(2, index)  # (B, H_kv, M, hd)
    allowed = call.allowed(positions) & valid[:, None, None, :]  # (B, 1 or H, T, M)
    p = torch.where(allowed, call.logits(keys).sub_(record.lse[..., None]).exp_(), 0.0)  # (B, H, T, M)
    u = (p.view(b, h_kv, call.group * t, m) @ values.float()).view(b, h, t, -1)  # each KV head's group at once
    sees = allowed.any(-1).expand(b, h, t)  # queries that may attend to a massive token
    n = sees.sum(-1)  # (B, H)
    mean_u = torch.where(sees[..., None], u, 0.0).sum(-2) / n.clamp(min=1)[..., None]  # (B, H, hd)
    norm = u.norm(dim=-1)  # (B, H, T)
    cosine = cosine_to(u, norm, mean_u)
    return {
        "massive_update_norm": norm.mean(-1),
        "other_update_norm": (record.output - u).norm(dim=-1).mean(-1),
        "massive_update_cosine": torch.where(sees, cosine, 0.0).sum(-1) / n,  # NaN: no such query
    }


def cosine_to(x: Tensor, x_norm: Tensor, y: Tensor, eps: float = 1e-8) -> Tensor:
    """`torch.nn.functional.cosine_similarity` of each row of x (B, H, T, d) with y (B, H, d),
    given the rows' norms x_norm (B, H, T), which the caller needs anyway: one matrix-vector
    product per head instead of expanding y over the rows and normalising both."""
    dot = (x @ y[..., None]).squeeze(-1)  # (B, H, T)
    return dot / (x_norm.clamp_min(eps) * y.norm(dim=-1, keepdim=True).clamp_min(eps))


def overflowing(massive: Tensor, slots: int) -> Tensor:
    """(B,) bool: the windows of `massive` (B, T) with more massive tokens than `slots`."""
    return massive.sum(dim=1) > slots


class UpdateMeans(HeadMeans):
    """`HeadMeans` of the decomposition, and the windows left out of it for having more
    massive tokens than the slots followed."""

    overflow: Tensor  # () int64

    def __init__(self, figures: tuple[str, ...], n_layer: int, n_head: int, **kwargs) -> None:
        super().__init__(figures, n_layer, n_head, **kwargs)
        self.add_state("overflow", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, values: dict[str, list[Tensor]], over: Tensor) -> None:
        """`values` as `HeadMeans` takes them, NaN (left out) in the windows `over` (B,) marks."""
        super().update(values)
        self.overflow += over.sum()

    def compute(self) -> dict[str, Tensor]:
        return {**super().compute(), "overflow": self.overflow}


@register_analysis
class MassiveUpdate(HeadFiguresAnalysis):
    """`massive_update_norm`, `other_update_norm` (the two parts add up to o_i) and
    `massive_update_cosine` (1.0: the massive tokens' update is a constant bias), per
    (layer, head), means over windows of per-window means; a window with no query that may
    attend to a massive token has no cosine, and a head with no such window is null."""

    name = "massive_update"
    needs = Needs(heads=True, head_update=True)
    reduces_blocks = True
    figures = ("massive_update_norm", "other_update_norm", "massive_update_cosine")
    keys = (*figures, "massive_update_overflow")
    head_figures = {key: key for key in figures}

    def __init__(self, setup: Setup) -> None:
        super().__init__(setup)
        self.slots = min(setup.options["massive_candidates"], TOKEN_SLOTS)

    def new_metric(self, setup: Setup) -> UpdateMeans:
        return UpdateMeans(self.figures, setup.layout.n_layer, setup.layout.n_head)

    def reduce_block(self, block: Block) -> tuple[dict[str, Tensor], Tensor]:
        """The block's (B, H) figures by the massive tokens it reads, NaN (left out) in the
        windows with more of them than the slots, and those windows (B,)."""
        massive = block.entering_tokens()
        over = overflowing(massive, self.slots)
        parts = massive_update(block.head, massive, self.slots)
        return {k: v.masked_fill(over[:, None], float("nan")) for k, v in parts.items()}, over

    def update(self, variant: str, forward: Forward) -> None:
        if variant in self.metrics:
            blocks = forward.probed.reduced[self.name]
            values = {key: [parts[key] for parts, _ in blocks] for key in self.figures}
            # a window counts once, however many blocks it overflowed in
            self.metrics[variant].update(values, torch.stack([over for _, over in blocks]).any(dim=0))

    def section(self, computed: dict[str, Tensor], decode: Callable[[int], str]) -> dict[str, Any]:
        figures = {key: matrix(computed[key]) for key in self.figures}
        # windows with more massive tokens than the slots followed in some block: left out of its figures
        return {**figures, "massive_update_overflow": int(computed["overflow"])}

    @classmethod
    def publish(cls, out, model: str, name: str, entry: dict[str, Any]) -> None:
        title, pruned = f"{model}: {name}", entry["pruned_heads"]
        label = "cosine of the massive tokens' update\nwith its mean over queries"
        cosine = entry["massive_update_cosine"]
        if any(v is not None for row in cosine for v in row):
            fig, _ = head_figures.head_grid(cosine, title, label, diverging=True, pruned=pruned)
            out.figure(f"{name}/figures/massive_update_cosine", fig)
        norm, label = entry["massive_update_norm"], "mean ||update from massive tokens||"
        if any(all(v == 0 for v in row) for row in norm):  # blocks before the massive activations appear
            label += "\ngrey rows: no massive token enters the block"
        fig, _ = head_figures.head_grid(norm, title, label, pruned=pruned, log=True)
        out.figure(f"{name}/figures/massive_update_norm", fig)
        for layer, row in enumerate(cosine):
            out.scalar(f"{name}/massive_update_cosine", head_figures.head_mean(row), layer)
