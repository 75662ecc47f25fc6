"""The LightningModule: one validation pass measures the layer profile of a causal LM."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from lit_massive.adapter import decoder_layout
from lit_massive.hooks import capture_block_outputs
from lit_massive.loading import load_causal_lm
from lit_massive.metrics import LayerProfile
from lit_massive.reporting import RunReport

BASELINE = "baseline"


class MassiveActivations(L.LightningModule):
    """Measure per-block statistics of |block output| for a GPT-2-family model."""

    def __init__(
        self,
        model_name_or_path: str = "gpt2",
        top_k: int = 3,
        massive_threshold: float = 100.0,
        massive_ratio: float = 1000.0,
        attn_implementation: str | None = None,
    ) -> None:
        """
        Args:
            model_name_or_path: hub id (``gpt2``, ``distilgpt2``, ...), local directory saved
                with ``save_pretrained``, or ``toy`` (the built-in model with planted ground truth).
            top_k: how many of the largest |values| to report per block.
            massive_threshold: a massive activation has |value| above this ...
            massive_ratio: ... and above this many times the median |value| of its block output.
            attn_implementation: attention backend; null keeps the model's default.
        """
        super().__init__()
        if top_k < 1:
            raise ValueError(f"top_k={top_k}: must be >= 1")
        self.save_hyperparameters()
        self.model = load_causal_lm(model_name_or_path, attn_implementation)
        self.layout = decoder_layout(self.model)
        self.context_length = self.layout.n_positions
        self.profiles = nn.ModuleDict({BASELINE: self._new_profile()})
        self.results: dict[str, dict[str, Tensor]] | None = None

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

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        for profile in self.profiles.values():
            with capture_block_outputs(self.layout.blocks) as outputs:
                self.layout.backbone(input_ids=batch, use_cache=False)
            profile.update(outputs, batch)

    def on_validation_epoch_end(self) -> None:
        # compute() syncs states across processes, so every rank must call it
        self.results = {name: profile.compute() for name, profile in self.profiles.items()}
        for profile in self.profiles.values():
            profile.reset()

    def configure_callbacks(self) -> list[Callback]:
        return [RunReport()]

    def describe(self) -> dict:
        """What was measured, for results.json."""
        lay = self.layout
        return {
            "name_or_path": self.hparams.model_name_or_path,
            "model_type": self.model.config.model_type,
            "n_layer": lay.n_layer,
            "n_head": lay.n_head,
            "n_embd": lay.n_embd,
            "n_positions": lay.n_positions,
            "vocab_size": lay.vocab_size,
            "attn_implementation": self.model.config._attn_implementation,
            "top_k": self.hparams.top_k,
            "massive_threshold": self.hparams.massive_threshold,
            "massive_ratio": self.hparams.massive_ratio,
        }
