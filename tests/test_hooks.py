"""Probes exist only inside the `with` block, also after an exception."""

import pytest
import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from lit_massive.models.families import decoder_layout
from lit_massive.models.toy import build_toy_model
from lit_massive.probes import Needs, probes


def _count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_probes_are_removed_on_exit_and_on_error():
    model = build_toy_model()
    layout = decoder_layout(model)
    mask = torch.ones(layout.n_layer, layout.n_head)
    mask[2, 7] = mask[5, 1] = 0.0
    ids = torch.arange(10)[None]
    with probes(layout, Needs(block_out=True, attention=True), head_mask=mask) as probed:
        # one per block output, one per block with a pruned head; head scores wrap the
        # model's attention function instead
        assert _count(model) == layout.n_layer + 2
        assert layout.attn_implementation in ALL_ATTENTION_FUNCTIONS._local_mapping
        with torch.no_grad():
            layout.backbone(input_ids=ids)
    assert _count(model) == 0
    assert layout.attn_implementation not in ALL_ATTENTION_FUNCTIONS._local_mapping
    assert all(x.shape == (1, 10, layout.n_embd) for x in probed.block_out)
    assert all(r.shape == (1, layout.n_head, 10) for r in probed.received)
    # each query's attention sums to 1, so what the keys receive sums to 1 per head
    assert all(torch.allclose(r.sum(-1), torch.ones(1, layout.n_head)) for r in probed.received)
    with pytest.raises(RuntimeError, match="boom"), probes(layout, Needs(attention=True), head_mask=mask):
        assert _count(model) == layout.n_layer + 2
        raise RuntimeError("boom")
    assert _count(model) == 0
    assert layout.attn_implementation not in ALL_ATTENTION_FUNCTIONS._local_mapping
