"""`model.analyses.tasks`: lm-evaluation-harness tasks run on every variant after the pass, the option
and its checks. Everything here runs before any work (in the module's `__init__`), so a
missing extra, an unknown task or data that cannot be had is one line and no run directory.

lm-eval is an optional extra (`pip install "lit_massive[tasks]"`): nothing here imports it
at module level, and `compare` or a run without tasks never does.
"""

from __future__ import annotations

import difflib
import functools
import logging
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lit_massive.errors import InputError
from lit_massive.options import NonNegativeInt, PositiveInt, check_options

if TYPE_CHECKING:
    from lit_massive.variants import VariantPlan

EXTRA = 'pip install "lit_massive[tasks]"'  # lm-eval with its Hugging Face wrapper (lm-eval[hf])
GENERATES = "generate_until"  # lm-eval's output type of tasks that generate text
YAML = (".yaml", ".yml")


@dataclass
class Tasks:
    """lm-evaluation-harness tasks, evaluated on the baseline and on every variant, with the
    variant active, after the validation pass (``docs/tasks.md``)."""

    names: list[str] = field(default_factory=list)  # task, group or tag names of lm-eval, or paths to task YAML files
    limit: PositiveInt | None = None  # the first N documents of each task; null: all of them
    batch_size: PositiveInt = 1  # requests per forward pass (lm-eval pads each batch's rows on the right)
    num_fewshot: NonNegativeInt | None = None  # null: each task's own (0 unless its config says otherwise)
    bootstrap_iters: NonNegativeInt = 100000  # lm-eval's default; the stderr of an accuracy needs none (0: no stderrs)


def as_tasks(value: Tasks | Mapping[str, Any] | None) -> Tasks | None:
    """`model.analyses.tasks` as a `Tasks` (LightningCLI gives one; a Python caller may give a dict)."""
    if value is None or isinstance(value, Tasks):
        return value
    if not isinstance(value, Mapping):
        raise InputError(f"model.analyses.tasks: a mapping with names, limit, batch_size, got {type(value).__name__}")
    unknown = sorted(set(value) - set(Tasks.__dataclass_fields__))
    if unknown:
        raise InputError(
            f"model.analyses.tasks: no option {unknown[0]!r}; valid: {', '.join(Tasks.__dataclass_fields__)}"
        )
    try:
        check_options(Tasks, value)  # Python callers: LightningCLI checked already
    except InputError as err:
        raise InputError(f"model.analyses.tasks: {err}") from err
    return Tasks(**value)


def is_path(name: str) -> bool:
    """Whether a `names` entry is a task YAML file rather than a registered name."""
    return name.lower().endswith(YAML) or "/" in name or "\\" in name


@contextmanager
def quiet_lm_eval() -> Iterator[None]:
    """lm-eval's INFO lines and the warnings it logs about a model passed in already loaded
    (expected here) hidden for the duration; its errors, and every warning of ours, stay."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="lm_eval")
            yield
    finally:
        logger.setLevel(level)


def import_lm_eval() -> Any:
    """lm_eval and its Hugging Face wrapper, or one line naming the extra."""
    try:
        import lm_eval
        import lm_eval.models.huggingface  # noqa: F401  (imports accelerate: lm-eval's `hf` extra)
    except ImportError as err:
        why = f"model.analyses.tasks needs lm-evaluation-harness and its Hugging Face wrapper: {EXTRA} ({err})"
        raise InputError(why) from err
    return lm_eval


@functools.lru_cache(maxsize=2)
def task_manager(with_registered: bool) -> Any:
    """lm-eval's `TaskManager`: indexing its ~15,000 registered tasks takes seconds, so paths
    alone skip it, and each process indexes once."""
    from lm_eval.tasks import TaskManager

    with quiet_lm_eval():
        return TaskManager(include_defaults=with_registered)


def _dataset_of(manager: Any, name: str) -> str | None:
    """The dataset a registered task reads (`dataset_path`, with `dataset_name`), if its
    config says; None for a group, a tag or a task file."""
    entry = manager.task_index.get(name)
    cfg = getattr(entry, "cfg", None) or {}
    path = cfg.get("dataset_path")
    return None if path is None else f"{path} ({cfg['dataset_name']})" if cfg.get("dataset_name") else path


def _load_one(manager: Any, name: str) -> dict[str, Any]:
    """One `names` entry's leaf tasks (name -> lm-eval Task), their data loaded, or one line
    naming the dataset that cannot be had."""
    try:
        with quiet_lm_eval():
            return manager.load([name])["tasks"]
    except OSError as err:  # ConnectionError (offline), FileNotFoundError (DatasetNotFoundError)
        dataset = _dataset_of(manager, name)
        what = f"its dataset {dataset}" if dataset else "its data"
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(
            f"model.analyses.tasks: task {name!r}: {what} cannot be had here ({first}); load it once with network "
            f"access (the datasets cache keeps it), or name a task YAML whose data is local"
        ) from err
    except Exception as err:  # lm-eval's own refusal of a task file or config
        if type(err).__module__.startswith("datasets"):  # DatasetNotFoundError and its kin
            dataset = _dataset_of(manager, name) or "its dataset"
            raise InputError(f"model.analyses.tasks: task {name!r}: {dataset} cannot be had here ({err})") from err
        raise InputError(
            f"model.analyses.tasks: task {name!r}: lm-eval cannot load it ({type(err).__name__}: {err})"
        ) from err


def load_tasks(tasks: Tasks) -> dict[str, Any]:
    """Every leaf task of `tasks.names` (lm-eval's name -> its Task, data loaded), checked:
    each path a file, each name registered (one line with the closest names otherwise)."""
    import_lm_eval()
    if not tasks.names:
        raise InputError(
            "model.analyses.tasks.names is empty; name lm-eval tasks (arc_easy, piqa, ...) or task YAML files"
        )
    names = [n for n in tasks.names if not is_path(n)]
    manager = task_manager(bool(names))
    for name in tasks.names:
        if is_path(name) and not Path(name).expanduser().is_file():
            raise InputError(f"model.analyses.tasks: no task file {name!r}")
        if not is_path(name) and name not in manager.task_index:
            close = difflib.get_close_matches(name, manager.all_tasks, n=3, cutoff=0.6)
            hint = f"; closest: {', '.join(close)}" if close else ""
            raise InputError(
                f"model.analyses.tasks: unknown task {name!r}{hint} (lm-eval knows {len(manager.all_tasks)} task, "
                f"group and "
                f"tag names; python -m lm_eval ls tasks lists them)"
            )
    loaded: dict[str, Any] = {}
    for name in tasks.names:
        path = str(Path(name).expanduser()) if is_path(name) else name
        loaded.update(_load_one(manager, path))
    return loaded


def check_tasks(value: Tasks | Mapping[str, Any] | None, plan: VariantPlan) -> Tasks | None:
    """`model.analyses.tasks` checked before any work: lm-eval installed, every task known, its data
    at hand, and no task that generates text under a variant that edits block outputs (its
    edit is per sequence: generation with a KV cache feeds one new token per forward pass,
    so the edit would not see the sequence a forward pass over it sees)."""
    tasks = as_tasks(value)
    if tasks is None:
        return None
    loaded = load_tasks(tasks)
    generating = [name for name, task in loaded.items() if task.OUTPUT_TYPE == GENERATES]
    edited = [name for name in plan.names if name in plan.edits]
    if generating and edited:
        raise InputError(
            f"model.analyses.tasks: task {generating[0]!r} generates text, which variant {edited[0]!r} cannot run: its "
            f"block-output edit is made per sequence, and generation feeds one new token per forward pass; "
            f"use multiple-choice or log-likelihood tasks with edit variants"
        )
    return tasks


def check_tasks_strategy(trainer: Any, tasks: Tasks | Mapping[str, Any] | None) -> None:
    """Tasks run unsharded: on one process, or under DDP each process on its share of the
    documents. Under FSDP2 every forward pass of a sharded layer is a collective that all
    processes join in step, while lm-eval batches each process's documents by their lengths."""
    from lit_massive.models.sharding import SHARDED, is_sharded

    if as_tasks(tasks) is not None and is_sharded(trainer):
        raise InputError(
            f"model.analyses.tasks with trainer.strategy={SHARDED} is not supported: every forward pass of a sharded "
            f"layer "
            f"is a collective all processes join in step, while lm-eval batches each process's documents by their "
            f"own lengths; run the tasks with ddp (each process takes a share of the documents) or one process"
        )
