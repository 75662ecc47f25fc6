"""Fake quantization for one forward pass: the inputs of every linear layer of the chosen
blocks rounded (symmetric round-to-nearest, one scale per window or per token), their weights
rounded (one scale per output channel or per group of input columns) and restored after
each module runs, so no copy of the model is made and an FSDP2 layer's shards are never
touched (it is whole while it runs). What massive activations cost a quantizer, measured on
the same batches as the baseline (QFeM/QFeP arXiv 2405.14428, CushionCache 2406.12016,
PrefixQuant 2410.05265; Yu et al. 2411.07191 for the super weights). Fixed shapes, no host
read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

Hook = tuple[nn.Module, Callable]
INPUTS = ("attn_in", "attn_out_proj_in", "mlp_in", "mlp_down_in")  # `probes.linear_inputs.KINDS`
# rows of `FakeQuant.stats` (L columns): windows seen, tokens kept, then each input's scale sum
WINDOWS, KEPT, SCALES = 0, 1, 2


def levels(bits: int) -> int:
    """The largest integer of symmetric `bits`-bit rounding: -levels..levels."""
    return 2 ** (bits - 1) - 1


def round_to_nearest(x: Tensor, scale: Tensor, top: int) -> Tensor:
    """x rounded to the nearest multiple of `scale` (broadcast), within -top..top steps; 0
    where the scale is 0 (an all-zero group)."""
    steps = torch.round(x / scale.clamp_min(torch.finfo(torch.float32).tiny)).clamp_(-top, top)
    return torch.where(scale > 0, steps * scale, 0.0)


def quantize_activation(x: Tensor, bits: int, per: str, keep: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """x (B, T, C) fake-quantized in float32, back in its dtype, and each window's scale (B,)
    (per token: the mean over the tokens rounded). `keep` (B, T) bool: tokens left exact and
    out of the scale."""
    top, xf = levels(bits), x.float()
    a = xf.abs() if keep is None else xf.abs().masked_fill(keep[..., None], 0.0)
    amax = a.amax(dim=(1, 2), keepdim=True) if per == "tensor" else a.amax(dim=-1, keepdim=True)
    scale = amax / top
    q = round_to_nearest(xf, scale, top)
    if keep is not None:
        q = torch.where(keep[..., None], xf, q)
    if per == "tensor":
        window_scale = scale.flatten()
    else:
        rounded = torch.ones_like(scale[..., 0]) if keep is None else (~keep).float()  # (B, T)
        window_scale = (scale[..., 0] * rounded).sum(1) / rounded.sum(1).clamp_min(1)
    return q.to(x.dtype), window_scale


def quantize_weight(w: Tensor, bits: int, group: int | str, keep: Tensor | None = None) -> Tensor:
    """W (out, in) fake-quantized in float32: one scale per output channel (`group`
    ``channel``) or per group of `group` input columns (the last group may be shorter);
    `keep` (out, in) bool: entries left exact and out of their group's scale."""
    top, wf = levels(bits), w.float()
    a = wf.abs() if keep is None else wf.abs().masked_fill(keep, 0.0)
    if group == "channel":
        q = round_to_nearest(wf, a.amax(dim=1, keepdim=True) / top, top)
    else:
        out, cols = wf.shape
        pad = (-cols) % group
        padded = torch.nn.functional.pad(a, (0, pad)).view(out, -1, group)
        scale = (padded.amax(dim=-1, keepdim=True) / top).expand(-1, -1, group).reshape(out, -1)[:, :cols]
        q = round_to_nearest(wf, scale, top)
    return q if keep is None else torch.where(keep, wf, q)


def _linear_weight(module: nn.Module) -> Tensor | None:
    """A linear layer's weight as (out, in): nn.Linear's own, GPT-2's Conv1D's (in, out)
    transposed (a view); None for any other module."""
    if isinstance(module, nn.Linear):
        return module.weight
    if type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None:
        return module.weight.t()
    return None


@dataclass
class FakeQuant:
    """One variant's fake quantization: blocks `layers`; activations with `act_bits` (None:
    off) per `act_per`; weights with `weight_bits` (None: off) per `weight_group`;
    `massive_tokens` (block input (B, T, D) -> (B, T) bool) for ``keep: massive_tokens``;
    `kept_weights` layer -> (rows, cols) of the MLP output projection kept exact. `stats`
    (2 + 4, L) float64 sums over passes (`WINDOWS`, `KEPT`, `SCALES`) and `weight_error`
    (2, L): ||W - Q(W)||^2 and ||W||^2 over the block's linear weights, written by each pass."""

    layers: list[int]
    act_bits: int | None = None
    act_per: str = "tensor"
    weight_bits: int | None = None
    weight_group: int | str = "channel"
    massive_tokens: Callable[[Tensor], Tensor] | None = None
    kept_weights: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)
    stats: Tensor | None = None
    weight_error: Tensor | None = None
    held: list[list] = field(default_factory=list)  # per weight hook: what it must put back
    rounded_inputs: set[str] = field(default_factory=set)  # the inputs the model has (`INPUTS`)

    def hooks(
        self, blocks: list[nn.Module], inputs: dict[str, list[nn.Module] | None], mlp_down: list[nn.Module] | None
    ) -> tuple[list[Hook], list[Hook]]:
        """(forward hooks, forward-pre hooks with kwargs) for `probes()`: the block's pre-hook
        notes its batch size and kept tokens, each input's pre-hook rounds it, each linear
        weight's pre-hook rounds it and its forward hook puts it back."""
        forward, pre = [], []
        self.held.clear()
        state: dict[int, tuple[int, Tensor | None]] = {}
        for i in self.layers:
            pre.append((blocks[i], self._note(i, state)))
            if self.act_bits is not None:
                for k, kind in enumerate(INPUTS):
                    modules = inputs.get(kind)
                    if modules is not None:
                        self.rounded_inputs.add(kind)
                        pre.append((modules[i], self._round_input(i, k, state)))
            if self.weight_bits is not None:
                down = None if mlp_down is None else mlp_down[i]
                for module in blocks[i].modules():
                    if _linear_weight(module) is not None:
                        keep = self.kept_weights.get(i) if module is down else None
                        held: list = []
                        self.held.append(held)
                        pre.append((module, self._round_weight(i, keep, held)))
                        forward.append((module, self._restore(held)))
        return forward, pre

    def _note(self, i: int, state: dict) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            x = args[0] if args else kwargs["hidden_states"]
            keep = self.massive_tokens(x) if self.massive_tokens is not None and i > 0 else None
            state[i] = (x.shape[0], keep)
            self.stats[WINDOWS, i] += x.shape[0]
            if keep is not None:
                self.stats[KEPT, i] += keep.sum()

        return hook

    def _round_input(self, i: int, k: int, state: dict) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            batch, keep = state[i]
            x = args[0] if args else kwargs["hidden_states"]
            q, scale = quantize_activation(x.reshape(batch, -1, x.shape[-1]), self.act_bits, self.act_per, keep)
            self.stats[SCALES + k, i] += scale.sum(dtype=torch.float64)
            q = q.view(x.shape)
            return ((q, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": q})

        return hook

    def _round_weight(self, i: int, keep: tuple[Tensor, Tensor] | None, held: list) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            w = _linear_weight(module)
            mask = None
            if keep is not None:
                mask = torch.zeros(w.shape, dtype=torch.bool, device=w.device)
                mask[keep] = True
            with torch.no_grad():
                original = w.detach().clone()
                q = quantize_weight(original, self.weight_bits, self.weight_group, mask)
                self.weight_error[0, i] += (q - original.float()).square().sum(dtype=torch.float64)
                self.weight_error[1, i] += original.float().square().sum(dtype=torch.float64)
                w.copy_(q.to(w.dtype))
            held.append((w, original))

        return hook

    @staticmethod
    def _restore(held: list) -> Callable:
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            while held:
                w, original = held.pop()
                if w.untyped_storage().size():  # an FSDP2 layer frees its gathered weight after the pass
                    with torch.no_grad():
                        w.copy_(original)

        return hook

    def restore(self) -> None:
        """Put back every weight still rounded (a pass stopped in between)."""
        for held in self.held:
            self._restore(held)(None, (), None)
        self.held.clear()
