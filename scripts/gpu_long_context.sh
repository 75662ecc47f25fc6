#!/usr/bin/env bash
# GPU rows of the benchmark: tokens/s and peak memory of a validation pass (head scores with the
# attention internals, perplexity) at 4k, 16k and 32k tokens on a random 7B-shaped Llama in bf16,
# against a bare forward pass (benchmarks/long_context.py). Run once, from anywhere, on a machine
# with one GPU; the whole script stays under BUDGET_S seconds (default 470, about 8 minutes):
# the benchmark gets what is left after the setup, under `timeout` (SIGINT first, so it deletes
# its 13.5 GB temporary checkpoint; SIGKILL 15 s later). Each length's line is printed as it
# finishes, so a cut-off run still shows the lengths it measured. Output goes to
# "$OUT/long_context.txt" when OUT is set (and to stdout). Extra benchmark flags: ARGS="--no-internals".
set -euo pipefail
cd "$(dirname "$0")/.."
budget=${BUDGET_S:-470}

main() {
    nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv || true
    if ! python -c 'import lit_massive' 2>/dev/null; then
        pip install -e . --quiet
    fi
    python -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())'
    local left=$((budget - SECONDS))
    echo "benchmark time limit: ${left} s"
    local rc=0
    # shellcheck disable=SC2086  # ARGS: several flags
    timeout -s INT -k 15 "$left" python -u benchmarks/long_context.py --device cuda ${ARGS:-} || rc=$?
    [[ $rc == 124 ]] && echo "stopped at the time limit (${left} s): the lengths above finished, the rest did not"
    echo "exit status ${rc}; ${SECONDS} s in all"
    return "$rc"
}

if [[ -n "${OUT:-}" ]]; then
    mkdir -p "$OUT"
    main 2>&1 | tee "$OUT/long_context.txt"
else
    main 2>&1
fi
