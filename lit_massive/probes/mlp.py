"""The MLP output projection's probe (super weights, Yu et al., arXiv 2411.07191): per block,
where its input and its output are largest, and the weight that joins the two.

A super weight W[j, i] of the down projection turns a spike of its input at channel i into
a massive activation of its output at channel j, in one forward pass. The hook reduces the
projection's input (B, T, I) and output (B, T, D) to a few numbers per window inside the
block, so nothing of size T x I outlives it, and reads W[j, i] from the weight the module
holds while it runs (also an FSDP2 layer's, which is whole only then), on the device: fixed
shapes, no value read back to the host.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

Hook = tuple[nn.Module, Callable]


@dataclass
class DownRecord:
    """One block's MLP output projection in one forward pass, (B,) per window. Positions
    and channels index (T, I) for the input and (T, D) for the output."""

    in_value: Tensor  # signed input entry with the largest |value|, float32
    in_channel: Tensor  # int64
    in_position: Tensor  # int64
    out_value: Tensor  # signed output entry with the largest |value|, float32
    out_channel: Tensor  # j
    out_position: Tensor  # p
    col: Tensor  # i: the input channel with the largest |value| at position p (what output (p, j) is made of)
    col_value: Tensor  # the input value at (p, i)
    weight: Tensor  # W[j, i] as the module used it (GPT-2's Conv1D stores it at weight[i, j]), float32


def _largest(flat: Tensor, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """(signed value in float32, channel, position) of the largest |value| of each window of
    `flat` (B, T * C), C = `width`; |values| in the model's dtype (exact), no float32 copy."""
    index = flat.abs().argmax(dim=1)
    value = flat.gather(1, index[:, None]).squeeze(1).float()
    return value, index % width, torch.div(index, width, rounding_mode="floor")


def down_record(module: nn.Module, x: Tensor, y: Tensor, batch: int) -> DownRecord:
    """The record of one call of the output projection `module`: input x (B, T, I) and output
    y (B, T, D), or (B * T, .) as OPT runs its MLP; `batch` is B. One |.| and argmax over the
    input and one over the output, no sort: whether that output is massive is judged against
    the block output's median, which every run computes anyway (`BlockStats.median`)."""
    width_in, width_out = x.shape[-1], y.shape[-1]
    x = x.detach().reshape(batch, -1, width_in)
    in_value, in_channel, in_position = _largest(x.flatten(1), width_in)
    out_value, out_channel, out_position = _largest(y.detach().reshape(batch, -1), width_out)
    # the input row that output position p is computed from: (B, I)
    at = x.gather(1, out_position[:, None, None].expand(-1, 1, width_in)).squeeze(1)
    col_value, col, _ = _largest(at, width_in)
    weight = module.weight.detach()
    # nn.Linear holds (out, in); GPT-2's Conv1D (in, out)
    value = weight[out_channel, col] if isinstance(module, nn.Linear) else weight[col, out_channel]
    return DownRecord(
        in_value=in_value,
        in_channel=in_channel,
        in_position=in_position,
        out_value=out_value,
        out_channel=out_channel,
        out_position=out_position,
        col=col,
        col_value=col_value,
        weight=value.float(),
    )


def down_hooks(mlp_down: list[nn.Module], blocks: list[nn.Module], store: list) -> tuple[list[Hook], list[Hook]]:
    """(forward, forward_pre) hooks that fill `store[i]` with block i's `DownRecord`; the
    pre-hook on each block notes the batch size (OPT's MLP sees (B * T, D), not (B, T, D))."""
    batch = [1] * len(blocks)

    def note_batch(i: int) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            if args:  # every supported family passes the hidden states positionally
                batch[i] = args[0].shape[0]

        return hook

    def record(i: int) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            x = args[0]
            store[i] = down_record(module, x, output, x.shape[0] if x.dim() == 3 else batch[i])

        return hook

    forward = [(m, record(i)) for i, m in enumerate(mlp_down)]
    return forward, [(block, note_batch(i)) for i, block in enumerate(blocks)]
