"""The PRM training recipe's parts: format adaptation, the labels cache, validation (the verifier
layers: test_surprise_stage.py)."""

import pytest

from reasoning_viz.train.labels import LabelConfig, load_or_label
from reasoning_viz.train.prm import adapt_to_format, format_lm_example, gold_format_example


def test_format_example_trains_next_tokens_of_the_steps_only(tiny_models):
    prm = tiny_models.scorer
    question = "Noah has 18 cards. He buys 2 more cards. How many?"
    steps = ["Buys 2: 18 + 2 = 20", r"The answer is \boxed{20}."]
    ids, labels = format_lm_example(prm, question, steps)
    assert ids == prm.encode(question, steps) and len(labels) == len(ids)
    trained = prm.tokenizer.decode([t for t, y in zip(ids, labels) if y != -100])
    assert "Noah" not in trained and "18 + 2 = 20" in trained and r"\boxed{20}" in trained
    tags = [i for i, t in enumerate(ids) if t == prm.step_tag_id]
    assert len(tags) == 2
    # where the PRM reads + / -, next-token training must not pull towards what the text has there
    assert all(labels[i + 1] == -100 for i in tags if i + 1 < len(ids))


def test_format_adaptation_trains_the_answer_line_too(tiny_models):
    from reasoning_viz.train.policy import ProblemStream

    prm = tiny_models.scorer
    problem = ProblemStream(5).next()
    ids, labels = gold_format_example(prm, problem)
    trained = prm.tokenizer.decode([t for t, y in zip(ids, labels) if y != -100])
    assert f"\\boxed{{{problem.answer}}}" in trained and problem.steps[-1] in trained


def test_format_adaptation_teaches_the_policy_the_prm_format():
    """A few steps of next-token training of the larger model on gold solutions lower its loss on unseen ones
    in the PRM's format."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reasoning_viz.models.scorers import MathShepherdPRM
    from reasoning_viz.models.presets import BUNDLED_LARGE
    from reasoning_viz.train.common import pad_batch
    from reasoning_viz.train.policy import ProblemStream

    torch.manual_seed(0)
    prm = MathShepherdPRM(AutoModelForCausalLM.from_pretrained(BUNDLED_LARGE),
                          AutoTokenizer.from_pretrained(BUNDLED_LARGE))
    held = [format_lm_example(prm, p.question, list(p.steps)) for p in (ProblemStream(99).next() for _ in range(16))]
    batch = pad_batch([e[0] for e in held], [e[1] for e in held], prm.tokenizer.pad_token_id)

    def held_loss() -> float:
        with torch.no_grad():
            return prm.model(**batch).loss.item()

    before = held_loss()
    losses = adapt_to_format(prm, ProblemStream(5), steps=12, lr=1e-3, batch_size=8, log_path=None)
    assert len(losses) == 12
    assert held_loss() < 0.8 * before, (before, held_loss())


def test_labels_cache_is_reused_only_for_the_same_recipe(tmp_path):
    cfg = LabelConfig(problems=2, samples_per_problem=1, rollouts=2, max_solution_tokens=120,
                      cache=tmp_path / "labels.json")
    first = load_or_label(cfg)
    assert cfg.cache.exists() and first
    cfg.student_dir = tmp_path / "nowhere"  # nothing is sampled again: the student is not even loaded
    with pytest.raises(SystemExit, match="another recipe"):  # ... but a cache of another student is refused
        load_or_label(cfg)
    cfg.student_dir = LabelConfig().student_dir
    assert load_or_label(cfg) == first
    cfg.rollouts = 3
    with pytest.raises(SystemExit, match="another recipe"):
        load_or_label(cfg)


def test_bad_recipe_or_cache_is_refused_with_a_message(tmp_path, capsys):
    from reasoning_viz.train.__main__ import main

    for flag in ("--problems", "--steps"):
        with pytest.raises(SystemExit, match="problems, rollouts, steps, batch-size, code-rank and compare-steps"):
            main(["prm", flag, "-1", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="no folder"):
        main(["prm", "--labels-cache", str(tmp_path / "missing" / "labels.json"), "--out", str(tmp_path)])
    for argv, message in ((["prm", "--student", str(tmp_path / "none")], "--student"),
                          (["prm", "--base", str(tmp_path / "none")], "--base"),
                          (["evaluate", "--prm", str(tmp_path / "none")], "--prm"),
                          (["evaluate", "--samples", "8"], "at least 64 samples")):
        with pytest.raises(SystemExit) as refused:
            main(argv)
        assert refused.value.code == 2 and message in capsys.readouterr().err
    broken = tmp_path / "labels.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(SystemExit, match="not a labels cache"):
        load_or_label(LabelConfig(cache=broken))
