"""The model of a LightningModule that exists before its weights: its structure is built on
the meta device when the module is constructed, so every check runs before anything loads,
and the weights are loaded, whole or sharded, when Lightning configures the model."""

from __future__ import annotations

from torch import nn

from lit_massive.models.families import decoder_layout
from lit_massive.models.loading import (
    ModelSource,
    build_structure,
    load_causal_lm,
    load_config,
    model_source,
    weights_dtype,
)
from lit_massive.models.sharding import check_shardable, is_sharded, sharded_causal_lm


class LoadedLater:
    """For a LightningModule whose hyperparameters name the model (``model_name_or_path``,
    ``gguf_file``, ``revision``, ``attn_implementation``, ``dtype``, ``trust_remote_code``)
    and which sets `source`, `model`, `layout` and `loaded` itself."""

    def resolve_source(self) -> ModelSource:
        """Which files the model comes from (checked: a missing path or file is one line)."""
        h = self.hparams
        return model_source(h.model_name_or_path, h.gguf_file, h.revision)

    def build_structure(self) -> nn.Module:
        """The model's modules from its config, on the meta device: every check runs on it."""
        h = self.hparams
        config = load_config(h.model_name_or_path, h.attn_implementation, h.trust_remote_code, h.gguf_file, h.revision)
        return build_structure(config, weights_dtype(h.dtype, config), h.trust_remote_code)

    def load_model(self) -> nn.Module:
        """The model with its weights, whole (`from_pretrained`) in this process."""
        h = self.hparams
        return load_causal_lm(
            h.model_name_or_path, h.attn_implementation, h.dtype, h.trust_remote_code, h.gguf_file, h.revision
        )

    def configure_model(self) -> None:
        """Load the weights: whole in every process, or with `trainer.strategy model_parallel`
        sharded (`models.sharding`): each process holds its slice of every decoder layer,
        loaded without a whole copy. Lightning calls this once the processes exist; call it
        yourself to use the module without a Trainer."""
        if self.loaded:
            return
        h = self.hparams
        if is_sharded(self._trainer):
            check_shardable(self.source)
            device = self.trainer.strategy.root_device
            self.model = sharded_causal_lm(self.model, h.model_name_or_path, h.attn_implementation, h.dtype, device)
        else:
            self.model = self.load_model()
        self.layout = decoder_layout(self.model)
        self.loaded = True
