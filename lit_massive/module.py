"""The LightningModule: one validation pass measures every variant on the same batches."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from lit_massive.adapter import decoder_layout
from lit_massive.hooks import probes
from lit_massive.loading import load_causal_lm
from lit_massive.metrics import HeadScores, LayerProfile, Perplexity
from lit_massive.reporting import RunReport
from lit_massive.variants import (
    BASELINE,
    Head,
    Sweep,
    head_mask,
    needs_run_scores,
    parse_variants,
    resolve,
    sweep_names,
)


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
            variants: name -> heads to prune, as ``[[layer, head], ...]`` or
                ``{select: top|bottom, k: N, scores: path/to/results.json | null}`` (null: this
                run's baseline scores, from a first pass over the same windows).
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
        self.sweep = sweep  # hparams may hold it as a plain dict (LightningCLI)
        self.specs = parse_variants(variants, sweep, lay.n_layer, lay.n_head)
        self.variant_names = [BASELINE, *self.specs]
        self.register_buffer(
            "head_masks", torch.ones(len(self.variant_names), lay.n_layer, lay.n_head), persistent=False
        )
        self._set_pruned_heads(resolve(self.specs, run_scores=None))
        self.profiles = nn.ModuleDict({name: self._new_profile() for name in self.variant_names})
        self.head_scores = nn.ModuleDict(
            {name: HeadScores(lay.n_layer, lay.n_head) for name in self.variant_names} if head_scores else {}
        )
        self.perplexity = nn.ModuleDict(
            {name: Perplexity() for name in self.variant_names} if perplexity else {}
        )
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
        if needs_run_scores(self.specs):
            self._set_pruned_heads(resolve(self.specs, run_scores=self._score_pass()))

    @torch.inference_mode()
    def _score_pass(self) -> Tensor:
        """Baseline head scores over this run's windows (all ranks, synced), for selections."""
        scores = HeadScores(self.layout.n_layer, self.layout.n_head).to(self.device)
        with self.trainer.precision_plugin.forward_context():
            for batch in self.trainer.val_dataloaders:
                with probes(self.layout, head_scores=True) as probed:
                    self.layout.backbone(input_ids=batch["input_ids"].to(self.device), use_cache=False)
                scores.update(probed.first_token_attention)
        return scores.compute().cpu()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        input_ids = batch["input_ids"]
        # the LM head only when perplexity needs logits; the profile needs block outputs only
        forward = self.model if self.perplexity else self.layout.backbone
        for v, name in enumerate(self.variant_names):
            mask = None if name == BASELINE else self.head_masks[v]
            with probes(self.layout, head_mask=mask, head_scores=bool(self.head_scores)) as probed:
                output = forward(input_ids=input_ids, use_cache=False)
            self.profiles[name].update(probed.block_outputs, input_ids)
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
                "pruned_heads": self.pruned_heads[name],
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
        for metric in [*self.profiles.values(), *self.head_scores.values(), *self.perplexity.values()]:
            metric.reset()

    def configure_callbacks(self) -> list[Callback]:
        return [RunReport()]

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
        }
