"""Locator and components on the toy model's planted truth."""

import pytest
import torch

from helpers import run_validate, toy_run_args
from lit_massive.models.families import decoder_layout
from lit_massive.models.toy import ToyConfig, build_toy_model
from lit_massive.probes import Needs, probes

TRUTH = ToyConfig()


def test_locator_finds_the_planted_entry_from_the_planted_block_on(massive_run):
    _, results = massive_run
    found = results["variants"]["baseline"]["massive"]
    at_planted = [(e["layer"], e["fraction"]) for e in found if (e["dim"], e["position"]) == (17, 0)]
    assert at_planted == [(layer, 1.0) for layer in range(TRUTH.massive_layer, TRUTH.n_layer)]
    assert all(e["layer"] >= TRUTH.massive_layer for e in found)
    planted = next(e for e in found if (e["layer"], e["dim"], e["position"]) == (TRUTH.massive_layer, 17, 0))
    assert 0.5 * TRUTH.massive_value < planted["value"] < 1.5 * TRUTH.massive_value
    # the only massive entry: the writer head's values (dim 40, every position, from block 8
    # on) are below the threshold, so no other dim or position is located
    assert {(e["dim"], e["position"]) for e in found} == {(TRUTH.massive_dim, TRUTH.massive_position)}


def test_components_attribute_it_to_the_planted_mlp_and_add_up(massive_run):
    _, results = massive_run
    baseline = results["variants"]["baseline"]
    entries = {e["layer"]: e for e in baseline["components"] if (e["dim"], e["position"]) == (17, 0)}
    # followed from the block that writes it (massive out, not in) to the last, which it leaves massive
    assert sorted(entries) == list(range(TRUTH.massive_layer, TRUTH.n_layer))
    creator = entries[TRUTH.massive_layer]
    total = creator["resid_in"] + creator["attn"] + creator["mlp"]
    assert creator["mlp"] > 0.95 * total
    later = entries[TRUTH.massive_layer + 1]
    assert later["resid_in"] > 0.95 * total  # maintained by the residual stream
    located = {e["layer"]: e["value"] for e in baseline["massive"] if (e["dim"], e["position"]) == (17, 0)}
    for layer, value in located.items():  # massive in every window, so both average the same windows
        e = entries[layer]
        assert e["resid_in"] + e["attn"] + e["mlp"] == pytest.approx(value, rel=1e-5)


def test_components_add_up_to_the_hooked_block_output():
    """In each block's hook, its input plus what attention and the MLP add is its output; the
    input is the previous block's output; and the three are released once the hook is done."""
    layout = decoder_layout(build_toy_model())
    ids = torch.arange(2, 50).view(2, 24)

    def parts(x, i, probed):  # a reducer: it runs inside block i's hook
        return probed.resid_in[i], probed.resid_in[i] + probed.attn[i] + probed.mlp[i]

    with torch.no_grad(), probes(layout, Needs(block_out=True, sublayers=True), reducers={"parts": parts}) as probed:
        layout.backbone(input_ids=ids)
    for i, out in enumerate(probed.block_out):
        block_in, added_up = probed.reduced["parts"][i]
        torch.testing.assert_close(added_up, out, rtol=1e-5, atol=1e-5)
        if i:
            assert block_in is probed.block_out[i - 1]
    assert probed.resid_in == probed.attn == probed.mlp == [None] * TRUTH.n_layer


def test_more_massive_entries_than_candidates_are_counted_not_hidden(tmp_path, massive_run):
    """With the threshold lowered below the writer head's value (about 50 at all 128
    positions from block 8 on), those entries are massive: with 16 candidates the locator
    keeps the 16 largest there, and says so per block; below block 8 (one massive entry per
    window) everything equals the full run at the default threshold."""
    _, full = massive_run
    args = toy_run_args(
        "--model.analyses.components.enabled", "true", "--model.massive_candidates", "16",
        "--model.massive_threshold", "20",  # above ordinary |x| (about 1), below the writer's 50
        n=6, batch_size=3,
    )  # fmt: skip
    with pytest.warns(UserWarning, match="more massive entries per window than model.massive_candidates"):
        _, cut = run_validate(tmp_path, *args)
    writer = TRUTH.writer_head[0]
    layers = cut["variants"]["baseline"]["layers"]
    assert [row["locator_overflow"] for row in layers] == [0] * writer + [6] * (TRUTH.n_layer - writer)
    assert all(row["locator_overflow"] == 0 for row in full["variants"]["baseline"]["layers"])
    kept = [e for e in cut["variants"]["baseline"]["massive"] if e["layer"] == writer]
    assert 0 < sum(round(e["fraction"] * 6) for e in kept) <= 16 * 6  # at most 16 per window
    below = [e for e in full["variants"]["baseline"]["massive"] if e["layer"] < writer]
    assert [e for e in cut["variants"]["baseline"]["massive"] if e["layer"] < writer] == below
    assert cut["variants"]["baseline"]["components_overflow"] == 6
