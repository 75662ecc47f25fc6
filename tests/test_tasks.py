"""model.analyses.tasks: every variant through lm-evaluation-harness after the pass, on two small task
files of tests/data/tasks whose answers the toy's planted structure decides (their YAML and
make_toy_tasks.py say how). The references are written without project code: the choices'
log-likelihoods computed by hand on the toy with the edit made by a hook of the test's own,
and lm-eval's own API (`HFLM` + `simple_evaluate`) on the same hand-edited toy."""

import contextlib
import io
import json
import math
import os
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from helpers import REPO, run_validate, run_validate_ddp, tensorboard_events, toy_run_args
from lit_massive.errors import InputError
from lit_massive.models.toy import ToyConfig, build_toy_model, build_toy_tokenizer

os.environ.setdefault("DISABLE_MULTIPROC", "1")  # lm-eval's bootstrap of a perplexity's stderr: no process pool

TASKS = REPO / "tests" / "data" / "tasks"
CHOICE, WORD = TASKS / "toy_choice.yaml", TASKS / "toy_word.yaml"
TOY = ToyConfig()
WRITER = TOY.writer_head  # (8, 3): reads the massive activation, writes dim 40 everywhere
VARIANTS = {
    "zero": {"set_massive": {"layer": TOY.massive_layer, "to": "zero"}},
    "mean": {"set_massive": {"layer": TOY.massive_layer, "to": "mean"}},
    "control": {"set_random": {"layer": TOY.massive_layer, "seed": 3}},
    "cut": [list(WRITER)],
}
BATCH = 3  # lm-eval's batches of requests: rows padded on the right
BOOTSTRAP = 1000
TASK_OPTION = {"names": [str(CHOICE), str(WORD)], "batch_size": BATCH, "bootstrap_iters": BOOTSTRAP}


def docs(name: str) -> list[dict]:
    return [json.loads(line) for line in (TASKS / f"{name}.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------
# the edits, by hand


def zero_massive_hook(module, args, output):
    """Block output entries with |x| > 100 and > 1000 x the sequence's median |x| set to 0."""
    x = output[0] if isinstance(output, tuple) else output
    median = x.abs().flatten(1).median(dim=1).values[:, None, None]
    x = x.masked_fill((x.abs() > 100) & (x.abs() > 1000 * median), 0.0)
    return (x, *output[1:]) if isinstance(output, tuple) else x


def set_massive_hook(value: float):
    def hook(module, args, output):
        x = output[0] if isinstance(output, tuple) else output
        median = x.abs().flatten(1).median(dim=1).values[:, None, None]
        x = torch.where((x.abs() > 100) & (x.abs() > 1000 * median), torch.full_like(x, value), x)
        return (x, *output[1:]) if isinstance(output, tuple) else x

    return hook


def prune_hook(head: int, head_dim: int):
    """Head `head`'s slice of the attention output projection's input set to 0."""

    def hook(module, args):
        x = args[0].clone()
        x[..., head * head_dim : (head + 1) * head_dim] = 0
        return (x,)

    return hook


def edited_toy(variant: str, mean: float | None = None) -> torch.nn.Module:
    """The toy with variant `variant`'s edit made by a hook registered here."""
    model = build_toy_model()
    block = model.transformer.h
    if variant == "zero":
        block[TOY.massive_layer].register_forward_hook(zero_massive_hook)
    elif variant == "mean":
        block[TOY.massive_layer].register_forward_hook(set_massive_hook(mean))
    elif variant == "cut":
        layer, head = WRITER
        block[layer].attn.c_proj.register_forward_pre_hook(prune_hook(head, TOY.n_embd // TOY.n_head))
    return model


# ---------------------------------------------------------------------------------------
# the scores, by hand


@torch.no_grad()
def loglikelihood(model, tok, context: str, continuation: str) -> tuple[float, bool]:
    """(sum of log p(continuation token), every one of them the argmax) after `context`."""
    whole = tok.encode(context + continuation, add_special_tokens=False)
    n = len(whole) - len(tok.encode(context, add_special_tokens=False))
    logp = model(torch.tensor([whole[:-1]])).logits[0].float().log_softmax(-1)[-n:]
    target = torch.tensor(whole[-n:])
    return logp.gather(1, target[:, None]).sum().item(), bool((logp.argmax(-1) == target).all())


def mean_and_stderr(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), statistics.stdev(xs) / math.sqrt(len(xs))


def hand_scores(model) -> dict[str, dict[str, float]]:
    tok = build_toy_tokenizer()
    acc, acc_norm = [], []
    for doc in docs("toy_choice"):
        lls = [loglikelihood(model, tok, doc["query"], " " + c)[0] for c in doc["choices"]]
        acc.append(float(max(range(len(lls)), key=lls.__getitem__) == doc["gold"]))
        norm = [ll / len(c) for ll, c in zip(lls, doc["choices"], strict=True)]
        acc_norm.append(float(max(range(len(norm)), key=norm.__getitem__) == doc["gold"]))
    word = [loglikelihood(model, tok, doc["context"], " " + doc["target"]) for doc in docs("toy_word")]
    (a, a_err), (n, n_err) = mean_and_stderr(acc), mean_and_stderr(acc_norm)
    greedy, greedy_err = mean_and_stderr([float(g) for _, g in word])
    return {
        "toy_choice": {"acc": a, "acc_stderr": a_err, "acc_norm": n, "acc_norm_stderr": n_err},
        "toy_word": {
            "perplexity": math.exp(-statistics.fmean(ll for ll, _ in word)),
            "acc": greedy,
            "acc_stderr": greedy_err,
        },
    }


# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tasks_run(tmp_path_factory):
    """The toy with four variants and both tasks: (run dir, results, what it printed)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        run_dir, results = run_validate(
            tmp_path_factory.mktemp("tasks"),
            *toy_run_args("--model.variants", json.dumps(VARIANTS), n=2, batch_size=2),
            "--model.analyses.tasks",
            json.dumps(TASK_OPTION),
        )
    return run_dir, results, printed.getvalue()


@pytest.mark.slow  # in the full suite only: keeps the fast loop under 5 minutes
def test_zeroing_the_massive_activation_costs_a_known_accuracy(tasks_run):
    _, results, _ = tasks_run
    variants = results["variants"]
    # the planted writer decides every answer; without the massive activation it decides half
    assert variants["baseline"]["tasks"]["toy_choice"]["acc"] == 1.0
    assert variants["zero"]["tasks"]["toy_choice"]["acc"] == 0.5
    assert variants["zero"]["change_vs_baseline"]["tasks"]["toy_choice"]["acc"] == pytest.approx(-50.0)
    assert variants["baseline"]["tasks"]["toy_word"]["acc"] == 1.0
    assert variants["zero"]["tasks"]["toy_word"]["acc"] == 0.5
    # mean and the control keep it (the paper's table); pruning the writer loses it
    for name in ("mean", "control"):
        assert variants[name]["tasks"]["toy_choice"]["acc"] == 1.0, name
    assert variants["cut"]["tasks"]["toy_choice"]["acc"] < 0.5
    change = variants["zero"]["change_vs_baseline"]["tasks"]["toy_word"]
    assert set(change) == {"acc", "perplexity_pct"} and change["perplexity_pct"] > 0  # a perplexity: relative


@pytest.mark.parametrize("variant", ["baseline", "zero", "mean", "cut"])
def test_every_score_equals_a_hand_computation_with_the_same_edit(tasks_run, variant):
    _, results, _ = tasks_run
    located = [e for e in results["variants"]["baseline"]["massive"] if e["layer"] == TOY.massive_layer]
    (entry,) = located  # the toy's one massive activation: dim 17, position 0
    expected = hand_scores(edited_toy(variant, mean=entry["value"]))
    got = results["variants"][variant]["tasks"]
    for task, scores in expected.items():
        for metric, value in scores.items():
            assert got[task][metric] == pytest.approx(value, rel=1e-4, abs=1e-9), (task, metric)


def test_equal_to_lm_eval_on_the_hand_edited_toy(tasks_run):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    _, results, _ = tasks_run
    for variant in ("baseline", "zero", "cut"):
        lm = HFLM(pretrained=edited_toy(variant), tokenizer=build_toy_tokenizer(), batch_size=BATCH)
        reported = simple_evaluate(
            model=lm,
            tasks=[str(CHOICE), str(WORD)],
            task_manager=TaskManager(include_defaults=False),
            bootstrap_iters=BOOTSTRAP,
            log_samples=False,
        )
        for task, block in reported["results"].items():
            ours = results["variants"][variant]["tasks"][task]
            theirs = {k.removesuffix(",none"): v for k, v in block.items() if k.endswith(",none")}
            assert ours.keys() == theirs.keys()
            for metric, value in theirs.items():
                assert ours[metric] == pytest.approx(value, rel=1e-6), (variant, task, metric)


def test_the_run_says_what_it_evaluated_and_publishes_it(tasks_run):
    import lm_eval

    run_dir, results, printed = tasks_run
    record = results["tasks"]
    assert record["lm_eval_version"] == lm_eval.__version__
    assert record["tasks"]["toy_choice"] == {
        "version": 1.0,
        "documents": 8,
        "documents_in_task": 8,
        "output_type": "multiple_choice",
        "num_fewshot": 0,
        "higher_is_better": {"acc": True, "acc_norm": True},
    }
    assert record["tasks"]["toy_word"]["output_type"] == "loglikelihood"
    assert record["batch_size"] == BATCH and record["processes"] == 1
    # a column per task in the terminal table, the change in points
    lines = printed.splitlines()
    head = next(line for line in lines if line.startswith("variant"))
    assert "toy_choice acc" in head and "toy_word acc" in head
    zero = next(line for line in lines if line.startswith("zero "))
    assert "50.0 (-50.0 pts)" in zero
    # TensorBoard: each variant's scores and changes
    events = tensorboard_events(run_dir, "zero")
    assert events.Scalars("tasks/toy_choice/acc")[0].value == pytest.approx(0.5)
    assert events.Scalars("tasks/toy_choice/acc_change")[0].value == pytest.approx(-50.0)
    assert "tasks/table/text_summary" in tensorboard_events(run_dir).Tags()["tensors"]


def test_compare_shows_the_scores(tasks_run, tmp_path):
    from lit_massive.report.comparison import comparison_rows, load_runs, terminal_table

    run_dir, _, _ = tasks_run
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "results.json").write_text((run_dir / "results.json").read_text())
    rows = comparison_rows(load_runs([str(run_dir), str(copy)]))
    zero = next(r for r in rows if r["variant"] == "zero")
    assert zero["tasks"]["toy_choice"]["acc"] == 0.5 and zero["tasks_change"]["toy_choice"]["acc"] == -50.0
    table = terminal_table(rows, [])
    assert table.splitlines()[0].rstrip().endswith("tasks")
    assert "toy_choice acc 50.0 (-50.0 pts); toy_word acc 50.0 (-50.0 pts)" in table


def generating_task(tmp_path: Path) -> Path:
    """A task that generates text (output type generate_until), on toy_word's documents."""
    path = tmp_path / "toy_generate.yaml"
    path.write_text(
        "task: toy_generate\n"
        "dataset_path: json\n"
        f"dataset_kwargs: {{data_files: {{test: {TASKS / 'toy_word.jsonl'}}}}}\n"
        "test_split: test\n"
        "output_type: generate_until\n"
        'doc_to_text: "{{context}}"\n'
        'doc_to_target: "{{target}}"\n'
        "generation_kwargs: {until: ['.'], max_gen_toks: 1, do_sample: false}\n"
        "metric_list: [{metric: exact_match, aggregation: mean, higher_is_better: true, regexes_to_ignore: [' ']}]\n"
    )
    return path


def test_from_python_with_generation_and_pruned_heads(tmp_path):
    """`measure(analyses={"tasks": ...})`; a task that generates
    text runs with head pruning, whose hooks work with the KV cache: the toy generates the
    planted writer's word, and without the writer another."""
    import lit_massive

    tasks = {"names": [str(CHOICE), str(generating_task(tmp_path))], "limit": 2, "bootstrap_iters": 0}
    data = {"dataset": "toy", "seq_len": 128, "num_sequences": 1}
    analyses = {"perplexity": True, "super_weights": False, "tasks": tasks}
    results = lit_massive.measure("toy", data, analyses=analyses, variants={"cut": [list(WRITER)]})
    for name in ("baseline", "cut"):
        scores = results.variants[name]["tasks"]
        assert set(scores) == {"toy_choice", "toy_generate"}
        assert scores["toy_choice"]["acc_stderr"] is None  # bootstrap_iters 0: no stderr
    assert results.variants["baseline"]["tasks"]["toy_choice"]["acc"] == 1.0
    assert results.variants["baseline"]["tasks"]["toy_generate"]["exact_match"] == 1.0
    assert results.variants["cut"]["tasks"]["toy_generate"]["exact_match"] == 0.0
    assert results.sections["tasks"]["tasks"]["toy_generate"]["documents"] == 2


# ---------------------------------------------------------------------------------------
# bad input: one line, no run directory


def _error(tmp_path, tasks: dict, *args: str) -> str:
    with pytest.raises(SystemExit) as info:
        run_validate(tmp_path, *toy_run_args(*args, n=1), "--model.analyses.tasks", json.dumps(tasks))
    message = str(info.value.code)
    assert message.startswith("lit_massive: error: ") and "\n" not in message, message
    assert not list(tmp_path.glob("lightning_logs/*"))
    return message


def test_without_lm_eval_one_line_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval fails as if not installed
    msg = _error(tmp_path, {"names": [str(CHOICE)]})
    assert 'pip install "lit_massive[tasks]"' in msg


@pytest.mark.slow  # in the full suite only: keeps the fast loop under 5 minutes
def test_unknown_task_names_the_closest(tmp_path):
    msg = _error(tmp_path, {"names": ["arc_eazy"]})
    assert "unknown task 'arc_eazy'" in msg and "arc_easy" in msg


def test_task_data_not_at_hand_names_the_dataset(tmp_path):
    msg = _error(tmp_path, {"names": ["arc_easy"]})
    assert "'arc_easy'" in msg and "allenai/ai2_arc" in msg and "cannot be had" in msg


def test_missing_task_file(tmp_path):
    msg = _error(tmp_path, {"names": [str(tmp_path / "no_such.yaml")]})
    assert "no task file" in msg and "no_such.yaml" in msg


def test_generation_under_an_edit_is_refused(tmp_path):
    zero = json.dumps({"zero": VARIANTS["zero"]})
    msg = _error(tmp_path, {"names": [str(generating_task(tmp_path))]}, "--model.variants", zero)
    assert "'toy_generate' generates text" in msg and "'zero'" in msg


def test_from_python_a_bad_value_is_one_line():
    import lit_massive

    with pytest.raises(InputError, match=r"^analyses.tasks.limit=0: must be > 0$"):
        analyses = {"tasks": {"names": [str(CHOICE)], "limit": 0}}
        lit_massive.measure("toy", {"dataset": "toy", "seq_len": 128}, analyses=analyses)


def test_a_sharded_run_is_refused():
    from lightning.pytorch.strategies import ModelParallelStrategy

    from lit_massive.tasks.spec import check_tasks_strategy

    with pytest.raises(InputError, match="model_parallel is not supported"):
        check_tasks_strategy(SimpleNamespace(strategy=ModelParallelStrategy()), {"names": [str(CHOICE)]})
    check_tasks_strategy(SimpleNamespace(strategy=ModelParallelStrategy()), None)  # no tasks: nothing to refuse


@pytest.mark.slow
def test_two_processes_share_the_documents_and_agree_with_one(tasks_run, tmp_path):
    _, one, _ = tasks_run
    two = run_validate_ddp(
        tmp_path,
        *toy_run_args("--model.variants", json.dumps(VARIANTS), n=2, batch_size=1),
        "--model.analyses.tasks",
        json.dumps(TASK_OPTION),
    )
    assert two["tasks"]["processes"] == 2
    for name, entry in one["variants"].items():
        if name == "control":  # its draws are seeded by each padded row, which batches differ in
            continue
        for task, scores in entry["tasks"].items():
            for metric, value in scores.items():
                # a bootstrapped stderr (a perplexity's) resamples the documents in the order lm-eval
                # gathers them (process by process): the same estimate, other draws
                rel = 0.1 if metric == "perplexity_stderr" else 1e-4
                assert two["variants"][name]["tasks"][task][metric] == pytest.approx(value, rel=rel), (name, metric)
