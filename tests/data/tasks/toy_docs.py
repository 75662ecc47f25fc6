"""The test tasks' documents: a JSONL file beside this one, as lm-eval's `custom_dataset`
(`!function toy_docs.load` in the task YAML), so a task loads offline from any directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict


def load(file: str, **metadata: Any) -> DatasetDict:
    """The documents of `file` (JSONL, next to this module) as the `test` split."""
    rows = (Path(__file__).parent / file).read_text(encoding="utf-8").splitlines()
    return DatasetDict({"test": Dataset.from_list([json.loads(row) for row in rows if row.strip()])})
