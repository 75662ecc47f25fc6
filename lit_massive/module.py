"""The LightningModule: one validation pass measures every variant on the same batches."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from lit_massive.adapter import decoder_layout
from lit_massive.functional import massive_entries, set_entries, zero_massive, zero_random
from lit_massive.hooks import probes
from lit_massive.loading import load_causal_lm
from lit_massive.metrics import Components, HeadScores, LayerProfile, Perplexity
from lit_massive.reporting import RunReport
from lit_massive.results import locate_massive
from lit_massive.variants import (
    BASELINE,
    Edit,
    Head,
    Sweep,
    head_mask,
    load_massive,
    needs_run_scores,
    parse_variants,
    resolve,
    sweep_names,
)


@dataclass
class FeatureView:
    """Experiment 1: |block output| of one text over tokens x feature dims, as a 3D plot."""

    text: str = "Summer is warm. Winter is cold."
    layers: list[int] | None = None  # null: the first block with a massive activation


class MassiveActivations(L.LightningModule):
    """Measure per-block statistics of |block output| and per-head first-token attention
    for a GPT-2-family model and for head-pruned variants of it."""

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
        variants: dict[str, Any] | None = None,
        sweep: Sweep | None = None,
        attn_implementation: str | None = None,
    ) -> None:
        """
        Args:
            model_name_or_path: hub id (``gpt2``, ``distilgpt2``, ...), local directory saved
                with ``save_pretrained``, or ``toy`` (the built-in model with planted ground truth).
            top_k: how many of the largest |values| to report per block.
            massive_threshold: a massive activation has |value| above this ...
            massive_ratio: ... and above this many times the median |value| of its block output.
            head_scores: measure each head's mean attention on the first token.
            perplexity: measure token-level perplexity (needs the LM head's logits).
            components: for every massive (dim, position), what enters each block there and
                what its attention and MLP add (who writes massive activations).
            feature_view: plot |block output| of one text (experiment 1) after the pass.
            variants: name -> heads to prune, as ``[[layer, head], ...]`` or
                ``{select: top|bottom, k: N, scores: path/to/results.json | null}`` (null: this
                run's baseline scores, from a first pass over the same windows); or an edit of
                one block output, ``{set_massive: {layer: L, to: zero|mean, from: results.json
                | null}, prune_heads: [...]}``, or its control ``{set_random: {layer: L, seed: S}}``.
            sweep: cumulative pruning, one variant per k (``sweep_{order}_{k}``).
            attn_implementation: attention backend; null keeps the model's default.
        """
        super().__init__()
        if top_k < 1:
            raise ValueError(f"top_k={top_k}: must be >= 1")
        self.save_hyperparameters()
        self.model = load_causal_lm(model_name_or_path, attn_implementation)
        self.layout = lay = decoder_layout(self.model)
        self.context_length = lay.n_positions
        self.sweep = sweep  # hparams may hold these as plain dicts (LightningCLI)
        self.feature_view = feature_view
        self.specs, self.edits = parse_variants(variants, sweep, lay.n_layer, lay.n_head)
        self.edit_values: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
        self.variant_names = [BASELINE, *self.specs]
        self.register_buffer(
            "head_masks", torch.ones(len(self.variant_names), lay.n_layer, lay.n_head), persistent=False
        )
        self._set_pruned_heads(resolve(self.specs, run_scores=None))
        self.profiles = nn.ModuleDict({name: self._new_profile() for name in self.variant_names})
        self.head_scores = nn.ModuleDict(
            {name: HeadScores(lay.n_layer, lay.n_head) for name in self.variant_names} if head_scores else {}
        )
        self.perplexity = nn.ModuleDict({name: Perplexity() for name in self.variant_names} if perplexity else {})
        self.components = nn.ModuleDict({name: Components() for name in self.variant_names} if components else {})
        self.results: dict[str, dict[str, Any]] | None = None
        self.timing: dict[str, float] = {}

    def _new_profile(self) -> LayerProfile:
        lay, h = self.layout, self.hparams
        return LayerProfile(
            lay.n_layer,
            lay.n_embd,
            lay.n_positions,
            lay.vocab_size,
            k=h.top_k,
            massive_threshold=h.massive_threshold,
            massive_ratio=h.massive_ratio,
        )

    def _set_pruned_heads(self, heads: dict[str, list[Head] | None]) -> None:
        self.pruned_heads: dict[str, list[Head] | None] = {BASELINE: [], **heads}
        for v, name in enumerate(self.variant_names):
            if self.pruned_heads[name] is not None:
                mask = head_mask(self.pruned_heads[name], self.layout.n_layer, self.layout.n_head)
                self.head_masks[v] = mask.to(self.head_masks)

    def on_validation_start(self) -> None:
        self._start = time.perf_counter()
        need_means = {n: e for n, e in self.edits.items() if e.to == "mean"}
        need_scores = needs_run_scores(self.specs)
        need_locator = any(e.source is None for e in need_means.values())
        scores, located = self._first_pass(need_scores, need_locator) if need_scores or need_locator else (None, None)
        if need_scores:
            self._set_pruned_heads(resolve(self.specs, run_scores=scores))
        for name, edit in need_means.items():
            entries = load_massive(edit.source) if edit.source is not None else located
            at = [e for e in entries if e["layer"] == edit.layer]
            self.edit_values[name] = tuple(
                torch.tensor([e[key] for e in at], device=self.device) for key in ("position", "dim", "value")
            )

    @torch.inference_mode()
    def _first_pass(self, score: bool, locate: bool) -> tuple[Tensor | None, list[dict] | None]:
        """Baseline head scores and/or located massive activations over this run's windows,
        synced over all ranks, for selections by score and `mean` edits."""
        lay = self.layout
        scores = HeadScores(lay.n_layer, lay.n_head).to(self.device) if score else None
        profile = self._new_profile().to(self.device) if locate else None
        with self.trainer.precision_plugin.forward_context():
            for batch in self.trainer.val_dataloaders:
                input_ids = batch["input_ids"].to(self.device)
                with probes(lay, head_scores=score) as probed:
                    lay.backbone(input_ids=input_ids, use_cache=False)
                if scores is not None:
                    scores.update(probed.first_token_attention)
                if profile is not None:
                    profile.update(probed.block_outputs, input_ids)
        located = None
        if profile is not None:
            computed = profile.compute()
            located = locate_massive(computed["massive_rows"], int(computed["count"]), str)
        return (None if scores is None else scores.compute().cpu()), located

    def _edit(self, name: str, batch: dict[str, Tensor]) -> tuple[int, Any] | None:
        """The block-output edit of variant `name` for this batch, as probes() takes it."""
        edit: Edit | None = self.edits.get(name)
        if edit is None:
            return None
        thr, ratio = self.hparams.massive_threshold, self.hparams.massive_ratio
        if edit.to == "zero":
            return edit.layer, lambda x: zero_massive(x, thr, ratio)
        if edit.to == "mean":
            positions, dims, values = self.edit_values[name]
            return edit.layer, lambda x: set_entries(x, positions, dims, values)
        # the control: one generator per window, seeded by the window's index, so any
        # number of processes draws the same entries
        gens = [torch.Generator().manual_seed(edit.seed * 1_000_003 + int(i)) for i in batch["index"]]
        return edit.layer, lambda x: zero_random(x, thr, ratio, gens)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        input_ids = batch["input_ids"]
        # the LM head only when perplexity needs logits; the profile needs block outputs only
        forward = self.model if self.perplexity else self.layout.backbone
        h = self.hparams
        for v, name in enumerate(self.variant_names):
            mask = None if name == BASELINE else self.head_masks[v]
            with probes(
                self.layout,
                head_mask=mask,
                head_scores=bool(self.head_scores),
                components=bool(self.components),
                edit=self._edit(name, batch),
            ) as probed:
                output = forward(input_ids=input_ids, use_cache=False)
            self.profiles[name].update(probed.block_outputs, input_ids)
            if self.components:
                entries = massive_entries(probed.block_outputs, h.massive_threshold, h.massive_ratio)
                self.components[name].update(probed.block_inputs, probed.attn_outputs, probed.mlp_outputs, entries)
            if self.head_scores:
                self.head_scores[name].update(probed.first_token_attention)
            if self.perplexity:
                self.perplexity[name].update(output.logits, input_ids, batch["score_from"])

    def on_validation_epoch_end(self) -> None:
        # compute() syncs states across processes, so every rank must call it
        self.results = {
            name: {
                "profile": self.profiles[name].compute(),
                "head_scores": self.head_scores[name].compute() if self.head_scores else None,
                "perplexity": self.perplexity[name].compute() if self.perplexity else None,
                "components": self.components[name].compute() if self.components else None,
                "pruned_heads": self.pruned_heads[name],
                "edit": self.edits.get(name),
            }
            for name in self.variant_names
        }
        wall = time.perf_counter() - self._start
        tokens = int(self.results[BASELINE]["profile"]["tokens"])
        self.timing = {
            "wall_s": wall,
            "tokens": tokens,
            "tokens_per_s": tokens / wall,
            "forward_passes_per_window": len(self.variant_names),
        }
        metrics = [self.profiles, self.head_scores, self.perplexity, self.components]
        for metric in [m for group in metrics for m in group.values()]:
            metric.reset()

    def configure_callbacks(self) -> list[Callback]:
        return [RunReport()]

    @torch.inference_mode()
    def block_outputs_of(self, input_ids: Tensor) -> list[Tensor]:
        """Block outputs of the unpruned model for one sequence (T,), as float32 (T, D)."""
        with self.trainer.precision_plugin.forward_context(), probes(self.layout) as probed:
            self.layout.backbone(input_ids=input_ids[None].to(self.device), use_cache=False)
        return [x[0].float().cpu() for x in probed.block_outputs]

    def describe_sweep(self) -> dict | None:
        """The sweep's order, k values and variant names, for results.json and its figure."""
        sweep = self.sweep
        if sweep is None:
            return None
        names = sweep_names(sweep)
        return {"order": sweep.order, "seed": sweep.seed, "k": list(names.values()), "variants": list(names)}

    def describe(self) -> dict:
        """What was measured, for results.json."""
        lay, h = self.layout, self.hparams
        return {
            "name_or_path": h.model_name_or_path,
            "model_type": self.model.config.model_type,
            "n_layer": lay.n_layer,
            "n_head": lay.n_head,
            "n_embd": lay.n_embd,
            "n_positions": lay.n_positions,
            "vocab_size": lay.vocab_size,
            "attn_implementation": self.model.config._attn_implementation,
            "top_k": h.top_k,
            "massive_threshold": h.massive_threshold,
            "massive_ratio": h.massive_ratio,
            "head_scores": bool(self.head_scores),
            "perplexity": bool(self.perplexity),
            "components": bool(self.components),
        }
