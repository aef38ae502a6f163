import pytest
import torch

from reasoning_viz.models.scorers import CalculatorChecker, MathShepherdPRM, MCRolloutScorer

Q = "Mia has 12 apples. She buys 5 more apples. She gives 3 apples to a friend. How many apples does Mia have now?"
PATHS = [["Buys 5 more: 12 + 5 = 17"], ["Buys 5 more: 12 + 5 = 17", "Gives away 3: 17 - 3 = 14"],
         ["Buys 5 more: 12 + 5 = 17", "Gives away 3: 17 - 3 = 14", "The answer is \\boxed{14}."],
         ["Buys 5 more: 12 + 5 = 18", "Gives away 3: 18 - 3 = 15"]]


def math_shepherd_reference(model, tok, question, steps):
    """Math-Shepherd's published usage, written out plainly: one full forward per path."""
    good, bad = tok.encode("+ -", add_special_tokens=False)
    tag = tok.encode("ки", add_special_tokens=False)[-1]
    text = question + " " + "\n".join(f"Step {i + 1}: {s} ки" for i, s in enumerate(steps))
    ids = torch.tensor([tok.encode(text)])
    with torch.no_grad():
        probs = model(ids).logits[:, :, [good, bad]].softmax(-1)[:, :, 0]
    return probs[ids == tag].tolist()


def test_prm_with_prefix_cache_matches_the_reference(tiny_models):
    prm: MathShepherdPRM = tiny_models.scorer
    prm.reset()
    ref = [math_shepherd_reference(prm.model, prm.tokenizer, Q, p) for p in PATHS]
    first = prm.score(Q, PATHS[:2])  # the 1- and 2-step paths are now cached
    second = prm.score(Q, PATHS[2:])  # the 3-step path reuses the 2-step path's cache
    for got, want in zip(first + second, ref):
        assert len(got) == len(want)
        assert got == pytest.approx(want, abs=1e-5)
    assert all(0.0 <= s <= 1.0 for path in first + second for s in path)


def test_prm_cache_matches_the_reference_deep_in_a_search(tiny_models):
    """Beam-search-like use: siblings of one parent (the shared-prefix path), a child of a child (a stored
    extension joined), and a batch mixing parents of different depths (each row's prefix copied)."""
    prm: MathShepherdPRM = tiny_models.scorer
    prm.reset()
    path: list[str] = []
    for depth in range(4):
        siblings = [path + [f"Step {depth} try {j}: {10 + j} + {depth} = {10 + j + depth}"] for j in range(3)]
        got = prm.score(Q, siblings)
        for steps, scores in zip(siblings, got):
            assert scores == pytest.approx(math_shepherd_reference(prm.model, prm.tokenizer, Q, steps), abs=1e-5)
        path = siblings[1]  # the beam keeps one and extends it
    mixed = [path + ["Then: 1 + 1 = 2"], path[:1] + ["Else: 2 + 2 = 4"], ["Fresh: 3 + 3 = 6"]]
    for steps, scores in zip(mixed, prm.score(Q, mixed)):
        assert scores == pytest.approx(math_shepherd_reference(prm.model, prm.tokenizer, Q, steps), abs=1e-5)


def test_prm_cache_really_skips_the_prefix(tiny_models):
    prm: MathShepherdPRM = tiny_models.scorer
    prm.reset()
    prm.score(Q, [PATHS[1]])
    before = prm.tokens_scored
    prm.score(Q, [PATHS[2]])
    new_tokens = prm.tokens_scored - before
    full = len(prm.encode(Q, PATHS[2]))
    assert new_tokens < full / 3  # only the new step went through the model


def test_calculator_checker():
    checker = CalculatorChecker()
    assert checker.score(Q, PATHS) == [[1.0], [1.0, 1.0], [1.0, 1.0, 1.0], [0.0, 1.0]]
    # a made-up operand is wrong even if the arithmetic is right
    assert checker.score(Q, [["12 + 6 = 18"]]) == [[0.0]]
    assert checker.score(Q, [["The answer is \\boxed{99}."]]) == [[0.0]]
    # the answer line vouches for the whole path: a right copy of a wrong result is still wrong
    assert checker.score(Q, [PATHS[3] + ["The answer is \\boxed{15}."]]) == [[0.0, 1.0, 0.0]]
    assert checker.score(Q, [["I think it is many."]]) == [[0.0]]


class ScriptedRollouts:
    """A policy whose rollouts are written in advance: from the end of step j of the path, the texts
    in ``script[j]``. The Monte-Carlo score of each step is then known by hand."""

    def __init__(self, tokenizer, script: list[list[str]]):
        self.tokenizer, self.script = tokenizer, script
        self.prompt = [1, 2, 3]

    def prompt_ids(self, question, system_prompt=None):
        return list(self.prompt)

    def expand(self, prefixes, k, params, generator=None, first_tokens=None, check=None):
        from reasoning_viz.models.generator import StepSample

        out = []
        for j, _ in enumerate(prefixes):  # the scorer asks for step 0, 1, ... of the one path in order
            out.append([StepSample([7], text, [0.0], [1.0], "eos") for text in self.script[j][:k]])
        return out


def test_mc_rollout_scorer_is_the_fraction_of_rollouts_that_reach_the_gold(tiny_models):
    """2 of 3 rollouts from step 1 reach 14, 1 of 3 from step 2, and from the answer step every rollout
    that writes no answer of its own keeps that step's \\boxed{14} (the path has already answered)."""
    script = [["\\boxed{14}", "\\boxed{13}", "\\boxed{14}"],
              ["\\boxed{15}", "\\boxed{14}", "no answer at all"],
              ["", "", "\\boxed{12}"]]
    scorer = MCRolloutScorer(ScriptedRollouts(tiny_models.generator.tokenizer, script), 1.0, rollouts=3,
                             max_tokens=4)
    (scores,) = scorer.score(Q, [PATHS[2]], gold="14")
    assert scores == pytest.approx([2 / 3, 1 / 3, 2 / 3])
    assert scorer.tokens_scored == 9  # one token per scripted rollout
    (no_gold,) = scorer.score(Q, [PATHS[2]])  # no gold: agreement with the rollouts' majority answer
    assert no_gold == pytest.approx([2 / 3, 1 / 3, 2 / 3])
    assert scorer.tokens_scored == 18
    again = scorer.score(Q, [PATHS[2][:2], PATHS[2]], gold="14")  # every step already estimated
    assert again == [scores[:2], scores] and scorer.tokens_scored == 18  # no rollout run twice


def test_mc_rollout_scorer_runs_on_a_real_generator(tiny_models):
    scorer = MCRolloutScorer(tiny_models.generator, 1.0, rollouts=3, max_tokens=4)
    scores = scorer.score(Q, [PATHS[2]], gold="14")
    assert len(scores[0]) == 3 and all(s in (0.0, 1 / 3, 2 / 3, 1.0) for s in scores[0])
    assert scorer.tokens_scored > 0


def test_a_sampled_step_tag_inside_a_step_does_not_add_a_score(tiny_models):
    prm: MathShepherdPRM = tiny_models.scorer
    prm.reset()
    scores = prm.score(Q, [["Buys 5 more ки: 12 + 5 = 17", "ки ки"]])
    assert len(scores[0]) == 2
