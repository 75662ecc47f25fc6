"""Hooks exist only inside the `with` block, also after an exception."""

import pytest
import torch
from torch import nn

from lit_massive.hooks import capture_block_outputs, hooks


def _count(modules):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in modules)


def test_hooks_removed_on_exit_and_on_error():
    blocks = [nn.Linear(4, 4) for _ in range(3)]
    with capture_block_outputs(blocks) as outputs:
        assert _count(blocks) == 3
        with hooks(forward_pre=[(blocks[0], lambda m, a: None)]):
            assert _count(blocks) == 4
        assert _count(blocks) == 3
        x = torch.randn(2, 4)
        for b in blocks:
            x = b(x)
    assert _count(blocks) == 0
    torch.testing.assert_close(outputs[-1], x)
    with pytest.raises(RuntimeError), capture_block_outputs(blocks):
        assert _count(blocks) == 3
        raise RuntimeError("boom")
    assert _count(blocks) == 0


def test_tuple_outputs_are_unwrapped():
    class TupleBlock(nn.Module):
        def forward(self, x):
            return (x * 2, "cache")

    block = TupleBlock()
    with capture_block_outputs([block]) as outputs:
        block(torch.ones(1, 2))
    torch.testing.assert_close(outputs[0], torch.full((1, 2), 2.0))
