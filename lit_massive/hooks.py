"""Temporary hooks: registered on entry, removed on exit, even after an exception.

Hooks are global state on the modules; one that is left behind silently changes every
later forward pass. This module is the only place that registers them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

from torch import Tensor, nn
from transformers import masking_utils
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from lit_massive.adapter import DecoderLayout, block_output
from lit_massive.functional import attention_probs, mask_heads, received_attention

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


AttentionFn = Callable[..., tuple]


@contextmanager
def attention_probe(layout: DecoderLayout, on_call: Callable[[int, Tensor], None]) -> Iterator[None]:
    """Call `on_call(i, probs)` with the attention probabilities (B, H, T, T) of block i,
    computed from what the model's attention function receives, then run that function.

    Every supported family calls `ALL_ATTENTION_FUNCTIONS.get_interface(impl, eager)` with
    the final query (after RoPE and q/k norms), the key (one per KV group), the mask it
    built (sliding windows included), `scaling` and `softcap`. Wrapping the registry entry
    of the model's own backend keeps that backend (sdpa, flash) for the forward pass and
    leaves masks untouched, so the probabilities are the ones the model uses. The entry is
    a local override on the registry, restored on exit like the hooks.
    """
    impl = layout.attn_implementation
    layer_of = {id(m): i for i, m in enumerate(layout.attn)}
    local = ALL_ATTENTION_FUNCTIONS._local_mapping  # overrides of this registry instance only
    had_local, previous = impl in local, local.get(impl)
    backend = ALL_ATTENTION_FUNCTIONS[impl] if impl in ALL_ATTENTION_FUNCTIONS else None

    def probe(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask, **kwargs) -> tuple:
        i = layer_of.get(id(module))
        if i is not None:
            scaling = kwargs.get("scaling")
            probs = attention_probs(
                query,
                key,
                query.shape[-1] ** -0.5 if scaling is None else scaling,
                attention_mask,
                softcap=kwargs.get("softcap"),
                sliding_window=kwargs.get("sliding_window"),
            )
            on_call(i, probs)
            del probs  # one block's (B, H, T, T) at a time
        # "eager" is no registry entry: it is the family's own function, the call's default
        fn = backend or sys.modules[type(module).__module__].eager_attention_forward
        return fn(module, query, key, value, attention_mask, **kwargs)

    ALL_ATTENTION_FUNCTIONS[impl] = probe
    try:
        yield
    finally:
        if had_local:
            local[impl] = previous
        else:
            del local[impl]


@contextmanager
def unpacked_windows() -> Iterator[None]:
    """Tell transformers' mask builder that no window packs several sequences (ours never
    do: positions run 0..T-1 in every row). Without this it checks the position ids on every
    forward pass with a value read back to the host, which on a GPU waits for the device."""
    check = getattr(masking_utils, "find_packed_sequence_indices", None)
    if check is None:  # a transformers without the check
        yield
        return
    masking_utils.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = check


@dataclass
class Probed:
    """What one forward pass under `probes` recorded, per block."""

    block_outputs: list[Tensor | None]
    # with head_scores, (B, H, T) each: what each key position receives, mean over queries
    # (column 0: the first-token score)
    received: list[Tensor | None] = field(default_factory=list)
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
    pruned_layers: Iterable[int] | None = None,
    head_scores: bool = False,
    components: bool = False,
    edit: tuple[int, Callable[[Tensor], Tensor]] | None = None,
) -> Iterator[Probed]:
    """Everything one measured forward pass needs, registered together and removed together.

    * block outputs, always;
    * with `head_scores`, the attention each key position receives from each head (mean
      over queries; its first column is the first-token score), computed inside the model's
      attention function (`attention_probe`) so no (B, H, T, T) map outlives its block;
    * with `head_mask` (L, H), a pre-hook on each attention output projection that zeroes
      the pruned heads' outputs (only blocks with a pruned head get one: `pruned_layers`,
      which callers on a GPU pass from a host copy, else read from the mask);
    * with `components`, each block's input and what its attention and MLP add to the
      residual stream (block output = input + attention + MLP);
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
        probed.received = [None] * n

        def score_heads(i: int, probs: Tensor) -> None:
            probed.received[i] = received_attention(probs)

    if components:
        probed.block_inputs, probed.attn_outputs, probed.mlp_outputs = [None] * n, [None] * n, [None] * n

        def keep_input(i: int) -> Callable:
            def hook(module: nn.Module, args: tuple) -> None:
                probed.block_inputs[i] = args[0]

            return hook

        forward_pre += [(block, keep_input(i)) for i, block in enumerate(layout.blocks)]

        def keep_added(store: list, i: int) -> Callable:
            def hook(module: nn.Module, args: tuple, output: Tensor | tuple) -> None:
                # OPT runs its MLP on (B * T, D): back to the stream's (B, T, D)
                store[i] = block_output(output).view(probed.block_inputs[i].shape)

            return hook

        forward += [(m, keep_added(probed.attn_outputs, i)) for i, m in enumerate(layout.attn_adds)]
        forward += [(m, keep_added(probed.mlp_outputs, i)) for i, m in enumerate(layout.mlp_adds)]
    if head_mask is not None:

        def prune(mask: Tensor) -> Callable:
            def hook(module: nn.Module, args: tuple) -> tuple:
                return (mask_heads(args[0], mask), *args[1:])

            return hook

        if pruned_layers is None:
            pruned_layers = [i for i in range(n) if bool((head_mask[i] == 0).any())]
        forward_pre += [(layout.attn_out_proj[i], prune(head_mask[i])) for i in pruned_layers]
    with ExitStack() as stack:
        stack.enter_context(unpacked_windows())
        if head_scores:
            stack.enter_context(attention_probe(layout, score_heads))
        stack.enter_context(hooks(forward=forward, forward_pre=forward_pre))
        yield probed
    missing = [i for i, s in enumerate(probed.received) if s is None]
    # after a forward pass, a block without scores bypassed the registry (GPT-2's eager
    # `reorder_and_upcast_attn` path does): say so rather than report nothing for it
    if missing and probed.block_outputs[0] is not None:
        raise RuntimeError(f"blocks {missing}: attention did not go through the attention-function registry")
