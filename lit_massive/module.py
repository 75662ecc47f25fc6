"""The LightningModule: one validation pass measures every variant on the same batches under
the probes the enabled analyses ask for, on every corpus the data module serves (one
validation loader each), and leaves what they measured in `results` (a `RunResults`);
writing it is the report callback's job.

It names no analysis: the enabled ones come from the registry (`lit_massive.analyses`),
each with its own options under ``analyses``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor, nn

from lit_massive.analyses import ANALYSES, Forward, Setup, registry
from lit_massive.analyses.base import TokenCount
from lit_massive.analyses.collection import AnalysisCollection, providers
from lit_massive.data.windows import FILLER
from lit_massive.errors import InputError
from lit_massive.models.families import DecoderLayout, decoder_layout
from lit_massive.models.later import LoadedLater
from lit_massive.models.loading import describe_gguf
from lit_massive.models.sharding import parallel_record
from lit_massive.options import NonNegativeFloat, PositiveInt, check_options
from lit_massive.probes import probes
from lit_massive.probes.block_stats import stats_of
from lit_massive.results.provenance import run_provenance
from lit_massive.results.schema import RunResults
from lit_massive.tasks.analysis import evaluate_tasks  # registers the tasks analysis
from lit_massive.variants import BASELINE, Sweep, VariantPlan, VariantSpec, as_sweep, describe_sweep
from lit_massive.variants.qk_dims import attention_shape
from lit_massive.variants.weights import down_shapes

__all__ = ["MassiveActivations", "describe_model"]


class MassiveActivations(LoadedLater, L.LightningModule):
    """Measure massive activations and attention heads of a decoder LM (any family in
    `models.families.FAMILIES`) and of head-pruned or edited variants of it."""

    def __init__(
        self,
        model_name_or_path: str = "gpt2",
        top_k: PositiveInt = 3,
        massive_threshold: NonNegativeFloat = 100.0,
        massive_ratio: NonNegativeFloat = 1000.0,
        analyses: registry.AnalysisOptions = {},  # noqa: B006 (jsonargparse lists a dataclass's fields only with a dict default)
        variants: dict[str, VariantSpec] | None = None,
        sweep: Sweep | None = None,
        attn_implementation: str | None = None,
        massive_candidates: PositiveInt = 256,
        attention_tile: PositiveInt = 512,
        dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32",
        trust_remote_code: bool = False,
        gguf_file: str | None = None,
        revision: str | None = None,
    ) -> None:
        """
        Args:
            model_name_or_path: hub id (``gpt2``), local ``save_pretrained`` folder, ``.gguf`` file
                (dequantized into ``dtype``), ``toy`` (planted ground truth) or ``smollm2`` (``fetch smollm2``).
            top_k: how many of the largest |values| to report per layer.
            massive_threshold: a massive activation has |value| above this ...
            massive_ratio: ... and above this many times the median |value| of its block output.
            analyses: each analysis's options, ``analyses.NAME.OPTION``: which run (``enabled``) and how.
            variants: name -> heads to prune ``[[layer, head], ...]``, a selection ``{select: top|bottom, k: N,
                by: first_token}``, an edit ``{set_massive: {layer: L, to: zero|mean}}`` or its control
                ``{set_random: {layer: L, seed: S}}``, ``zero_weights``, ``zero_qk_dims`` or ``quantize``
                (docs/variants.md).
            sweep: cumulative pruning, one variant per k (``sweep_{order}_{k}``).
            attn_implementation: attention backend; null keeps the model's default.
            massive_candidates: the most massive entries per window and layer that the locator and
                components record (fixed, so the step never waits on the GPU); more are counted.
            attention_tile: head scores and internals take this many query rows at a time (memory linear in T).
            dtype: weights dtype at load time (``auto``: the checkpoint's own); statistics stay float32+.
            trust_remote_code: passed to ``from_pretrained`` for the model and its tokenizer.
            gguf_file: the GGUF file in the folder or hub repository ``model_name_or_path``; null: none.
            revision: branch, tag or commit of the hub repository (Pythia's ``step1000``); null: the default.
        """
        super().__init__()
        check_options(MassiveActivations.__init__, locals())  # Python callers: LightningCLI checked already
        self.save_hyperparameters()
        self.hparams.analyses = analyses = registry.analysis_options(analyses)
        self.sweep = sweep = as_sweep(sweep)
        # the structure only (meta device): `configure_model` loads the weights, whole or sharded
        self.source = self.resolve_source()
        self.gguf = describe_gguf(self.source)  # checks a GGUF file before anything loads
        self.model = self.build_structure()
        self.layout = lay = decoder_layout(self.model)
        self.context_length = lay.n_positions
        self.plan = VariantPlan(variants, sweep, lay.n_layer, lay.n_head, down_shapes(lay), attention_shape(lay))
        self.register_buffer("head_masks", self.plan.head_masks(), persistent=False)
        self.pruned_layers = pruned_layers(self.plan.head_masks())
        self.options = {**self.hparams, "analyses": analyses}
        for cls in registry.enabled_analyses(analyses):  # before any work: lm-eval's tasks known, ...
            cls.check(Setup(lay, self.options, ()), self.plan)
        self.measure_corpora([None])  # the data module's corpora, once known (`setup`)
        self.stats_of = stats_of(self.options)
        self.tokens = TokenCount()
        self.results: RunResults | None = None
        self.loaded = False

    def check_windows(self, seq_len: int, largest_id: int) -> None:
        """Every token id (the largest: `largest_id`) in the vocabulary, top_k within a block output."""
        check_windows(self.layout, self.hparams.top_k, seq_len, largest_id)

    def measure_corpora(self, corpora: list[str | None]) -> None:
        """Measure every variant on each of `corpora` (names, the default first). The analyses
        keep one metric per measurement, named by `measured_names`, so they never learn about
        corpora; with one corpus those are the variant names."""
        measured, self.corpora = measured_names(corpora, self.plan.names), corpora
        if getattr(self, "measured", None) != measured:
            self.measured = measured
            setup = Setup(self.layout, self.options, tuple(key for keys in measured for key in keys))
            self.analyses = AnalysisCollection(setup)

    def setup(self, stage: str) -> None:
        """Lightning calls this once the data module is set up: measure each of its corpora."""
        self.measure_corpora(getattr(self.trainer.datamodule, "corpus_names", None) or [None])

    def on_validation_start(self) -> None:
        self._start = time.perf_counter()
        keys, h = self.plan.baseline_keys(), self.hparams
        self.plan.prepare(first_pass(self, keys) if keys else None, self.device, h.massive_threshold, h.massive_ratio)
        self.head_masks.copy_(self.plan.head_masks())
        self.pruned_layers = pruned_layers(self.plan.head_masks())
        # each corpus counts what the edits change in its own windows
        self.edit_counts = [self.plan.counts, *(self.plan.new_counts() for _ in self.corpora[1:])]

    def forward_pass(self, batch: dict[str, Any], v: int, analyses: AnalysisCollection | None = None) -> Forward:
        """Variant number `v` of the plan on `batch`, under the probes `analyses` (default: this
        run's) need, each block output reduced in its hook for them."""
        analyses = self.analyses if analyses is None else analyses
        variant = self.variant_probes(v, batch["index"])
        reducers = analyses.reducers(self.stats_of)  # one top-k, median and candidate set per block
        tile = self.hparams.attention_tile
        with probes(self.layout, analyses.needs, attention_tile=tile, reducers=reducers, **variant) as probed:
            output = self.layout.backbone(input_ids=batch["input_ids"], use_cache=False)
        stats, text = probed.reduced["block_stats"], (batch.get("scored_bytes"), batch.get("scored_words"))
        return Forward(
            batch["input_ids"], batch["score_from"], probed, stats, output.last_hidden_state, self.layout, *text
        )

    def variant_probes(self, v: int, windows: Sequence[int]) -> dict[str, Any]:
        """What makes variant number `v` of the plan what it is, as `probes()` arguments: its
        head mask, its block edits for these windows (their indices), zeroed weights, q/k
        masks and fake quantization. The pass and lm-eval's (`lit_massive.tasks`) both run under these."""
        name, h = self.plan.names[v], self.hparams
        return {
            "head_mask": None if name == BASELINE else self.head_masks[v],
            "pruned_layers": self.pruned_layers[v],
            "edits": self.plan.block_edits(name, windows, h.massive_threshold, h.massive_ratio),
            "zeroed": self.plan.zeroed_weights(name),
            "qk_keep": self.plan.qk_masks(name),
            "quantize": self.plan.fake_quant(name),
        }

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        """Every variant on this batch of corpus number `dataloader_idx`, each analysis fed
        from the same forward pass. Nothing here reads a value back to the host (a test checks
        the ops), so on a GPU the step never waits for the device."""
        batch = without_fillers(batch)
        if batch is None:  # this rank is out of windows: join the others' collectives
            for _ in self.plan.names:
                filler_pass(self)
            return
        self.tokens.update(batch["input_ids"])
        self.plan.count_into(self.edit_counts[dataloader_idx])
        for v, measured in enumerate(self.measured[dataloader_idx]):
            forward = self.forward_pass(batch, v)
            self.analyses.update(measured, forward)
            del forward  # before the next pass: what this one recorded is not kept through it

    def on_validation_epoch_end(self) -> None:
        computed = self.analyses.compute()  # a collective: every rank computes
        tokens, wall = int(self.tokens.compute()), time.perf_counter() - self._start
        self.tokens.reset()
        timing = {"wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall,
                  "forward_passes_per_window": len(self.plan.names)}  # fmt: skip
        computed.update(evaluate_tasks(self))  # every variant through lm-eval, after the timed pass
        self.results = run_results(self, computed, timing)

    def decode(self, token_id: int) -> str:
        """A token id as text (its id as text without a tokenizer)."""
        tokenizer = getattr(self.trainer.datamodule, "tokenizer", None)
        return tokenizer.decode([token_id]) if tokenizer is not None else str(token_id)


def check_windows(layout: DecoderLayout, top_k: int, seq_len: int, largest_id: int) -> None:
    """The windows' token ids must be in the model's vocabulary, and top_k must fit in one
    block output of a window (seq_len x hidden size values)."""
    vocab = layout.vocab_size
    if largest_id >= vocab:
        raise InputError(
            f"the windows hold token id {largest_id}, outside the model's vocabulary of {vocab} "
            f"tokens: data.tokenizer is not this model's; leave it unset (the model's own) or "
            f"name a tokenizer whose ids are below {vocab}"
        )
    size = seq_len * layout.n_embd
    if top_k > size:
        raise InputError(
            f"top_k={top_k} is larger than a block output ({seq_len} tokens x "
            f"{layout.n_embd} dims = {size} values); use top_k <= {size}"
        )


def filler_pass(module: MassiveActivations) -> None:
    """One short forward pass for a rank that is out of windows: it joins the others'
    collectives (sharded layers) and is counted nowhere."""
    module.layout.backbone(input_ids=torch.zeros(1, 1, dtype=torch.long, device=module.device), use_cache=False)


@torch.no_grad()  # not inference_mode: sharded layers reuse gather buffers in later passes
def first_pass(module: MassiveActivations, keys: set[str]) -> dict[str, Any]:
    """The baseline entry, holding `keys`, from a pass of the unpruned model over this
    run's windows before the measured pass: some variants are defined by this run's own
    baseline (a selection without ``scores``, a ``mean`` edit without ``from``), and every
    variant runs on every batch, so it must be known before the first. Runs only the
    analyses that give `keys`, synced over all ranks, on the default corpus only: a variant
    is one model, defined once, and measured as it is on every corpus."""
    setup = Setup(module.layout, module.options, (BASELINE,))
    analyses = AnalysisCollection(setup, providers(keys)).to(module.device)
    with module.trainer.precision_plugin.forward_context():
        for batch in default_loader(module.trainer.val_dataloaders):
            batch = without_fillers(batch)
            if batch is None:  # this rank is out of windows: join the others' collectives
                filler_pass(module)
                continue
            batch = {**batch, "input_ids": batch["input_ids"].to(module.device)}
            batch["score_from"] = batch["score_from"].to(module.device)
            forward = module.forward_pass(batch, 0, analyses)
            analyses.update(BASELINE, forward)
            del forward  # before the next pass
    return analyses.entry({}, analyses.compute(), BASELINE, module.decode)  # a collective: every rank


def run_results(module: MassiveActivations, computed: dict[str, dict], timing: dict[str, float]) -> RunResults:
    """The run's `RunResults` from the analyses' computed states: what was measured on what,
    and each variant's entry per corpus (the default corpus's first), baseline first."""
    by_corpus = []
    for measured, counts in zip(module.measured, module.edit_counts, strict=True):
        module.plan.count_into(counts)
        variants: dict[str, dict] = {}
        for name, key in zip(module.plan.names, measured, strict=True):  # changes are against the baseline
            head = module.plan.describe(name)
            variants[name] = module.analyses.entry(head, computed, key, module.decode, variants.get(BASELINE))
        by_corpus.append(variants)
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
        sections=module.analyses.sections(module, variants),
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


def analysis_flags(analyses: Any) -> dict[str, bool]:
    """Each options group with an ``enabled`` field, on or off (results.json's ``model``)."""
    groups = dict.fromkeys(cls.options_group() for cls in ANALYSES.values())
    return {g: getattr(analyses, g).enabled for g in groups if hasattr(getattr(analyses, g, None), "enabled")}


def describe_model(
    model: nn.Module, layout: DecoderLayout, h: Mapping[str, Any], gguf: dict | None = None
) -> dict[str, Any]:
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
        **analysis_flags(registry.analysis_options(h.get("analyses"))),  # the analyses switched on and off
    }
