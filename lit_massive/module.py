"""The LightningModule: one validation pass measures every variant on the same batches and
leaves what it measured in `results` (a `RunResults`); writing it is the report callback's job."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from lit_massive.adapter import DecoderLayout, decoder_layout
from lit_massive.data import FILLER
from lit_massive.errors import InputError
from lit_massive.feature_view import FeatureView, measure_feature_view, shown_layers
from lit_massive.functional import massive_positions, massive_union, token_nll
from lit_massive.hooks import probes
from lit_massive.loading import build_structure, load_causal_lm, load_config, weights_dtype
from lit_massive.metrics import HeadScores, LayerProfile, VariantMetrics
from lit_massive.provenance import run_provenance
from lit_massive.results import RunResults, locate_massive
from lit_massive.sharding import is_sharded, parallel_record, sharded_causal_lm
from lit_massive.variants import BASELINE, SCORES, Sweep, VariantPlan, VariantSpec, describe_sweep

__all__ = ["FeatureView", "MassiveActivations", "describe_model"]


class MassiveActivations(L.LightningModule):
    """Measure per-block statistics of |block output| and per-head first-token attention
    for a decoder LM (any family in `adapter.FAMILIES`) and for head-pruned or edited
    variants of it."""

    def __init__(
        self,
        model_name_or_path: str = "gpt2",
        top_k: int = 3,
        massive_threshold: float = 100.0,
        massive_ratio: float = 1000.0,
        head_scores: bool = False,
        perplexity: bool = True,
        components: bool = False,
        feature_view: FeatureView | None = None,
        variants: dict[str, VariantSpec] | None = None,
        sweep: Sweep | None = None,
        attn_implementation: str | None = None,
        massive_candidates: int = 256,
        received_positions: int = 16,
        dtype: str = "float32",
        trust_remote_code: bool = False,
    ) -> None:
        """
        Args:
            model_name_or_path: hub id (``gpt2``, ``meta-llama/Llama-2-7b-hf``, ...), local directory saved
                with ``save_pretrained``, or ``toy`` (the built-in model with planted ground truth).
            top_k: how many of the largest |values| to report per block.
            massive_threshold: a massive activation has |value| above this ...
            massive_ratio: ... and above this many times the median |value| of its block output.
            head_scores: measure each head's mean attention on the first token and on the
                window's massive tokens, and the attention each of the first
                ``received_positions`` key positions receives per block.
            perplexity: measure token-level perplexity (needs the LM head's logits).
            components: for every massive (dim, position), what enters each block there and
                what its attention and MLP add (who writes massive activations).
            feature_view: plot |block output| of one text (experiment 1) after the pass.
            variants: name -> one of four forms. Heads to prune: ``[[layer, head], ...]``.
                A selection by head score (Select): ``{select: top|bottom, k: N, scores:
                path/to/results.json | null}`` (null: this run's baseline scores, from a first
                pass over the same windows). An edit of block L's output (SetMassive):
                ``{set_massive: {layer: L, to: zero|mean, from: results.json | null},
                prune_heads: [...]}``, or its control (SetRandom): ``{set_random: {layer: L,
                seed: S}, prune_heads: [...]}``; ``prune_heads`` is optional (alone, PruneHeads,
                it is the first form).
            sweep: cumulative pruning, one variant per k (``sweep_{order}_{k}``).
            attn_implementation: attention backend; null keeps the model's default.
            massive_candidates: the most massive entries per sequence and block that the
                locator and components record (the largest |values|, a fixed number so the
                measured step never waits on the GPU); more are counted (``locator_overflow``).
            received_positions: how many leading key positions ``received`` reports per block
                (position-specific attention sinks show up there).
            dtype: weights dtype at load time: ``float32``, ``bfloat16``, ``float16`` or ``auto``
                (the checkpoint's own); the run's precision applies on top, statistics stay float32+.
            trust_remote_code: passed to ``from_pretrained`` for the model and its tokenizer.
        """
        super().__init__()
        if isinstance(top_k, bool) or top_k < 1:
            raise InputError(f"top_k={top_k}: must be an integer >= 1 (the number of largest |values| per block)")
        for name, value in (("massive_threshold", massive_threshold), ("massive_ratio", massive_ratio)):
            if not value >= 0:
                raise InputError(f"{name}={value}: must be >= 0 (the paper's criterion: 100 and 1000)")
        self.save_hyperparameters()
        # the structure only (meta device): `configure_model` loads the weights, whole or sharded
        config = load_config(model_name_or_path, attn_implementation, trust_remote_code)
        self.model = build_structure(config, weights_dtype(dtype, config), trust_remote_code)
        self.layout = lay = decoder_layout(self.model)
        if components and not lay.additive:
            raise InputError(
                f"components: {model_name_or_path!r} normalises after each residual sum (OPT with "
                f"do_layer_norm_before=false), so no sublayer adds to the stream; set components: false"
            )
        self.context_length = lay.n_positions
        if feature_view is not None and feature_view.layers is not None:
            wrong = [layer for layer in feature_view.layers if not 0 <= layer < lay.n_layer]
            if wrong or not feature_view.layers:
                raise InputError(
                    f"feature_view.layers={feature_view.layers}: {'blocks ' + str(wrong) if wrong else 'empty'}"
                    f" out of range; valid blocks are "
                    f"0..{lay.n_layer - 1}, or null for the first block with a massive activation"
                )
        # the arguments, not hparams, which may hold these as plain dicts (LightningCLI)
        self.feature_view, self.sweep = feature_view, sweep
        self.plan = VariantPlan(variants, sweep, lay.n_layer, lay.n_head)
        self.register_buffer("head_masks", self.plan.head_masks(), persistent=False)
        self.pruned_layers = pruned_layers(self.plan.head_masks())
        if massive_candidates < 1:
            raise InputError(f"massive_candidates={massive_candidates}: must be >= 1")
        self.new_profile = profile_factory(lay, top_k, massive_threshold, massive_ratio, massive_candidates)
        if received_positions < 1:
            raise InputError(f"received_positions={received_positions}: must be >= 1")
        self.metrics = VariantMetrics(
            self.plan.names,
            self.new_profile,
            lay.n_layer,
            lay.n_head,
            head_scores,
            perplexity,
            components,
            received_positions,
        )
        self.results: RunResults | None = None
        self.loaded = False

    def configure_model(self) -> None:
        """Load the weights: whole in every process, or with `trainer.strategy model_parallel`
        sharded (`sharding`): each process holds its slice of every decoder layer, loaded
        without a whole copy. Lightning calls this once the processes exist; call it
        yourself to use the module without a Trainer."""
        if self.loaded:
            return
        h = self.hparams
        if is_sharded(self._trainer):
            device = self.trainer.strategy.root_device
            self.model = sharded_causal_lm(self.model, h.model_name_or_path, h.attn_implementation, h.dtype, device)
        else:
            self.model = load_causal_lm(h.model_name_or_path, h.attn_implementation, h.dtype, h.trust_remote_code)
        self.layout = decoder_layout(self.model)
        self.loaded = True

    def check_windows(self, seq_len: int) -> None:
        """top_k must fit in one block output of a window: seq_len x hidden size values."""
        size = seq_len * self.layout.n_embd
        if self.hparams.top_k > size:
            raise InputError(
                f"top_k={self.hparams.top_k} is larger than a block output ({seq_len} tokens x "
                f"{self.layout.n_embd} dims = {size} values); use top_k <= {size}"
            )

    @property
    def filler_ids(self) -> Tensor:
        """One short window for the forward passes of a rank that is out of windows."""
        return torch.zeros(1, 1, dtype=torch.long, device=self.device)

    def on_validation_start(self) -> None:
        self._start = time.perf_counter()
        located = self.first_pass() if self.plan.needs_run_scores or self.plan.needs_locator else None
        self.plan.use_located(located, self.device)

    @torch.no_grad()  # not inference_mode: sharded layers reuse gather buffers in later passes
    def first_pass(self) -> list[dict] | None:
        """A pass of the unpruned model over this run's windows, before the measured pass.

        It exists because some variants are defined by this run's own baseline: a selection
        ``{select: top, k: N}`` without ``scores`` prunes the heads its head scores rank first,
        and ``{set_massive: {to: mean}}`` without ``from`` needs its located massive
        activations. Every variant runs on every batch, so both must be known before the
        first. Computes only what is needed, synced over all ranks; returns the locator."""
        lay, plan = self.layout, self.plan
        scores = HeadScores(lay.n_layer, lay.n_head).to(self.device) if plan.needs_run_scores else None
        profile = self.new_profile().to(self.device)
        with self.trainer.precision_plugin.forward_context():
            for batch in self.trainer.val_dataloaders:
                batch = without_fillers(batch)
                if batch is None:  # this rank is out of windows: join the others' collectives
                    self.layout.backbone(input_ids=self.filler_ids, use_cache=False)
                    continue
                input_ids = batch["input_ids"].to(self.device)
                with probes(lay, head_scores=scores is not None) as probed:
                    lay.backbone(input_ids=input_ids, use_cache=False)
                stats = [profile.stats_of(x) for x in probed.block_outputs]
                if scores is not None:
                    scores.update(probed.received, massive_positions(stats, input_ids.shape[1]))
                if plan.needs_locator:
                    profile.update(stats, input_ids)
        if scores is not None:
            plan.use_run_scores({by: score.cpu() for by, score in scores.compute().items() if by in SCORES})
            self.head_masks.copy_(plan.head_masks())
            self.pruned_layers = pruned_layers(plan.head_masks())
        if not plan.needs_locator:
            return None
        computed = profile.compute()
        return locate_massive(computed["massive_rows"], int(computed["count"]), str)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Every variant on this batch. Nothing here reads a value back to the host (a test
        checks the ops), so on a GPU the step never waits for the device."""
        batch = without_fillers(batch)
        if batch is None:  # this rank is out of windows: join the others' collectives
            for _ in self.plan.names:
                self.layout.backbone(input_ids=self.filler_ids, use_cache=False)
            return
        input_ids = batch["input_ids"]
        h = self.hparams
        for v, name in enumerate(self.plan.names):
            with probes(
                self.layout,
                head_mask=None if name == BASELINE else self.head_masks[v],
                pruned_layers=self.pruned_layers[v],
                head_scores=h.head_scores,
                components=h.components,
                edit=self.plan.block_edit(name, batch["index"], h.massive_threshold, h.massive_ratio),
            ) as probed:
                output = self.layout.backbone(input_ids=input_ids, use_cache=False)
            profile = self.metrics.profiles[name]
            # one top-k, median and candidate set per block output, for profile and components
            stats = [profile.stats_of(x) for x in probed.block_outputs]
            profile.update(stats, input_ids)
            if h.components:
                entries = massive_union(stats, h.massive_candidates)
                self.metrics.components[name].update(
                    probed.block_inputs, probed.attn_outputs, probed.mlp_outputs, entries
                )
            if h.head_scores:  # the massive tokens of this very pass: no second forward
                self.metrics.head_scores[name].update(probed.received, massive_positions(stats, input_ids.shape[1]))
            if h.perplexity:
                lay = self.layout  # the LM head runs in chunks: no (B, T, V) logits at once
                nll = token_nll(output.last_hidden_state, lay.lm_head, input_ids, batch["score_from"],
                                lay.final_logit_softcap)  # fmt: skip
                self.metrics.perplexities[name].update(*nll)

    def on_validation_epoch_end(self) -> None:
        computed = self.metrics.compute()  # a collective: every rank computes
        wall = time.perf_counter() - self._start
        tokens = int(computed[BASELINE]["profile"]["tokens"])
        timing = {
            "wall_s": wall,
            "tokens": tokens,
            "tokens_per_s": tokens / wall,
            "forward_passes_per_window": len(self.plan.names),
        }
        self.results = self._run_results(computed, timing)

    def _run_results(self, computed: dict[str, dict[str, Any]], timing: dict[str, float]) -> RunResults:
        """Plain numbers per variant (with changes against the baseline) and the feature view."""
        datamodule, h = self.trainer.datamodule, self.hparams
        tokenizer = getattr(datamodule, "tokenizer", None)
        decode = (lambda i: tokenizer.decode([i])) if tokenizer is not None else str
        variants = self.plan.results(computed, decode)
        view = None
        if self.feature_view is not None and tokenizer is not None:  # experiment 1, after the pass
            view = measure_feature_view(
                self.layout,
                tokenizer,
                self.feature_view,
                shown_layers(self.feature_view, variants[BASELINE]),
                (h.massive_threshold, h.massive_ratio),
                self.trainer.precision_plugin.forward_context(),
                self.device,
                getattr(datamodule, "bos_token_id", None),
            )
        return RunResults(
            model=describe_model(self.model, self.layout, h),
            data=datamodule.describe() if hasattr(datamodule, "describe") else None,
            precision=str(self.trainer.precision),
            world_size=self.trainer.world_size,
            parallel=parallel_record(self.trainer, self.model),
            timing=timing,
            sweep=describe_sweep(self.sweep),
            variants=variants,
            feature_view=view,
            # rank 0 writes results.json: only it hashes the weights files
            provenance=run_provenance(h.model_name_or_path, self.model, getattr(datamodule, "fingerprint", None))
            if self.trainer.is_global_zero
            else None,
        )


def without_fillers(batch: dict[str, Any]) -> dict[str, Any] | None:
    """The batch without its lockstep fillers (`data.FILLER`, only ever at the end of a
    rank's windows), found from the host-side indices; None when nothing is left."""
    real = sum(i != FILLER for i in batch["index"])
    if real == len(batch["index"]):
        return batch
    if real == 0:
        return None
    return {key: value[:real] for key, value in batch.items()}


def profile_factory(
    layout: DecoderLayout, top_k: int, threshold: float, ratio: float, candidates: int
) -> Callable[[], LayerProfile]:
    """Makes new, empty layer profiles for this model: one per variant, one for a first pass."""
    return partial(
        LayerProfile,
        layout.n_layer,
        layout.n_embd,
        layout.n_positions,
        layout.vocab_size,
        k=top_k,
        massive_threshold=threshold,
        massive_ratio=ratio,
        candidates=candidates,
    )


def pruned_layers(head_masks: Tensor) -> list[list[int]]:
    """Per variant, the blocks with a pruned head, read once on the host from (V, L, H) masks."""
    return [torch.nonzero((mask == 0).any(dim=1)).flatten().tolist() for mask in head_masks]


def describe_model(model: nn.Module, layout: DecoderLayout, h: Mapping[str, Any]) -> dict[str, Any]:
    """What was measured, for results.json."""
    return {
        "name_or_path": h["model_name_or_path"],
        "model_type": model.config.model_type,
        "n_layer": layout.n_layer,
        "n_head": layout.n_head,
        "n_kv_head": layout.n_kv_head,
        "n_embd": layout.n_embd,
        "n_positions": layout.n_positions,
        "vocab_size": layout.vocab_size,
        "attn_implementation": model.config._attn_implementation,
        "dtype": h["dtype"],
        "parameter_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "top_k": h["top_k"],
        "massive_threshold": h["massive_threshold"],
        "massive_ratio": h["massive_ratio"],
        "head_scores": bool(h["head_scores"]),
        "perplexity": bool(h["perplexity"]),
        "components": bool(h["components"]),
    }
