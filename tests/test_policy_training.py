"""The student recipe's slips: training solutions with one wrong result that later steps carry on from."""

import random

from reasoning_viz.problems.tinygsm import EQUATION, MAX_VALUE, apply_op, generate_problem
from reasoning_viz.train.policy import chat_example, recipe, training_example, with_slip


def _slipped_problems(n: int):
    rng = random.Random(3)
    out = []
    while len(out) < n:
        problem = generate_problem(rng, rng.choice((2, 3, 4, 5, 6)))
        slipped = with_slip(problem, rng)
        if slipped:
            out.append((problem, *slipped))
    return out


def test_a_slipped_solution_carries_on_from_its_wrong_result():
    """One result is off by 1, 2 or 10 from the gold one; every later step starts from the result written
    before it and is arithmetically true, and the answer is the last result: the chain a model that
    follows its own lines would write."""
    for gold, slipped, (start, end) in _slipped_problems(40):
        assert slipped.question == gold.question and len(slipped.steps) == len(gold.steps)
        wrong = [j for j, (a, b) in enumerate(zip(gold.steps, slipped.steps)) if a != b][0]
        gold_result = int(EQUATION.search(gold.steps[wrong])[4])
        parsed = [EQUATION.search(s) for s in slipped.steps]
        assert int(parsed[wrong][4]) - gold_result in (-10, -2, -1, 1, 2, 10)
        assert slipped.steps[:wrong] == gold.steps[:wrong]
        for before, m in zip(parsed[wrong:], parsed[wrong + 1:]):
            assert int(m[1]) == int(before[4])
            assert apply_op(int(m[1]), m[2], int(m[3])) == int(m[4])
            assert m[2] != "/" or int(m[1]) % int(m[3]) == 0  # exact division, as in the gold chains
        assert all(1 <= int(m[4]) <= MAX_VALUE[gold.level] for m in parsed[wrong + 1:])  # every quantity after it
        assert slipped.answer == int(parsed[-1][4])
        assert slipped.solution[start:end] == parsed[wrong][4]  # the span not learnt: the wrong result


def test_the_wrong_result_is_not_learnt_and_the_rest_is(bundled_models):
    tokenizer = bundled_models.generator.tokenizer
    gold, slipped, span = _slipped_problems(1)[0]
    ids, labels = chat_example(tokenizer, slipped, span)
    plain_ids, plain_labels = chat_example(tokenizer, slipped)
    assert ids == plain_ids
    masked = [i for i, (a, b) in enumerate(zip(labels, plain_labels)) if a != b]
    assert masked and all(labels[i] == -100 for i in masked)
    assert tokenizer.decode([ids[i] for i in masked]).strip() == slipped.solution[span[0]:span[1]]
    trained = tokenizer.decode([t for t in labels if t != -100])
    assert f"\\boxed{{{slipped.answer}}}" in trained  # the carried-on steps and answer are learnt


def test_the_student_recipe_trains_on_slips_at_its_share(bundled_models):
    """The shipped student's recipe slips a share of its examples: nearly all at share 1 (a slip is refused
    where the step drawn allows none), none at 0, and about 30% at the recipe's own share."""
    tokenizer = bundled_models.generator.tokenizer
    problems = [gold for gold, _, _ in _slipped_problems(60)]  # problems a slip can be made in

    def slipped_share(share: float) -> float:
        rng = random.Random(0)
        return sum(training_example(tokenizer, p, share, rng) != chat_example(tokenizer, p)
                   for p in problems) / len(problems)

    assert slipped_share(1.0) >= 0.9 and slipped_share(0.0) == 0.0
    assert recipe("student").slips == 0.3 and 0.15 <= slipped_share(0.3) <= 0.45
