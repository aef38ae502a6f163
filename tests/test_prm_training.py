"""The PRM training recipe's parts: format adaptation, contrastive copies and the labels cache."""

import random

import pytest

from reasoning_viz.problems.tinygsm import EQUATION, apply_op
from reasoning_viz.train.prm import PRMTrainConfig, format_lm_example, load_or_label, perturb_step


@pytest.mark.parametrize("step", ["Loses 7: 11 - 7 = 4", "4 times as many: 1 * 4 = 4",
                                  "Splits 3 ways: 63 / 3 = 21", "Buys 5 more: 3 + 5 = 8"])
def test_perturbed_step_is_a_plausible_wrong_step(step):
    a, op, b, c = (lambda m: (int(m[1]), m[2], int(m[3]), int(m[4])))(EQUATION.search(step))
    rng, seen = random.Random(0), set()
    for _ in range(40):
        wrong = perturb_step(step, rng)
        m = EQUATION.search(wrong)
        assert m is not None and wrong != step, wrong
        a2, op2, b2, c2 = int(m[1]), m[2], int(m[3]), int(m[4])
        assert c2 >= 0 and (a2, op2, b2, c2) != (a, op, b, c)
        if b2 != b:  # a different operand is also the one the words name
            assert wrong.startswith(step.split(":")[0].replace(str(b), str(b2), 1))
        seen.add("result" if (a2, op2, b2) == (a, op, b) else "consistent" if apply_op(a2, op2, b2) == c2 else "?")
    assert seen == {"result", "consistent"} or (op == "/" and seen == {"result"}), seen
    assert perturb_step(r"The answer is \boxed{8}.", rng) is None


def test_result_only_slips_keep_the_operands():
    rng = random.Random(1)
    for _ in range(20):
        wrong = EQUATION.search(perturb_step("Loses 7: 11 - 7 = 4", rng, kinds=("result",)))
        assert (wrong[1], wrong[2], wrong[3]) == ("11", "-", "7") and wrong[4] != "4"


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


def test_labels_cache_is_reused_only_for_the_same_recipe(bundled_models, tmp_path):
    cfg = PRMTrainConfig(problems=2, samples_per_problem=1, rollouts=2, max_solution_tokens=120,
                         labels_cache=tmp_path / "labels.json")
    first = load_or_label(bundled_models.generator, cfg)
    assert cfg.labels_cache.exists() and first
    assert load_or_label(None, cfg) == first  # no generator needed: nothing is labelled again
    cfg.rollouts = 3
    with pytest.raises(SystemExit, match="another recipe"):
        load_or_label(None, cfg)


def test_bad_recipe_or_cache_is_refused_with_a_message(tmp_path):
    from reasoning_viz.train.__main__ import main

    with pytest.raises(SystemExit, match="problems, steps and rollouts >= 1"):
        main(["prm", "--problems", "0", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="perturbed-per-path >= 0"):
        main(["prm", "--perturbed-per-path", "-1", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="format-steps >= 0"):
        main(["prm", "--format-steps", "-1", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="no folder"):
        main(["prm", "--labels-cache", str(tmp_path / "missing" / "labels.json"), "--out", str(tmp_path)])
    broken = tmp_path / "labels.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(SystemExit, match="not a labels cache"):
        load_or_label(None, PRMTrainConfig(labels_cache=broken))
