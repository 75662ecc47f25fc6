#!/usr/bin/env bash
# Prove the dependency floors: install exactly the lower bounds of pyproject.toml's
# dependencies (every `>=` read as `==`) in a fresh venv, install the project itself
# (non-editable, --no-deps), then run the offline demo by its bundled name from an empty
# directory and a fast subset of the tests. Several minutes of downloads: not part of .ci/run.
#   bash scripts/check_min_deps.sh [PYTHON]      (default python3; keep the venv: KEEP=1)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
python=${1:-python3}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/lit_massive_min_deps.XXXXXX")
[[ "${KEEP:-0}" == 1 ]] || trap 'rm -rf "$tmp"' EXIT
start=$SECONDS

"$python" -m venv "$tmp/venv"
source "$tmp/venv/bin/activate"
mapfile -t floors < <(python - <<'PY'
import tomllib
for dep in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    print(dep.replace(">=", "=="))
PY
)
echo "floors: ${floors[*]}"
torch_floor=$(printf '%s\n' "${floors[@]}" | grep '^torch==')
# torch first, on its own, so that pip takes the local CPU build, not a multi-GB CUDA one
pip install --quiet --disable-pip-version-check "$torch_floor"
pip install --quiet --disable-pip-version-check "${floors[@]}" pytest
pip install --quiet --disable-pip-version-check --no-deps "$repo"
pip list --disable-pip-version-check 2>/dev/null | grep -iE '^(torch|lightning|transformers|datasets|torchmetrics|jsonargparse|tensorboard|matplotlib|numpy|huggingface.hub|pyarrow|tokenizers) '

mkdir "$tmp/run" && cd "$tmp/run"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
python -m lit_massive validate --config demo.yaml --trainer.enable_progress_bar false
python -m lit_massive validate --config prune_top --model.model_name_or_path toy --data.dataset toy \
    --data.seq_len 128 --data.num_sequences 4 --trainer.enable_progress_bar false

# the tests import the installed package (pytest's rootdir conftest puts only tests/ on the path);
# the families tests lean on transformers internals (attention registry, masks), so a few run here
cd "$repo"
pytest -q -p no:cacheprovider tests/test_toy.py tests/test_metrics.py tests/test_data.py tests/test_heads.py \
    tests/test_packaging.py tests/test_sync_free.py tests/test_families.py \
    -k "not wheel and not two_processes and (not family_matches or gpt2 or llama or gemma2 or mistral or olmo2 or opt)"
echo "check_min_deps: floors proved in $((SECONDS - start)) s: ${floors[*]}"
