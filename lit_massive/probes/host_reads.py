"""Which aten ops of a piece of code read a device value back to the host.

On a GPU each such op (`.item()`, `bool(tensor)`, `nonzero`, boolean-mask indexing, ...)
waits for everything queued before it. The recorder works on any device, so a CPU test
proves the measured step free of them; the benchmark reports their count per step.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# reads a value on the host, or makes an output whose shape depends on the data
HOST_READS = frozenset({"_local_scalar_dense", "is_nonzero", "item", "nonzero", "masked_select", "bincount"})
BOOLEAN_INDEX = "boolean-mask index"
_INDEXING = ("index", "index_put", "index_put_")


class HostReads(TorchDispatchMode):
    """Records the name of every aten op run inside the `with` block; `found` lists those
    that read device values on the host."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in _INDEXING and len(args) > 1 and isinstance(args[1], list | tuple):
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1]):
                name = BOOLEAN_INDEX
        self.ops.append(name)
        return func(*args, **(kwargs or {}))

    @property
    def found(self) -> list[str]:
        return [op for op in self.ops if op in HOST_READS or op.startswith("unique") or op == BOOLEAN_INDEX]
