"""Inside the attention of every head: planted ground truth on the toy, the pieces of the
probe against plain computations, rankings by any per-head figure, and two processes."""

import json
import math

import pytest
import torch

from helpers import DEMO, assert_same_numbers, run_validate, run_validate_ddp, tiny_run_args
from lit_massive.analyses.massive_update import TOKEN_SLOTS
from lit_massive.cli import rank_heads as rank_heads_cli
from lit_massive.models.toy import ToyConfig
from lit_massive.probes.attention import (
    AttentionCall,
    first_token_logit_gap_,
    head_record,
    masked_softmax_,
    queries_per_key,
    received_in_tiles,
)
from lit_massive.results.ranking import rank_heads

TRUTH = ToyConfig()


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    variants = {"dormant": {"select": "bottom", "k": 1, "by": "head_output_norm"}}
    root = tmp_path_factory.mktemp("internals")
    return run_validate(root, "--config", DEMO, "--data.num_sequences", "4", "--model.variants", json.dumps(variants))


def test_toy_sink_head_is_a_constant_bias_with_the_largest_logit_gap(toy_run):
    _, results = toy_run
    baseline = results["variants"]["baseline"]
    layer, head = TRUTH.sink_head
    assert baseline["massive_update_cosine"][layer][head] == pytest.approx(1.0, abs=1e-5)
    assert baseline["massive_update_overflow"] == 0  # one massive token per window
    gaps = baseline["first_token_logit_gap"][layer]
    assert max(range(len(gaps)), key=gaps.__getitem__) == head
    assert gaps[head] > 10 and max(abs(g) for h, g in enumerate(gaps) if h != head) < 1
    # nearly all of the sink's output comes from the massive token
    output = baseline["head_output_norm"][layer][head]
    assert baseline["massive_update_norm"][layer][head] == pytest.approx(output, rel=1e-3)
    assert baseline["other_update_norm"][layer][head] < 1e-3 * output
    # the two planted first-token heads are the only sinks
    sinks = {TRUTH.sink_head[0], TRUTH.writer_head[0]}
    assert baseline["sink_rate"] == [1 / TRUTH.n_head if i in sinks else 0.0 for i in range(TRUTH.n_layer)]
    assert baseline["model_sink_rate"] == pytest.approx(2 / (TRUTH.n_layer * TRUTH.n_head))
    assert baseline["sink_epsilon"] == 0.3
    assert baseline["key_sink_rate"][layer][0] == 1 / TRUTH.n_head and baseline["model_key_sink_rate"][1:] == [0.0] * 15
    # why they sink: the first key is long and the queries point at it (the planted logit)
    keys = [(v, (la, h)) for la, row in enumerate(baseline["key_norm_first"]) for h, v in enumerate(row)]
    assert {where for _, where in sorted(keys)[-2:]} == {TRUTH.sink_head, TRUTH.writer_head}
    for la, h in (TRUTH.sink_head, TRUTH.writer_head):
        assert baseline["query_key_cos_first"][la][h] > 0.9 > max(abs(c) for c in baseline["query_key_cos_rest"][la])


def test_toy_dormant_head_ranks_first_and_a_selection_prunes_it(toy_run):
    run_dir, results = toy_run
    baseline, dormant = results["variants"]["baseline"], results["variants"]["dormant"]
    norms = baseline["head_output_norm"]
    assert rank_heads(norms, "bottom")[0] == TRUTH.dormant_head
    others = [v for layer, row in enumerate(norms) for h, v in enumerate(row) if (layer, h) != TRUTH.dormant_head]
    assert norms[TRUTH.dormant_head[0]][TRUTH.dormant_head[1]] < 1e-2 * min(others)
    assert dormant["pruned_heads"] == [list(TRUTH.dormant_head)]
    assert abs(dormant["change_vs_baseline"]["perplexity_pct"]) < 0.01  # it wrote almost nothing
    assert (run_dir / "figures" / "baseline_head_output_norm.png").is_file()
    # rank-heads ranks by it too: its bottom config prunes the dormant head first
    out = run_dir / "by_norm"
    rank_heads_cli.main([str(run_dir / "results.json"), "--by", "head_output_norm", "--k", "2", "--out", str(out)])
    bottom = (out / "prune_bottom2.yaml").read_text()
    assert f"- {TRUTH.dormant_head[0]}\n      - {TRUTH.dormant_head[1]}" in bottom


def test_allowed_at_positions_is_the_full_mask_gathered():
    torch.manual_seed(0)
    b, h, h_kv, t, hd = 2, 4, 2, 9, 8
    q, k = torch.randn(b, h, t, hd), torch.randn(b, h_kv, t, hd)
    i = torch.arange(t)
    band = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - 4)
    additive = torch.zeros(t, t).masked_fill(~band, torch.finfo(torch.float32).min)
    positions = torch.tensor([[0, 3, 8], [5, 1, 1]])
    for mask, window in ((None, 4), (band[None, None], None), (additive[None, None], None)):
        call = AttentionCall(q, k, k, mask, 0.3, sliding_window=window)
        full = call.allowed().expand(b, -1, t, t)
        assert torch.equal(full[0, 0], band)
        gathered = torch.stack([full[w][..., positions[w]] for w in range(b)])
        assert torch.equal(call.allowed(positions).expand_as(gathered), gathered)


def test_logit_gap_by_hand():
    torch.manual_seed(1)
    t = 7
    scores = torch.randn(2, 3, t, t)
    i = torch.arange(t)
    allowed = ((i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - 3))[None, None]  # key 0 leaves the window
    total, count = first_token_logit_gap_(scores.clone(), allowed)
    expected = torch.zeros(2, 3)
    queries = [q for q in range(1, t) if allowed[0, 0, q, 0]]
    for q in queries:
        others = [j for j in range(1, t) if allowed[0, 0, q, j]]
        expected += scores[..., q, 0] - scores[..., q, others].mean(-1)
    torch.testing.assert_close(total, expected)
    assert count.tolist() == [[len(queries)]] and len(queries) == 2
    # in two tiles of rows, the sums add up to the same
    top, bottom = scores[..., :4, :].clone(), scores[..., 4:, :].clone()
    a, n_a = first_token_logit_gap_(top, allowed[..., :4, :])
    b, n_b = first_token_logit_gap_(bottom, allowed[..., 4:, :], 4)
    torch.testing.assert_close(a + b, expected)
    assert (n_a + n_b).tolist() == [[len(queries)]]


@pytest.mark.parametrize("tile", [1, 3, 5, 16])
def test_tiles_equal_the_whole_map(tile):
    """Every figure of a head record, in tiles of query rows, equals the one-tile record, for
    masks given as booleans, as additive floats, and as only a sliding window, with softcapping."""
    torch.manual_seed(2)
    b, h, h_kv, t, hd = 2, 4, 2, 11, 8
    q, k, v = torch.randn(b, h, t, hd), torch.randn(b, h_kv, t, hd), torch.randn(b, h_kv, t, hd)
    i = torch.arange(t)
    band = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - 4)
    additive = torch.zeros(t, t).masked_fill(~band, torch.finfo(torch.float32).min)
    for mask, window in ((None, 4), (band[None, None], None), (additive[None, None], None)):
        call = AttentionCall(q, k, v, mask, 0.4, softcap=3.0, sliding_window=window)
        whole, tiled = head_record(call), head_record(call, tile)
        for name in ("received", "value_norm_first", "value_norm_rest", "output_norm", "logit_gap", "lse", "output"):
            torch.testing.assert_close(getattr(tiled, name), getattr(whole, name), rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(received_in_tiles(call, tile), whole.received, rtol=1e-5, atol=1e-6)
        # and the whole map is the plain softmax
        s = torch.tanh((q @ k.repeat_interleave(2, 1).transpose(-1, -2)) * 0.4 / 3.0) * 3.0
        p = s.masked_fill(~band, -torch.inf).softmax(-1)
        torch.testing.assert_close(whole.received, p.mean(-2))
        torch.testing.assert_close(whole.output, p @ v.repeat_interleave(2, 1))


@pytest.mark.parametrize("tile", [None, 1, 4, 16])
def test_plain_causal_record_equals_the_one_from_the_masked_map(tile):
    """Without a mask tensor, sliding window or softcap (sdpa's causal layers), the logit gap
    comes from running sums of keys, not from the scores: every figure equals the record of
    the same call given its causal mask as a tensor, which takes the scores' path."""
    torch.manual_seed(3)
    b, h, h_kv, t, hd = 2, 6, 2, 13, 8
    q, k, v = torch.randn(b, h, t, hd) * 3, torch.randn(b, h_kv, t, hd), torch.randn(b, h_kv, t, hd)
    i = torch.arange(t)
    causal = (i[None, :] <= i[:, None])[None, None]
    plain, masked = AttentionCall(q, k, v, None, 0.4), AttentionCall(q, k, v, causal, 0.4)
    assert plain.plain_causal and not masked.plain_causal
    fast, reference = head_record(plain, tile), head_record(masked, tile)
    factors = ("query_norm", "key_norm_first", "key_norm_rest", "cos_first", "cos_rest")
    for name in (
        "received",
        "value_norm_first",
        "value_norm_rest",
        "output_norm",
        "logit_gap",
        "lse",
        "output",
        *factors,
    ):
        torch.testing.assert_close(getattr(fast, name), getattr(reference, name), rtol=1e-5, atol=1e-5, msg=name)
    s = (q @ k.repeat_interleave(3, 1).transpose(-1, -2)) * 0.4  # the gap by hand
    gap = [(s[..., n, 0] - s[..., n, 1 : n + 1].mean(-1)) for n in range(1, t)]
    torch.testing.assert_close(fast.logit_gap, torch.stack(gap).mean(0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sliding_window", [None, 2])
def test_logit_factors_multiply_back_to_the_logit(sliding_window):
    """In a 2-token window only query 1 counts: scaling * ||q_1|| * ||k_0|| * cos(q_1, k_0) is
    its logit on key 0, and cos(q_1, k_1) is the rest's mean cosine (GQA: 3 query heads per
    KV head); the same with a sliding window, which takes the tile-of-cosines path."""
    torch.manual_seed(7)
    q, k, v = torch.randn(2, 6, 2, 8) * 2, torch.randn(2, 2, 2, 8), torch.randn(2, 2, 2, 8)
    record = head_record(AttentionCall(q, k, v, None, 0.35, sliding_window=sliding_window), tile=1)
    kq = k.repeat_interleave(3, 1)  # each query head's key
    logit = (q[:, :, 1] * kq[:, :, 0]).sum(-1) * 0.35
    product = 0.35 * record.query_norm * record.key_norm_first * record.cos_first
    torch.testing.assert_close(product, logit, rtol=1e-5, atol=1e-6)
    cos_11 = torch.nn.functional.cosine_similarity(q[:, :, 1], kq[:, :, 1], dim=-1)
    torch.testing.assert_close(record.cos_rest, cos_11, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(record.key_norm_rest, kq[:, :, 1].norm(dim=-1))


def test_queries_per_key_follow_the_mask():
    """Gu et al.'s denominator: T - k causally, min(T, k + W) - k within a sliding window,
    and counted from a mask tensor (here one that also hides key 2 from query 5)."""
    t = 7
    q, k = torch.randn(1, 2, t, 4), torch.randn(1, 2, t, 4)
    assert queries_per_key(AttentionCall(q, k, k, None, 1.0)).flatten().tolist() == [7, 6, 5, 4, 3, 2, 1]
    assert queries_per_key(AttentionCall(q, k, k, None, 1.0, sliding_window=3)).flatten().tolist() == [
        3, 3, 3, 3, 3, 2, 1,
    ]  # fmt: skip
    mask = torch.arange(t)[None, :] <= torch.arange(t)[:, None]
    mask[5, 2] = False
    counted = queries_per_key(AttentionCall(q, k, k, mask[None, None], 1.0), tile=3)
    assert counted.flatten().tolist() == [7, 6, 4, 4, 3, 2, 1]


def test_causal_masking_equals_filling_even_where_scores_are_not_finite():
    """The causal path (no mask tensor) zeroes the keys after each query and adds -inf there:
    the same probabilities as filling them with -inf, also where a score is inf or NaN."""
    torch.manual_seed(5)
    t = 9
    scores = torch.randn(2, 4, t, t)
    scores[0, 1, 2, 6], scores[1, 3, 4, 8], scores[0, 0, 5, 1] = float("nan"), float("inf"), float("nan")
    q, k = torch.randn(2, 4, t, 8), torch.randn(2, 2, t, 8)
    causal = (torch.arange(t)[None, :] <= torch.arange(t)[:, None])[None, None]
    for rows in (slice(0, t), slice(3, 7)):
        plain, _ = masked_softmax_(scores[:, :, rows].clone(), AttentionCall(q, k, k, None, 1.0), rows)
        filled, _ = masked_softmax_(scores[:, :, rows].clone(), AttentionCall(q, k, k, causal, 1.0), rows)
        assert torch.equal(plain.nan_to_num(-1.0), filled.nan_to_num(-1.0))


@pytest.mark.parametrize("tile", [None, 8])
def test_record_stays_float32_under_a_half_default_dtype(tile):
    """Lightning's 16-true and bf16-true set torch's default dtype inside the step: the
    record's outputs and log-sum-exps are still float32 (in bfloat16 they were off by 0.1)."""
    torch.manual_seed(4)
    q, k, v = (torch.randn(1, h, 32, 16, dtype=torch.bfloat16) * 4 for h in (4, 2, 2))
    expected = head_record(AttentionCall(q, k, v, None, 0.25), tile)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        record = head_record(AttentionCall(q, k, v, None, 0.25), tile)
    finally:
        torch.set_default_dtype(default)
    for name in ("lse", "output", "output_norm", "logit_gap", "received"):
        assert getattr(record, name).dtype == torch.float32, name
        torch.testing.assert_close(getattr(record, name), getattr(expected, name), rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_two_processes_equal_one_inside_the_heads(tmp_path, tiny_gpt2_dir, corpus_jsonl):
    variants = {"dormant": {"select": "bottom", "k": 2, "by": "head_output_norm"}}
    args = tiny_run_args(tiny_gpt2_dir, corpus_jsonl, 16, 6, 2, "--model.analyses.head_scores.enabled", "true",
                         "--model.variants", json.dumps(variants))  # fmt: skip
    _, single = run_validate(tmp_path / "one", *args)
    double = run_validate_ddp(tmp_path / "two", *args)
    assert not math.isnan(single["variants"]["baseline"]["massive_update_norm"][0][0])
    assert_same_numbers(double["variants"], single["variants"])


def test_windows_with_more_massive_tokens_than_slots_are_left_out_and_counted(tmp_path):
    """With the criterion at 0, every token of the toy's 128-token windows is massive from
    block 0's output on: more than the decomposition follows (TOKEN_SLOTS), so from block 1
    on both windows are left out of it and counted, and its figures are null; block 0 reads
    the embeddings, with no massive token (no update, the whole output is the rest); the
    other internals are measured as ever."""
    _, results = run_validate(
        tmp_path, "--config", DEMO, "--data.num_sequences", "2",
        "--model.massive_threshold", "0", "--model.massive_ratio", "0",
    )  # fmt: skip
    baseline = results["variants"]["baseline"]
    assert TOKEN_SLOTS < 128 and baseline["massive_update_overflow"] == 2
    for key in ("massive_update_norm", "other_update_norm", "massive_update_cosine"):
        assert all(v is None for row in baseline[key][1:] for v in row)
    assert baseline["massive_update_norm"][0] == [0.0] * TRUTH.n_head
    assert baseline["other_update_norm"][0] == pytest.approx(baseline["head_output_norm"][0], rel=1e-6)
    assert baseline["massive_update_cosine"][0] == [None] * TRUTH.n_head
    assert all(v is not None for row in baseline["head_output_norm"] for v in row)


def test_sink_rate_counts_windows_not_the_mean_score():
    """A head that sinks in one window (alpha_0 = 0.9) and not in the other (0.1) has a mean
    first-token score of 0.5, over epsilon, but Gu et al.'s sink rate counts (window, head)
    pairs: 1 of 2. Key 2 takes alpha_2 = 0.45 in the second window: a secondary sink there."""
    from lit_massive.analyses.sink_rate import SinkCounts

    t, attended = 4, torch.tensor([4.0, 3.0, 2.0, 1.0])[None, None]
    alpha = torch.tensor([[[0.9, 0.05, 0.05, 0.0]], [[0.1, 0.2, 0.45, 0.1]]])  # (B=2, H=1, T)
    counts = SinkCounts(n_layer=1, positions=6, epsilon=0.3)
    counts.update([alpha * attended / t], [attended])
    rates = counts.compute()
    assert rates["sink_rate"].tolist() == [0.5] and float(rates["model_sink_rate"]) == 0.5
    key = rates["key_sink_rate"][0].tolist()
    assert key[:4] == [0.5, 0.0, 0.5, 0.0] and all(math.isnan(v) for v in key[4:])  # past the window: null


def test_secondary_sinks_keep_the_most_sunk_on_keys_and_mark_massive_tokens():
    """Planted alphas: in layer 0 heads sink on 9 keys after the first (one more than the
    slots: the key with a single sinking head is the one dropped, and counted); in layer 1 on
    key 3 (both heads) and key 5 (one head), where key 3 holds the token that block 0's output
    makes massive: the stream entering layer 1."""
    from types import SimpleNamespace

    from lit_massive.analyses.secondary_sinks import SLOTS, SinkKeys, secondary_sinks
    from lit_massive.probes.block_stats import block_stats

    t, eps = 12, 0.3
    attended = (t - torch.arange(t)).float()[None, None]  # causal: T - k queries per key
    alpha = [torch.full((1, 2, t), 0.1), torch.full((1, 2, t), 0.1)]
    alpha[0][0, :, 1 : SLOTS + 1] = 0.5  # 8 keys, both heads
    alpha[0][0, 0, SLOTS + 1] = 0.4  # a 9th key, one head
    alpha[1][0, :, 3] = 0.6
    alpha[1][0, 1, 5] = 0.35
    received = [a * attended / t for a in alpha]
    x = torch.randn(1, t, 16) * 0.01
    x[0, 3, 2] = 5000.0  # block 0's output: massive at position 3
    stats = [block_stats(x, k=1, candidates=4, threshold=100.0, ratio=1000.0)] * 2
    input_ids = torch.arange(100, 100 + t)[None]
    forward = SimpleNamespace(probed=SimpleNamespace(received=received, attended=[attended] * 2),
                              input_ids=input_ids, stats=stats)  # fmt: skip
    keys = SinkKeys(eps)
    keys.update(forward)
    computed = keys.compute()
    assert int(computed["overflow"]) == 1
    rows = {(r["layer"], r["position"]): r for r in secondary_sinks(computed["rows"], str)}
    assert sorted(rows) == [(0, k) for k in range(1, SLOTS + 1)] + [(1, 3), (1, 5)]
    assert rows[(0, 1)]["pairs"] == 2 and rows[(0, 1)]["mean_alpha"] == pytest.approx(0.5)
    assert rows[(1, 3)]["entering_massive"] == 1.0 and rows[(1, 5)]["entering_massive"] == 0.0
    assert rows[(1, 5)]["pairs"] == 1 and rows[(1, 5)]["token_id"] == 105
    assert rows[(0, 3)]["entering_massive"] == 0.0  # block 0 reads the embeddings: nothing massive
