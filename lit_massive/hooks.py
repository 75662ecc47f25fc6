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
    block_inputs: list[Tensor | None] = field(default_factory=list)  # with components
    attn_outputs: list[Tensor | None] = field(default_factory=list)  # with components
    mlp_outputs: list[Tensor | None] = field(default_factory=list)  # with components


def _keep(store: list, i: int) -> Callable:
    def hook(module: nn.Module, args: tuple, output: Tensor | tuple) -> None:
        store[i] = block_output(output)

    return hook


@contextmanager
def probes(
    layout: DecoderLayout,
    head_mask: Tensor | None = None,
    head_scores: bool = False,
    components: bool = False,
    edit: tuple[int, Callable[[Tensor], Tensor]] | None = None,
) -> Iterator[Probed]:
    """Everything one measured forward pass needs, registered together and removed together.

    * block outputs, always;
    * with `head_scores`, each head's mean attention on token 0, computed inside the hook
      from q and k so no (B, H, T, T) map outlives its block;
    * with `head_mask` (L, H), a pre-hook on each attention output projection that zeroes
      the pruned heads' outputs (only blocks with a pruned head get one);
    * with `components`, each block's input and its attention and MLP outputs
      (block output = input + attention + MLP);
    * with `edit = (i, fn)`, block i's output is replaced by fn(output) before anything
      downstream (or the probes) sees it.
    """
    n = layout.n_layer
    probed = Probed([None] * n)
    forward, forward_pre = [], []
    if edit is not None:
        layer, fn = edit

        def apply_edit(module: nn.Module, args: tuple, output: Tensor | tuple) -> Tensor | tuple:
            x = block_output(output)
            return (fn(x), *output[1:]) if isinstance(output, tuple) else fn(x)

        forward.append((layout.blocks[layer], apply_edit))  # first, so the probes see the edit
    forward += [(block, _keep(probed.block_outputs, i)) for i, block in enumerate(layout.blocks)]
    if head_scores:
        probed.first_token_attention = [None] * n

        def score_heads(i: int) -> Callable:
            def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
                q, k = layout.split_qk(output)
                probed.first_token_attention[i] = first_token_attention(q, k, layout.attn_scaling[i])

            return hook

        forward += [(m, score_heads(i)) for i, m in enumerate(layout.qk_source)]
    if components:
        probed.block_inputs, probed.attn_outputs, probed.mlp_outputs = [None] * n, [None] * n, [None] * n

        def keep_input(i: int) -> Callable:
            def hook(module: nn.Module, args: tuple) -> None:
                probed.block_inputs[i] = args[0]

            return hook

        forward_pre += [(block, keep_input(i)) for i, block in enumerate(layout.blocks)]
        forward += [(m, _keep(probed.attn_outputs, i)) for i, m in enumerate(layout.attn)]
        forward += [(m, _keep(probed.mlp_outputs, i)) for i, m in enumerate(layout.mlp)]
    if head_mask is not None:

        def prune(mask: Tensor) -> Callable:
            def hook(module: nn.Module, args: tuple) -> tuple:
                return (mask_heads(args[0], mask), *args[1:])

            return hook

        forward_pre += [
            (proj, prune(head_mask[i]))
            for i, proj in enumerate(layout.attn_out_proj)
            if bool((head_mask[i] == 0).any())
        ]
    with hooks(forward=forward, forward_pre=forward_pre):
        yield probed
