"""Memory flat in depth: during a measured pass, nothing of size T x D per block outlives its
block (the statistics are reduced inside each block's hook), with every feature on except the
two documented to keep per-block tensors (the massive tokens' value update, part of
`head_internals`, and `components`). The probe: at each block's hook, the live tensors of at
least T x D elements that are not the model's own, found through the garbage collector."""

import gc
import json
from contextlib import contextmanager

import pytest
import torch

from helpers import DEMO, run_validate
from lit_massive import module as module_code
from lit_massive.probes import hooks

SEQ, BATCH = 128, 2
TOY_WIDTH = 96  # the toy's hidden size (D)


def _big_live_tensors(exclude: set[int], size: int) -> int:
    """How many tensors of at least `size` elements are alive, not counting `exclude` (ids)."""
    tensors = (obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor))
    return sum(1 for t in tensors if id(t) not in exclude and t.numel() >= size)


def _live_by_block(monkeypatch, tmp_path, *args: str) -> dict[int, list[int]]:
    """Per block, the big live tensors seen at its hook in every measured pass of a toy run."""
    seen: dict[int, list[int]] = {}
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


def test_nothing_of_t_by_d_per_block_outlives_its_block(monkeypatch, tmp_path):
    variants = {"cut": [[5, 1]], "zero": {"set_massive": {"layer": "all", "to": "zero"}},
                "weights": {"zero_weights": "super"}}  # fmt: skip
    seen = _live_by_block(
        monkeypatch, tmp_path,
        "--model.head_scores", "true", "--model.head_internals", "false",
        "--model.outlier_stats", "true", "--model.super_weights", "true",
        "--model.variants", json.dumps(variants),
    )  # fmt: skip
    first, last = seen[0], seen[max(seen)]
    assert len(first) == len(last) > 0
    # as many big tensors at the last of the 12 blocks as at the first: none is kept per block
    assert last == first


@pytest.mark.parametrize("option", ["head_internals", "components"])
def test_the_documented_exceptions_keep_tensors_per_block(monkeypatch, tmp_path, option):
    """The probe sees what the two exceptions keep: more big tensors at each later block."""
    extra = ["--model.head_scores", "true"] if option == "head_internals" else ["--model.components", "true"]
    seen = _live_by_block(monkeypatch, tmp_path, *extra)
    first, last = seen[0], seen[max(seen)]
    assert all(b > a for a, b in zip(first, last, strict=True))
