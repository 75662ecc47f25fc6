"""Figures and tables name a local model by its short name (its run directory's), not by
the absolute path that results.json keeps."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

import lit_massive
from lit_massive.report import callback
from lit_massive.report.callback import shown_model
from lit_massive.report.publisher import Publisher
from lit_massive.results.schema import read_results


class Titles(Publisher):
    """A Publisher that also keeps every figure's titles (its own and its axes')."""

    seen: list[str] = []

    def figure(self, tag: str, fig) -> None:
        suptitle = [fig._suptitle.get_text()] if fig._suptitle is not None else []
        Titles.seen.append(" | ".join(t for t in [*suptitle, *(ax.get_title() for ax in fig.axes)] if t))
        super().figure(tag, fig)


def test_figures_name_a_local_model_by_its_folder(tmp_path, tiny_gpt2_dir, monkeypatch):
    monkeypatch.setattr(callback, "Publisher", Titles)
    Titles.seen = []
    text = "Summer is warm. Winter is cold. " * 20
    lit_massive.measure(
        str(tiny_gpt2_dir), text=text, tokenizer=AutoTokenizer.from_pretrained(tiny_gpt2_dir), seq_len=32,
        num_sequences=2, analyses=["head_scores", "feature_view", "value_norms"], run_dir=tmp_path / "run",
    )  # fmt: skip
    assert len(Titles.seen) > 5
    assert all(title.startswith(f"{tiny_gpt2_dir.name}: ") for title in Titles.seen), Titles.seen
    assert not [title for title in Titles.seen if str(tiny_gpt2_dir.parent) in title]
    assert read_results(tmp_path / "run")["model"]["name_or_path"] == str(tiny_gpt2_dir)  # the full path stays


@pytest.mark.parametrize(
    "model, shown",
    [
        ({"name_or_path": "/root/.cache/lit_massive/SmolLM2-135M-Instruct.Q4_1.gguf"}, "SmolLM2-135M-Instruct.Q4_1"),
        ({"name_or_path": "/models/smol", "gguf_file": "smol.Q8_0.gguf"}, "smol.Q8_0"),
        ({"name_or_path": "EleutherAI/pythia-160m", "revision": "step1000"}, "pythia-160m@step1000"),
        ({"name_or_path": "toy", "revision": None, "gguf_file": None}, "toy"),
    ],
)
def test_the_shown_name_is_the_run_directorys(model, shown):
    assert shown_model(model) == shown
