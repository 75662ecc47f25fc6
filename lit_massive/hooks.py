"""Temporary hooks: registered on entry, removed on exit, even after an exception.

Hooks are global state on the modules; one that is left behind silently changes every
later forward pass. This module is the only place that registers them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from torch import Tensor, nn

from lit_massive.adapter import DecoderLayout, block_output
from lit_massive.functional import first_token_attention, mask_heads

Hook = tuple[nn.Module, Callable]


@contextmanager
def hooks(forward: Iterable[Hook] = (), forward_pre: Iterable[Hook] = ()) -> Iterator[None]:
    """Register forward and forward-pre hooks for the duration of the `with` block."""
    handles = []
    try:
        for module, fn in forward:
            handles.append(module.register_forward_hook(fn))
        for module, fn in forward_pre:
            handles.append(module.register_forward_pre_hook(fn))
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class Probed:
    """What one forward pass under `probes` recorded, per block."""

    block_outputs: list[Tensor | None]
    first_token_attention: list[Tensor | None] = field(default_factory=list)  # (B, H) each


@contextmanager
def probes(
    layout: DecoderLayout, head_mask: Tensor | None = None, head_scores: bool = False
) -> Iterator[Probed]:
    """Everything one measured forward pass needs, registered together and removed together.

    * block outputs, always;
    * with `head_scores`, each head's mean attention on token 0, computed inside the hook
      from q and k so no (B, H, T, T) map outlives its block;
    * with `head_mask` (L, H), a pre-hook on each attention output projection that zeroes
      the pruned heads' outputs (only blocks with a pruned head get one).
    """
    n = layout.n_layer
    probed = Probed([None] * n, [None] * n if head_scores else [])

    def keep_block(i: int) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Tensor | tuple) -> None:
            probed.block_outputs[i] = block_output(output)

        return hook

    def score_heads(i: int) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            q, k = layout.split_qk(output)
            probed.first_token_attention[i] = first_token_attention(q, k, layout.attn_scaling[i])

        return hook

    def prune(mask: Tensor) -> Callable:
        def hook(module: nn.Module, args: tuple) -> tuple:
            return (mask_heads(args[0], mask), *args[1:])

        return hook

    forward = [(block, keep_block(i)) for i, block in enumerate(layout.blocks)]
    if head_scores:
        forward += [(m, score_heads(i)) for i, m in enumerate(layout.qk_source)]
    forward_pre = []
    if head_mask is not None:
        forward_pre = [
            (proj, prune(head_mask[i]))
            for i, proj in enumerate(layout.attn_out_proj)
            if bool((head_mask[i] == 0).any())
        ]
    with hooks(forward=forward, forward_pre=forward_pre):
        yield probed
