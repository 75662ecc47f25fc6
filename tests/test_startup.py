"""Start-up: the light commands (`configs`, `rank-heads`, `compare`, the top-level `--help`, no or an
unknown command, an unknown config name) import neither torch nor transformers nor
lightning, so they answer at once; each runs in a fresh process (`python -X importtime`
lists every module it imports)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from helpers import REPO

HEAVY = ("torch", "transformers", "lightning", "lightning_fabric", "pytorch_lightning", "datasets", "jsonargparse")


def _light_run(cwd, *args: str) -> tuple[subprocess.CompletedProcess, set[str], float]:
    """`python -m lit_massive ARGS` in a fresh process: (its result, the top-level packages
    it imported, wall seconds)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "lit_massive", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    seconds = time.monotonic() - start
    timed = [line for line in done.stderr.splitlines() if line.startswith("import time:")]
    imported = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in timed}
    done.stderr = "\n".join(line for line in done.stderr.splitlines() if not line.startswith("import time:"))
    return done, imported, seconds


@pytest.fixture
def scores_file(tmp_path):
    """A results.json with the scores `rank-heads` reads (no run needed): 2 layers x 3 heads."""
    path = tmp_path / "run" / "results.json"
    path.parent.mkdir()
    scores = [[0.1, 0.9, None], [0.5, 0.9, 0.2]]
    path.write_text(json.dumps({"variants": {"baseline": {"head_scores": scores, "massive_token_scores": scores}}}))
    return path


@pytest.mark.parametrize(
    "args, status, expected",
    [
        (["configs"], 0, "demo"),
        (["configs", "demo"], 0, "model_name_or_path: toy"),
        (["--help"], 0, "{validate,rank-heads,compare,configs,fetch}"),
        (["-h"], 0, "rank-heads"),
        ([], 1, "lit_massive: error: give a command: validate, rank-heads, compare, configs, fetch"),
        (["valdate"], 1, "lit_massive: error: unknown command 'valdate'; did you mean validate?"),
        (["validate", "--config", "nope.yaml"], 1, "neither an existing file nor a bundled config"),
        (["configs", "nope"], 1, "lit_massive: error: bundled config 'nope'"),
        (["fetch", "nope"], 1, "lit_massive: error: no trained model named 'nope' to fetch; valid: smollm2"),
    ],
)
def test_light_commands_import_no_torch(tmp_path, args, status, expected):
    done, imported, seconds = _light_run(tmp_path, *args)
    assert done.returncode == status, done.stderr[-2000:]
    assert expected in (done.stdout if status == 0 else done.stderr)
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))
    assert seconds < 10  # under 1 s here; the heavy imports alone took 10-17 s


def test_rank_heads_imports_no_torch(tmp_path, scores_file):
    done, imported, _ = _light_run(tmp_path, "rank-heads", str(scores_file), "--k", "2", "--out", str(tmp_path / "p"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| 1 | 0 | 1 | 0.9000 |" in done.stdout and "| 2 | 1 | 1 | 0.9000 |" in done.stdout  # a tie: (layer, head)
    assert done.stdout.splitlines()[-3] == "| 6 | 0 | 2 | nan |"  # null last
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["prune_bottom2.yaml", "prune_top2.yaml"]
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))
    bad, imported, _ = _light_run(tmp_path, "rank-heads", str(tmp_path / "none.json"))
    assert bad.returncode == 1 and "does not exist" in bad.stderr and not imported & set(HEAVY)


def _fake_run(directory, model: str, n_layer: int) -> str:
    """A run directory whose results.json has what `compare` reads (no run needed)."""
    layers = [{"layer": i, "top": [10.0 ** i, 1.0, 0.5], "median": 0.1, "top1_over_median": 10.0 ** (i + 1),
               "massive_fraction": 0.0, "top1_dim": 3, "top1_token": "the"} for i in range(n_layer)]  # fmt: skip
    entry = {"first_massive_layer": None, "layers": layers, "head_scores": None, "attention_to_massive": None,
             "perplexity": 12.5, "bits_per_byte": 1.25, "word_perplexity": 20.0}  # fmt: skip
    results = {"model": {"name_or_path": model, "model_type": "gpt2", "n_layer": n_layer, "n_embd": 8,
                         "vocab_size": 50, "parameter_dtype": "float32"},
               "parallel": {"parameter_bytes_full": 5000}, "data": None, "variants": {"baseline": entry}}  # fmt: skip
    directory.mkdir(parents=True)
    (directory / "results.json").write_text(json.dumps(results))
    return str(directory)


def test_compare_imports_no_torch(tmp_path):
    a = _fake_run(tmp_path / "lightning_logs" / "a" / "version_0", "org/a", 2)
    b = _fake_run(tmp_path / "lightning_logs" / "b" / "version_0", "b", 3)
    done, imported, seconds = _light_run(tmp_path, "compare", a, b, "--out", str(tmp_path / "cmp"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "a/version_0" in done.stdout and "12.5000" in done.stdout and "1.25k (2 x 8)" in done.stdout
    written = sorted(p.name for p in (tmp_path / "cmp").iterdir())
    assert written == ["comparison.json", "comparison.md", "top1_median.png"]
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))
    assert seconds < 10
    bad, imported, _ = _light_run(tmp_path, "compare", a)
    assert bad.returncode == 1 and "compare needs two or more runs" in bad.stderr and not imported & set(HEAVY)


def test_the_package_and_the_results_reader_import_no_torch(tmp_path, scores_file):
    code = (
        "import sys, lit_massive; from lit_massive import read_results; "
        "from lit_massive.results.schema import load_score_rows; "
        "from lit_massive.results.names import BASELINE, SCORES; "
        "from lit_massive.results.ranking import rank_heads; "
        f"assert read_results({str(scores_file)!r})['variants']; "
        f"assert load_score_rows({str(scores_file)!r})[0][1] == 0.9; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in " + repr(HEAVY) + "))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_lazy_names_of_the_package_still_import():
    import lit_massive

    assert lit_massive.measure.__name__ == "measure"
    from lit_massive import MassiveActivations, RunResults, WindowsDataModule

    assert {MassiveActivations.__name__, RunResults.__name__, WindowsDataModule.__name__} == {
        "MassiveActivations",
        "RunResults",
        "WindowsDataModule",
    }
    assert set(lit_massive.__all__) <= set(dir(lit_massive))
    with pytest.raises(AttributeError):
        lit_massive.no_such_name  # noqa: B018
