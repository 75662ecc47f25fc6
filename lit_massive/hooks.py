"""Temporary hooks: registered on entry, removed on exit, even after an exception.

Hooks are global state on the modules; one that is left behind silently changes every
later forward pass. This module is the only place that registers them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

from torch import Tensor, nn

from lit_massive.adapter import block_output

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


@contextmanager
def capture_block_outputs(blocks: Sequence[nn.Module]) -> Iterator[list[Tensor | None]]:
    """Yield a list whose entry i holds block i's output after a forward pass.

    The outputs are the residual stream before the final LayerNorm, which
    `output_hidden_states` does not give for the last block.
    """
    outputs: list[Tensor | None] = [None] * len(blocks)

    def keep(i: int) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Tensor | tuple) -> None:
            outputs[i] = block_output(output)

        return hook

    with hooks(forward=[(block, keep(i)) for i, block in enumerate(blocks)]):
        yield outputs
