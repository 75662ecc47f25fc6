"""Downstream tasks of every variant through lm-evaluation-harness, in the same run
(`model.analyses.tasks`, docs/tasks.md), by role:

- `spec`: the option (`Tasks`) and its checks, made before any work;
- `harness`: lm-eval's Hugging Face wrapper around the loaded model with a variant active,
  and the evaluation of every variant (imported only when a run has tasks: it imports
  lm-eval, an optional extra);
- `analysis`: the scores as an analysis of the registry (importing it registers it):
  results.json keys, change vs the baseline, tables, TensorBoard;
- `scores`: plain-Python helpers on the scores, which `compare` reads too (no torch).
"""
