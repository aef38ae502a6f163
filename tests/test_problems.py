import random

import pytest

from reasoning_viz.problems.grading import answers_match, extract_boxed, normalize_answer, stated_answer
from reasoning_viz.problems.tinygsm import (LEVELS, TEST_PER_LEVEL, Problem, apply_op, generate_problem,
                                            load_test_set, reference_step_labels, sample_problems,
                                            training_problems)


def test_every_level_has_that_many_exact_steps():
    rng = random.Random(3)
    for level in LEVELS:
        for _ in range(50):
            p = generate_problem(rng, level)
            assert len(p.steps) == level
            value = None
            for step in p.steps:
                lhs, rhs = step.rsplit(": ", 1)[1].split(" = ")
                a, op, b = lhs.split(" ")
                assert apply_op(int(a), op, int(b)) == int(rhs)  # exact integer arithmetic
                assert value is None or int(a) == value  # each step builds on the previous result
                value = int(rhs)
            assert p.answer == value and p.answer >= 0
            assert p.solution.endswith(f"The answer is \\boxed{{{p.answer}}}.")
            assert p.solution.count("\n\n") == level


def test_problems_are_varied():
    problems = sample_problems(1, 100)
    assert len({p.question.split(".")[0].split(" ")[-1] for p in problems}) > 10  # several units/entities
    assert {op for p in problems for s in p.steps for op in "+-*/" if f" {op} " in s} == set("+-*/")


def test_held_out_set_is_committed_deterministic_and_disjoint():
    held = load_test_set()
    assert len(held) == TEST_PER_LEVEL * len(LEVELS)
    assert all(sum(p.level == lv for p in held) >= 100 for lv in LEVELS)
    regenerated = sample_problems(20261121, TEST_PER_LEVEL, prefix="test-L")
    assert [p.to_json() for p in regenerated] == [p.to_json() for p in held]
    train = training_problems(seed=0, n_per_level=300)
    assert not {p.question for p in held} & {p.question for p in train}


def test_training_stream_never_yields_held_out():
    from reasoning_viz.train.policy import ProblemStream

    stream = ProblemStream(seed=5)
    held = {p.question for p in load_test_set()}
    assert all(stream.next().question not in held for _ in range(3000))


@pytest.mark.parametrize("text,expected", [
    ("so 3 + 4 = 7\n\nThe answer is \\boxed{7}.", "7"),
    ("The answer is \\boxed{-12}.", "-12"),
    ("\\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("The answer is \\boxed{1,234}.", "1,234"),
    ("no box here", None),
    ("The answer is \\boxed{12", None),
    ("The answer is \\boxed{}.", None),
])
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize("pred,gold,ok", [
    ("1,234", "1234", True), ("-5", "-5", True), ("-5", "5", False), ("007", "7", True),
    ("\\frac{1}{2}", "0.5", True), ("2\\sqrt{2}", "\\sqrt{8}", True), ("x+1", "1+x", True),
    (None, "3", False), ("", "3", False), ("abc{", "3", False), ("12", 12, True),
])
def test_answers_match(pred, gold, ok):
    assert answers_match(pred, gold) is ok


@pytest.mark.parametrize("text, expected", [
    ("So, Mia has 12 + 16 = 28 apples.\n\nThe answer is 28.", "28"),
    ("The answer is 5, not 6. No: the final answer is 7.", "7"),
    ("Answer: 1,200", "1,200"),
    ("The answer is $-3.5$.", "-3.5"),
    ("She has 28 apples.", None),
    ("The answer is unclear.", None),
])
def test_stated_answer(text, expected):
    assert stated_answer(text) == expected


def test_a_path_that_ends_stating_its_answer_in_words_has_that_answer(tiny_models):
    """SmolLM2 ends "The answer is 28." without \\boxed{}: the node's answer is 28, and only when the path
    ends there (a working step that mentions "the answer is" mid-way does not end the path)."""
    from reasoning_viz.models.generator import StepSample
    from reasoning_viz.search import Budget, SearchContext
    from reasoning_viz.tree import SearchTree

    ctx = SearchContext(SearchTree("Mia has 3 apples. She buys 4 more. How many now?"), tiny_models, Budget(), 0, "7")
    ended = ctx._node_fields(StepSample([5], "The answer is 7.", [0.0], [1.0], "eos"), 0)
    assert ended["answer"] == "7" and ended["status"] == "terminal" and ended["correct"] is True
    going_on = ctx._node_fields(StepSample([5], "The answer is 7 if she buys 4.", [0.0], [1.0], "step"), 0)
    assert going_on["answer"] is None and going_on["status"] == "open"


def test_normalize_answer():
    assert normalize_answer("  1,000 ") == "1000"
    assert normalize_answer("$42$") == "42"
    assert normalize_answer(None) is None


def test_reference_step_labels():
    p = Problem("x", 2, "Mia has 12 apples. She buys 5 more apples. She gives 3 apples to a friend.",
                ("Buys 5 more: 12 + 5 = 17", "Gives away 3: 17 - 3 = 14"), 14)
    good = ["Buys 5 more: 12 + 5 = 17", "Gives away 3: 17 - 3 = 14", "The answer is \\boxed{14}."]
    assert reference_step_labels(p, good) == [True, True, True]
    wrong_sum = ["Buys 5 more: 12 + 5 = 18", "Gives away 3: 18 - 3 = 15", "The answer is \\boxed{15}."]
    assert reference_step_labels(p, wrong_sum) == [False, False, False]  # arithmetic error, then off-track
    wrong_operand = ["Buys 5 more: 12 + 6 = 18", "Gives away 3: 18 - 3 = 15", "The answer is \\boxed{15}."]
    assert reference_step_labels(p, wrong_operand)[0] is False  # true arithmetic, wrong path
    early = ["Buys 5 more: 12 + 5 = 17", "The answer is \\boxed{17}."]
    assert reference_step_labels(p, early) == [True, False]
