"""LayerProfile against a direct computation written another way (`reference_profile`)."""

import numpy as np
import pytest
import torch

from helpers import reference_profile
from lit_massive.analyses.layer_profile import LayerProfile
from lit_massive.probes.block_stats import block_stats


def _blocks(n_layer=3, batch=5, seq=7, dim=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    blocks = [torch.randn(batch, seq, dim, generator=g) * (i + 1) for i in range(n_layer)]
    blocks[1][2, 3, 4] = 500.0  # one massive value in one sequence
    ids = torch.randint(0, 11, (batch, seq), generator=g)
    return blocks, ids


def _metric(k=3):
    return LayerProfile(n_layer=3, n_embd=6, n_positions=7, vocab_size=11, k=k)


def _stats(blocks, k=3):
    """Each block output's statistics, with the criterion 100 and 50x the median."""
    return [block_stats(b, k=k, candidates=16, threshold=100.0, ratio=50.0) for b in blocks]


@pytest.mark.parametrize("k", [1, 3])
def test_profile_matches_direct_computation(k):
    blocks, ids = _blocks()
    metric = _metric(k)
    metric.update(_stats(blocks, k), ids)
    got = metric.compute()
    for i, ref in enumerate(reference_profile(blocks, ids, k, 100.0, 50.0)):
        np.testing.assert_allclose(got["top"][i].numpy(), ref["top"], rtol=1e-6)
        np.testing.assert_allclose(got["median"][i].item(), ref["median"], rtol=1e-6)
        assert got["massive_fraction"][i].item() == pytest.approx(ref["massive_fraction"])
        for key, refs in (
            ("top1_dim_count", ref["dims"]),
            ("top1_position_count", ref["positions"]),
            ("top1_token_count", ref["tokens"]),
        ):
            expected = np.bincount(refs, minlength=got[key].shape[1])
            np.testing.assert_array_equal(got[key][i].numpy(), expected)
    assert got["massive_fraction"].tolist() == [0.0, 0.2, 0.0]
    assert int(got["count"]) == 5


def test_merged_halves_equal_one_pass():
    blocks, ids = _blocks(batch=6)
    whole, first, second = _metric(), _metric(), _metric()
    whole.update(_stats(blocks), ids)
    first.update(_stats([b[:2] for b in blocks]), ids[:2])
    second.update(_stats([b[2:] for b in blocks]), ids[2:])
    first.merge_state(second)
    merged, expected = first.compute(), whole.compute()
    for key in expected:
        torch.testing.assert_close(merged[key], expected[key], rtol=0, atol=0)


def test_half_precision_input_gives_float32_statistics():
    blocks, ids = _blocks()
    metric = _metric()
    metric.update(_stats([b.half() for b in blocks]), ids)
    got = metric.compute()
    assert got["top"].dtype == torch.float64
    ref = reference_profile([b.half().float() for b in blocks], ids, 3, 100.0, 50.0)
    np.testing.assert_allclose(got["median"].numpy(), [r["median"] for r in ref], rtol=1e-6)
