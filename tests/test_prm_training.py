"""The PRM training recipe's options: contrastive copies and the labels cache."""

import random

import pytest

from reasoning_viz.problems.tinygsm import EQUATION, apply_op
from reasoning_viz.train.prm import PRMTrainConfig, load_or_label, perturb_step


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
    with pytest.raises(SystemExit, match="no folder"):
        main(["prm", "--labels-cache", str(tmp_path / "missing" / "labels.json"), "--out", str(tmp_path)])
    broken = tmp_path / "labels.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(SystemExit, match="not a labels cache"):
        load_or_label(None, PRMTrainConfig(labels_cache=broken))
