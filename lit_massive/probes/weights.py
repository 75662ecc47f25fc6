"""Zeroing scalars of MLP output projections for one forward pass (super weights, Yu et al.,
arXiv 2411.07191), restored after it: no copy of the model is made.

The zeros are written by a pre-hook on the projection and undone by a forward hook on it, so
they act on the weight the module holds while it runs: a plain parameter, or an FSDP2
layer's gathered weight (whole only then; its shards are never touched). Fixed shapes, no
value read back to the host.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

Hook = tuple[nn.Module, Callable]


class ZeroedWeights(NamedTuple):
    """The weights W[j, i] one variant zeroes in block `layer`'s MLP output projection, on
    the model's device."""

    layer: int
    rows: Tensor  # (n,) int64: j, output channels
    cols: Tensor  # (n,) int64: i, input channels
    values: Tensor  # (n,) float32: what each weight held before zeroing, written by every pass


class Zeroing:
    """Zero one block's weights before its projection runs and put them back after it (or
    at `restore`, when the pass stopped in between)."""

    def __init__(self, zeroed: ZeroedWeights) -> None:
        self.zeroed = zeroed
        self.held: tuple[Tensor, tuple[Tensor, Tensor], Tensor] | None = None

    def zero(self, module: nn.Module, args: tuple) -> None:
        z = self.zeroed
        # nn.Linear holds (out, in); GPT-2's Conv1D (in, out)
        at = (z.rows, z.cols) if isinstance(module, nn.Linear) else (z.cols, z.rows)
        with torch.no_grad():
            weight = module.weight
            old = weight[at]  # a copy (advanced indexing)
            z.values.copy_(old)
            weight.index_put_(at, torch.zeros_like(old))
        self.held = (weight, at, old)

    def restore(self, *_: object) -> None:
        if self.held is None:
            return
        weight, at, old = self.held
        self.held = None
        if weight.untyped_storage().size():  # an FSDP2 layer frees its gathered weight after the pass
            with torch.no_grad():
                weight.index_put_(at, old)


def zeroing_hooks(
    mlp_down: list[nn.Module], zeroed: list[ZeroedWeights]
) -> tuple[list[Zeroing], list[Hook], list[Hook]]:
    """(the zeroings, their forward hooks that restore, their pre-hooks that zero); the
    forward hooks go last, so every probe of the projection sees the weights it ran with."""
    zeroings = [Zeroing(z) for z in zeroed]
    forward = [(mlp_down[z.layer], zeroing.restore) for z, zeroing in zip(zeroed, zeroings, strict=True)]
    pre = [(mlp_down[z.layer], zeroing.zero) for z, zeroing in zip(zeroed, zeroings, strict=True)]
    return zeroings, forward, pre
