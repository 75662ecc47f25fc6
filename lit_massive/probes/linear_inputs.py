"""The inputs of every linear layer of a block, reduced inside the block (activation spikes,
QFeM/QFeP arXiv 2405.14428): what the attention projections read, the input of the
attention output projection, what the MLP reads and the input of the MLP's output
projection. Per window: the largest |x| and where it is, the median |x|, and how much of x
symmetric round-to-nearest 8-bit quantization loses with one scale per window and with one
per token, the two choices a massive value decides between. Fixed shapes, no host read,
nothing of T x C kept past the hook."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

# the inputs, in the order a block reads them
KINDS = ("attn_in", "attn_out_proj_in", "mlp_in", "mlp_down_in")
# the columns of a window's record
COLUMNS = ("top", "index", "median", "int8_error_per_tensor", "int8_error_per_token")
LEVELS = 127  # symmetric 8-bit: -127..127


def rtn_error(x: Tensor, amax: Tensor) -> Tensor:
    """||x - Q(x)||^2 / ||x||^2 per window of x (B, T, C) float32, Q symmetric round-to-nearest
    8-bit with scale amax / 127 (`amax` broadcasts to x: one per window or one per token)."""
    scale = amax / LEVELS
    q = torch.where(scale > 0, torch.round(x / scale.clamp_min(1e-30)) * scale, 0.0)
    return (x - q).square().sum(dim=(1, 2)) / x.square().sum(dim=(1, 2))


def input_record(x: Tensor, batch: int) -> Tensor:
    """(B, 5) float64 record of one linear input x (B, T, C), or (B * T, C) as OPT runs its MLP:
    `COLUMNS` (the top-1's flat index is position * C + channel, exact in float64)."""
    x = x.detach().reshape(batch, -1, x.shape[-1]).float()
    a = x.abs().flatten(1)  # (B, T * C)
    top, index = a.max(dim=1)
    median = a.median(dim=1).values
    per_tensor = rtn_error(x, top[:, None, None])
    per_token = rtn_error(x, x.abs().amax(dim=-1, keepdim=True))
    return torch.stack([top, index.float(), median, per_tensor, per_token], dim=1).double()


def linear_input_hooks(
    blocks: list[nn.Module], inputs: dict[str, list[nn.Module] | None], store: dict[str, list]
) -> list[tuple[nn.Module, Callable]]:
    """Forward-pre hooks (called with kwargs) that fill `store[kind][i]` with block i's record
    of that input: the modules of `inputs[kind]` are each read by their first argument or
    their `hidden_states` keyword; a hook on every block notes the batch size first."""
    batch = [1] * len(blocks)

    def first(args: tuple, kwargs: dict) -> Tensor:
        return args[0] if args else kwargs["hidden_states"]

    def note_batch(i: int) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            batch[i] = first(args, kwargs).shape[0]

        return hook

    def record(kind: str, i: int) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            x = first(args, kwargs)
            store[kind][i] = input_record(x, x.shape[0] if x.dim() == 3 else batch[i])

        return hook

    out = [(block, note_batch(i)) for i, block in enumerate(blocks)]
    for kind, modules in inputs.items():
        if modules is not None:
            out += [(m, record(kind, i)) for i, m in enumerate(modules)]
    return out
