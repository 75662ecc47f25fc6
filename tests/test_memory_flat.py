"""Memory flat in depth: during a measured pass, nothing of size T x D per block outlives its
block, with every feature on: the statistics are reduced inside each block's hook, and what
the attention internals and the components read there (the block's attention record and
sublayers) is released when the hook is done. The probe: at each block's hook, the live
tensors of at least T x D elements that are not the model's own, found through the garbage
collector."""

import gc
import json
from contextlib import contextmanager

import pytest
import torch

from helpers import DEMO, run_validate
from lit_massive import module as module_code
from lit_massive.probes import Probed, hooks

SEQ, BATCH = 128, 2
TOY_WIDTH, TOY_HEADS = 96, 12  # the toy's hidden size (D) and heads (H)
LARGEST: list[int] = []  # the largest live tensor (elements) at each block's hook, of the last run


def _big_live_tensors(exclude: set[int], size: int) -> int:
    """How many tensors of at least `size` elements are alive, not counting `exclude` (ids);
    the largest of them goes to `LARGEST`."""
    tensors = (obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor))
    sizes = [t.numel() for t in tensors if id(t) not in exclude and t.numel() >= size]
    LARGEST.append(max(sizes, default=0))
    return len(sizes)


def _live_by_block(monkeypatch, tmp_path, *args: str) -> dict[int, list[int]]:
    """Per block, the big live tensors seen at its hook in every measured pass of a toy run."""
    seen: dict[int, list[int]] = {}
    LARGEST.clear()
    real = module_code.probes

    @contextmanager
    def probed_and_counted(layout, *a, **k):
        own = {id(t) for t in [*layout.backbone.parameters(), *layout.backbone.buffers()]}

        def count(i):
            def hook(module, inputs, output):
                seen.setdefault(i, []).append(_big_live_tensors(own, SEQ * TOY_WIDTH * BATCH))

            return hook

        # registered after the probes' own hooks: counted once the block's reducers have run
        with real(layout, *a, **k) as probed, hooks(forward=[(b, count(i)) for i, b in enumerate(layout.blocks)]):
            yield probed

    monkeypatch.setattr(module_code, "probes", probed_and_counted)
    run_validate(tmp_path, "--config", DEMO, "--data.num_sequences", str(BATCH), "--data.batch_size", str(BATCH), *args)
    return seen


EVERY_FEATURE = (
    "--model.analyses.head_scores.enabled",
    "true",
    "--model.analyses.head_internals.enabled",
    "true",
    "--model.analyses.components.enabled",
    "true",
    "--model.analyses.outlier_stats.enabled",
    "true",
    "--model.analyses.super_weights.enabled",
    "true",
)


@pytest.mark.slow  # in the full suite only: keeps the fast loop under 5 minutes
def test_nothing_of_t_by_d_per_block_outlives_its_block(monkeypatch, tmp_path):
    variants = {
        "cut": [[5, 1]],
        "zero": {"set_massive": {"layer": "all", "to": "zero"}},
        "weights": {"zero_weights": "super"},
    }
    seen = _live_by_block(monkeypatch, tmp_path, *EVERY_FEATURE, "--model.variants", json.dumps(variants))
    first, last = seen[0], seen[max(seen)]
    assert len(first) == len(last) == 5  # the first pass (super weights), then 4 variants
    # as many big tensors at the last of the 12 blocks as at the first: none is kept per block
    assert last == first
    # and no (B, H, T, T) attention map is alive at any block's hook: scores live in their tile
    assert 0 < max(LARGEST) < BATCH * TOY_HEADS * SEQ * SEQ


@pytest.mark.slow  # in the full suite only: keeps the fast loop under 5 minutes
def test_the_probe_sees_records_that_are_not_released(monkeypatch, tmp_path):
    """Without `Probed.release`, each block's sublayers and attention record stay alive: the
    probe counts more big tensors at every later block."""
    monkeypatch.setattr(Probed, "release", lambda self, i: None)
    seen = _live_by_block(monkeypatch, tmp_path, *EVERY_FEATURE)
    first, last = seen[0], seen[max(seen)]
    assert all(b > a for a, b in zip(first, last, strict=True))
