"""Temporary hooks: registered on entry, removed on exit, even after an exception.

Hooks are global state on the modules; one that is left behind silently changes every
later forward pass. This module is the only place that registers them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, fields, replace
from typing import Any

from torch import Tensor, nn

from lit_massive.models.families import DecoderLayout, block_output
from lit_massive.probes.attention import (
    AttentionCall,
    HeadRecord,
    attention_probe,
    head_record,
    queries_per_key,
    received_in_tiles,
    unpacked_windows,
)
from lit_massive.probes.linear_inputs import linear_input_hooks
from lit_massive.probes.mlp import DownRecord, down_hooks
from lit_massive.probes.qkv import QKVNorms, qkv_norms
from lit_massive.probes.quantize import FakeQuant
from lit_massive.probes.weights import ZeroedWeights, zeroing_hooks

Hook = tuple[nn.Module, Callable]
BlockEdit = tuple[int, Callable[[Tensor], Tensor]]  # (layer, fn): that block output becomes fn(output)
# name -> fn: in block i's hook, fn(output, i, probed) is kept (fixed-size: statistics), not the
# output; fn may read that block's records in `probed` (its sublayers, its head record, the
# earlier reducers' results), which are released once every reducer has run
Reducers = Mapping[str, Callable[[Tensor, int, "Probed"], Any]]


@contextmanager
def hooks(
    forward: Iterable[Hook] = (), forward_pre: Iterable[Hook] = (), forward_pre_kwargs: Iterable[Hook] = ()
) -> Iterator[None]:
    """Register forward and forward-pre hooks for the duration of the `with` block
    (`forward_pre_kwargs`: pre-hooks that also receive the call's keyword arguments)."""
    handles = []
    try:
        for module, fn in forward:
            handles.append(module.register_forward_hook(fn))
        for module, fn in forward_pre:
            handles.append(module.register_forward_pre_hook(fn))
        for module, fn in forward_pre_kwargs:
            handles.append(module.register_forward_pre_hook(fn, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass(frozen=True)
class Needs:
    """What an analysis reads from a forward pass beyond the reductions of each block output
    made in its hook (`Reducers`), so the probes record only what the enabled analyses use.
    Only `block_out` keeps tensors of T x D per block until the pass ends; `sublayers` and
    `head_update` keep theirs until the block's reducers have run, then release them."""

    block_out: bool = False  # every block output (B, T, D) itself (feature_view's one text)
    attention: bool = False  # per layer: what each key position receives from each head, (B, H, T)
    # the block input and what attention and the MLP add, for the block's reducers only
    sublayers: bool = False
    heads: bool = False  # per layer: each head's value norms, outputs, logit gap (`HeadRecord`)
    # with heads: each block's attention call, row log-sum-exps and head outputs too, for the
    # block's reducers only (the decomposition by the massive tokens the block reads)
    head_update: bool = False
    mlp_down: bool = False  # per layer: the MLP output projection's largest input and output (`DownRecord`)
    # per layer and linear input (`probes.linear_inputs.KINDS`): its (B, 5) record
    linear_inputs: bool = False
    # with attention: per layer, the norm over the window's tokens of each dim of q, k, v (`QKVNorms`)
    qkv_dims: bool = False

    def __or__(self, other: Needs) -> Needs:
        return Needs(**{f.name: getattr(self, f.name) or getattr(other, f.name) for f in fields(self)})


@dataclass
class Probed:
    """What one forward pass under `probes` recorded, per layer. With every sublayer:
    resid_in + attn + mlp = block_out (seen by the block's reducers: `release`)."""

    block_out: list[Tensor | None]  # with Needs.block_out, (B, T, D): the residual stream leaving the block
    # per reducer name, per layer: what it made of that block output, inside the block's hook
    reduced: dict[str, list[Any]] = field(default_factory=dict)
    blocks_run: int = 0  # block outputs seen (0: no forward pass ran under the probes)
    # with Needs.attention, (B, H, T) each: what each key position receives, mean over
    # queries (column 0: the first-token score)
    received: list[Tensor | None] = field(default_factory=list)
    # with Needs.attention, (B or 1, 1 or H, T) each: how many queries may attend to each key
    attended: list[Tensor | None] = field(default_factory=list)
    # with Needs.sublayers, (B, T, D) each, None again once the block's reducers have run
    resid_in: list[Tensor | None] = field(default_factory=list)
    attn: list[Tensor | None] = field(default_factory=list)
    mlp: list[Tensor | None] = field(default_factory=list)
    heads: list[HeadRecord | None] = field(default_factory=list)  # with Needs.heads
    mlp_down: list[DownRecord | None] = field(default_factory=list)  # with Needs.mlp_down
    qkv: list[QKVNorms | None] = field(default_factory=list)  # with Needs.qkv_dims
    # with Needs.linear_inputs: kind -> per layer, (B, 5) records (`probes.linear_inputs`)
    linear_inputs: dict[str, list[Tensor | None]] = field(default_factory=dict)

    def release(self, i: int) -> None:
        """Drop block i's tensors of T x D that only its reducers read (its sublayers, its
        head record's call, log-sum-exps and outputs), so memory stays flat in depth."""
        for kept in (self.resid_in, self.attn, self.mlp):
            if kept:
                kept[i] = None
        if self.heads and self.heads[i] is not None and self.heads[i].call is not None:
            self.heads[i] = replace(self.heads[i], call=None, lse=None, output=None)


def mask_heads(x: Tensor, mask: Tensor) -> Tensor:
    """Multiply each head's slice of the concatenated head outputs x (B, T, H * hd) by
    mask (H,): a 0 prunes that head before the output projection."""
    shape = x.shape
    return (x.view(*shape[:-1], mask.numel(), -1) * mask.to(x.dtype)[:, None]).view(shape)


def _edited(fn: Callable[[Tensor], Tensor]) -> Callable:
    """A forward hook that replaces a block's output by fn(output)."""

    def hook(module: nn.Module, args: tuple, output: Tensor | tuple) -> Tensor | tuple:
        x = block_output(output)
        return (fn(x), *output[1:]) if isinstance(output, tuple) else fn(x)

    return hook


def _block_hook(probed: Probed, i: int, keep: bool, reducers: Reducers) -> Callable:
    """Block i's output hook: each reducer's result (fixed-size), and the output only if `keep`,
    so nothing of size T x D outlives the block unless an analysis asks for it."""

    def hook(module: nn.Module, args: tuple, output: Tensor | tuple) -> None:
        x = block_output(output)
        for name, fn in reducers.items():  # in order: a reducer may read the earlier ones' results
            probed.reduced[name][i] = fn(x, i, probed)
        probed.release(i)
        if keep:
            probed.block_out[i] = x
        probed.blocks_run += 1

    return hook


def _sublayer_hooks(layout: DecoderLayout, probed: Probed) -> tuple[list[Hook], list[Hook]]:
    """(forward, forward_pre) hooks that keep each block's input and what its attention and
    MLP add to the residual stream."""
    n = layout.n_layer
    probed.resid_in, probed.attn, probed.mlp = [None] * n, [None] * n, [None] * n

    def keep_input(i: int) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            probed.resid_in[i] = args[0]

        return hook

    def keep_added(store: list, i: int) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Tensor | tuple) -> None:
            # OPT runs its MLP on (B * T, D): back to the stream's (B, T, D)
            store[i] = block_output(output).view(probed.resid_in[i].shape)

        return hook

    forward = [(m, keep_added(probed.attn, i)) for i, m in enumerate(layout.attn_out)]
    forward += [(m, keep_added(probed.mlp, i)) for i, m in enumerate(layout.mlp_out)]
    return forward, [(block, keep_input(i)) for i, block in enumerate(layout.blocks)]


@contextmanager
def probes(
    layout: DecoderLayout,
    needs: Needs = Needs(),
    head_mask: Tensor | None = None,
    pruned_layers: Iterable[int] | None = None,
    edits: Iterable[BlockEdit] = (),
    attention_tile: int | None = None,
    zeroed: Iterable[ZeroedWeights] = (),
    reducers: Reducers | None = None,
    qk_keep: dict[int, tuple[Tensor, Tensor]] | None = None,
    quantize: FakeQuant | None = None,
) -> Iterator[Probed]:
    """Everything one measured forward pass needs, registered together and removed together.

    * with `reducers`, each block output reduced inside the block's hook (`probed.reduced`),
      where the reducers also see that block's sublayers and head record; with
      `needs.block_out`, the block outputs themselves;
    * with `needs.attention`, the attention each key position receives from each head (mean
      over queries; its first column is the first-token score), computed inside the model's
      attention function (`attention_probe`) so no (B, H, T, T) map outlives its layer, in
      tiles of `attention_tile` query rows (None: one tile), so at most (B, H, tile, T)
      scores exist at once;
    * with `needs.heads`, each block's `HeadRecord` too (value norms, head outputs, the
      first-token logit gap; with `needs.head_update`, what a decomposition by the massive
      tokens needs, until the block's reducers have run);
    * with `needs.qkv_dims` (and `needs.attention`), each block's `QKVNorms`: the norm of
      each dim of q, k and v over the window's tokens;
    * with `needs.sublayers`, each block's input and what its attention and MLP add to the
      residual stream (block output = input + attention + MLP), until the block's reducers
      have run;
    * with `needs.mlp_down`, each block's `DownRecord`: where the MLP output projection's
      input and output are largest, and the weight joining them (super weights);
    * with `head_mask` (L, H), a pre-hook on each attention output projection that zeroes
      the pruned heads' outputs (only layers with a pruned head get one: `pruned_layers`,
      which callers on a GPU pass from a host copy, else read from the mask);
    * with `edits`, each `(i, fn)` replaces layer i's block output by fn(output) before
      anything downstream (or the probes) sees it;
    * with `zeroed`, those weights of the MLP output projections are 0 while each runs and
      restored after it (`probes.weights`), also when the pass stops in between;
    * with `needs.linear_inputs`, each block's record of every linear layer's input
      (`probes.linear_inputs`: largest and median |x|, 8-bit rounding errors);
    * with `quantize`, a variant's fake quantization (`probes.quantize.FakeQuant`): linear
      inputs and weights of its blocks rounded, the weights put back after each module runs;
    * with `qk_keep` (layer -> (H, hd) and (H_kv, hd) masks), those blocks' queries and keys
      are multiplied by them inside the attention call, before anything sees them.
    """
    n = layout.n_layer
    reducers = dict(reducers or {})
    probed = Probed([None] * n, {name: [None] * n for name in reducers})
    # the edits first, so the probes see the edited outputs
    forward, forward_pre = [(layout.blocks[layer], _edited(fn)) for layer, fn in edits], []
    forward += [(block, _block_hook(probed, i, needs.block_out, reducers)) for i, block in enumerate(layout.blocks)]
    attention = needs.attention or needs.heads
    if attention:
        probed.received = [None] * n
        probed.attended = [None] * n
        if needs.heads:
            probed.heads = [None] * n
        if needs.qkv_dims:
            probed.qkv = [None] * n

        def score_heads(i: int, call: AttentionCall) -> None:
            if needs.heads:  # the same score tiles give the head scores and everything else
                probed.heads[i] = record = head_record(call, attention_tile, keep_call=needs.head_update)
                probed.received[i] = record.received
            else:
                probed.received[i] = received_in_tiles(call, attention_tile)
            probed.attended[i] = queries_per_key(call, attention_tile)
            if needs.qkv_dims:
                probed.qkv[i] = qkv_norms(call)

    if needs.mlp_down:  # the layout has them: the analysis refuses a model without
        probed.mlp_down = [None] * n
        more_forward, more_pre = down_hooks(layout.mlp_down, layout.blocks, probed.mlp_down)
        forward += more_forward
        forward_pre += more_pre
    if needs.sublayers:
        more_forward, more_pre = _sublayer_hooks(layout, probed)
        forward += more_forward
        forward_pre += more_pre
    if head_mask is not None:

        def prune(mask: Tensor) -> Callable:
            def hook(module: nn.Module, args: tuple) -> tuple:
                return (mask_heads(args[0], mask), *args[1:])

            return hook

        if pruned_layers is None:
            pruned_layers = [i for i in range(n) if bool((head_mask[i] == 0).any())]
        forward_pre += [(layout.attn_out_proj[i], prune(head_mask[i])) for i in pruned_layers]
    pre_kwargs, rounding_back = [], []
    inputs = {"attn_in": layout.attn, "attn_out_proj_in": layout.attn_out_proj, "mlp_in": layout.mlp_in,
              "mlp_down_in": layout.mlp_down}  # fmt: skip
    if quantize is not None:  # after the pruning hooks, before the input probes: they see what each layer runs on
        rounding_back, pre_kwargs = quantize.hooks(layout.blocks, inputs, layout.mlp_down)
    if needs.linear_inputs:
        probed.linear_inputs = {kind: [None] * n for kind in inputs}
        pre_kwargs = pre_kwargs + linear_input_hooks(layout.blocks, inputs, probed.linear_inputs)
    zeroings, more_forward, more_pre = zeroing_hooks(layout.mlp_down, list(zeroed))
    forward += more_forward + rounding_back  # last: the probes of a projection see the weights it ran with
    forward_pre += more_pre
    with ExitStack() as stack:
        for zeroing in zeroings:
            stack.callback(zeroing.restore)
        if quantize is not None:
            stack.callback(quantize.restore)
        stack.enter_context(unpacked_windows())
        if attention or qk_keep:
            stack.enter_context(attention_probe(layout, score_heads if attention else None, qk_keep))
        stack.enter_context(hooks(forward=forward, forward_pre=forward_pre, forward_pre_kwargs=pre_kwargs))
        yield probed
    missing = [i for i, s in enumerate(probed.received) if s is None]
    # after a forward pass, a layer without scores bypassed the registry (GPT-2's eager
    # `reorder_and_upcast_attn` path does): say so rather than report nothing for it
    if missing and probed.blocks_run:
        raise RuntimeError(f"layers {missing}: attention did not go through the attention-function registry")
