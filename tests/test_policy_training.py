"""The student recipe's slips: training solutions with one wrong result that later steps carry on from."""

import random

from reasoning_viz.problems.tinygsm import EQUATION, apply_op, generate_problem
from reasoning_viz.train.policy import chat_example, with_slip


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
