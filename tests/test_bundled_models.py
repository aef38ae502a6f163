"""The shipped student, larger model and PRM, loaded from the repository offline, do what the app relies on."""

import os
import re

from reasoning_viz.models.generator import SamplingParams
from reasoning_viz.problems.tinygsm import load_test_set

STEP = re.compile(r"^.{0,40}: \d+ [-+*/] \d+ = \d+$")


def test_loaded_offline_from_the_repository(bundled_models):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert bundled_models.policy_id == "tinygsm-student" and bundled_models.scorer_id == "tinygsm-prm"
    assert sum(p.numel() for p in bundled_models.generator.model.parameters()) < 10_000_000


def test_the_bundled_models_have_the_real_world_shape_and_fit_in_60_mb():
    """A small student; a larger model; a PRM built on the larger model's layers (plus its own three)."""
    from transformers import AutoConfig

    from reasoning_viz.models.presets import BUNDLED_LARGE, BUNDLED_MODELS, BUNDLED_PRM, BUNDLED_STUDENT

    def parameters(folder):
        c = AutoConfig.from_pretrained(folder)
        return c.num_hidden_layers * c.hidden_size * (c.hidden_size + c.intermediate_size)

    assert parameters(BUNDLED_LARGE) >= 2.5 * parameters(BUNDLED_STUDENT)
    prm, large = AutoConfig.from_pretrained(BUNDLED_PRM), AutoConfig.from_pretrained(BUNDLED_LARGE)
    assert prm.surprise_base_layers == large.num_hidden_layers and prm.hidden_size == large.hidden_size
    size = sum(f.stat().st_size for folder in BUNDLED_MODELS for f in folder.iterdir())
    assert size <= 60 * 2**20, f"{size / 2**20:.1f} MB"


def test_policy_writes_a_well_formed_solution(bundled_models):
    gen = bundled_models.generator
    problem = next(p for p in load_test_set() if p.level == 3)
    out = gen.expand([gen.prompt_ids(problem.question)], 1,
                     SamplingParams(temperature=0.0, max_step_tokens=200, stop_at_step=False))[0][0]
    assert out.finish == "eos"
    steps = out.text.split("\n\n")
    assert len(steps) >= 2
    assert all(STEP.match(s) for s in steps[:-1]), steps
    assert re.fullmatch(r"The answer is \\boxed\{-?\d+\}\.", steps[-1])


def test_batched_steps_equal_one_at_a_time(bundled_models):
    """Rows that stop at different times (a step, the answer) must not disturb the others."""
    gen = bundled_models.generator
    problems = [p for p in load_test_set() if p.level in (1, 4, 6)][::40]
    prefixes = []
    for i, p in enumerate(problems):
        done = i % (len(p.steps) + 1)  # gold steps already written, each with its blank line, as in a tree
        solution = gen.tokenizer.encode(p.solution, add_special_tokens=False)
        cut = next(n for n in range(len(solution) + 1)
                   if gen.tokenizer.decode(solution[:n]).count("\n\n") == done and
                   (done == 0 or gen.tokenizer.decode(solution[:n]).endswith("\n\n")))
        prefixes.append(gen.prompt_ids(p.question) + solution[:cut])
    greedy = SamplingParams(temperature=0.0, max_step_tokens=40)
    together = gen.expand(prefixes, 2, greedy)
    assert len({c.finish for node in together for c in node}) == 2  # some stop at a step, some at the answer
    for prefix, children in zip(prefixes, together):
        alone = gen.expand([prefix], 1, greedy)[0][0]
        assert [c.token_ids for c in children] == [alone.token_ids] * 2


def corrupted(step: str, kind: str, k: int) -> str:
    head, result = step.rsplit("= ", 1)
    if kind == "off-by-one":  # the student's own kind of slip: nearly the right number
        return f"{head}= {int(result) + (1 if k % 2 else -1)}"
    if kind == "off-by-large":
        return f"{head}= {int(result) + 37 + k}"
    return f"{head}= {result} board pencils"  # garbled text after a right result


def test_prm_prefers_correct_steps_to_corrupted_copies(bundled_models):
    """One score in [0, 1] per step, and the correct step above its corrupted copy more often than chance.

    Measured on this fixed set of 50 held-out problems with the PRM built on the larger model and
    labelled by the student: 50/50 for a result off by one (the student's own kind of slip), 50/50 for a
    far-off result, 41/50 for garbled words after a right result (it reads the larger model's surprise
    at numbers better than at words; the PRM labelled by the student trained without slips: 50, 48 and
    31). The floors sit a little under the measured rates, so a retrained PRM that stops checking
    results fails here.
    """
    floors = {"off-by-one": 0.94, "off-by-large": 0.94, "garbled": 0.7}
    prm = bundled_models.scorer
    prm.reset()
    problems = [p for p in load_test_set() if p.level >= 2][::10]
    for kind, floor in floors.items():
        wins = 0
        for p in problems:
            steps = list(p.steps)
            k = len(steps) // 2
            good, bad = prm.score(p.question, [steps[: k + 1], steps[:k] + [corrupted(steps[k], kind, k)]])
            assert len(good) == len(bad) == k + 1 and all(0.0 <= s <= 1.0 for s in good + bad)
            wins += good[-1] > bad[-1]
        print(f"PRM ranks the correct step above a {kind} copy in {wins}/{len(problems)} cases")
        assert wins / len(problems) >= floor


def test_prm_labels_are_rollout_fractions_with_a_first_error_stop(bundled_models):
    """Math-Shepherd soft labels from the student's rollouts: each step's label is k/K; after a step no
    rollout recovers from, later working steps get 0 without rollouts; a final answer line is labelled
    by its answer."""
    from reasoning_viz.problems.grading import answers_match, extract_boxed
    from reasoning_viz.train.labels import LabelConfig, label_paths
    from reasoning_viz.train.policy import ProblemStream

    cfg = LabelConfig(problems=12, samples_per_problem=2, rollouts=3, max_solution_tokens=160)
    stream, asked = ProblemStream(7), []
    next_problem = stream.next
    stream.next = lambda: asked.append(next_problem()) or asked[-1]
    paths = label_paths(bundled_models.generator, stream, cfg)
    gold = {p.question: p.answer for p in asked}
    assert 0 < len(paths) <= cfg.problems * cfg.samples_per_problem
    fractions = set()
    for path in paths:
        assert len(path.labels) == len(path.steps)
        boxed = extract_boxed(path.steps[-1])
        if boxed is not None:
            assert path.labels[-1] == float(answers_match(boxed, gold[path.question]))
        working = path.labels[:-1]
        assert all(label * cfg.rollouts == round(label * cfg.rollouts) for label in working)
        fractions.update(working)
        if 0.0 in working:
            assert not any(working[working.index(0.0):]), path  # nothing rolled out after the first zero
    # the student errs: some steps are lost, some safe, and some in between (soft, not "any rollout")
    assert {0.0, 1.0} < fractions, fractions


def test_the_three_bundled_models_share_one_tokenizer():
    """Every bundled model reads text with the same token ids: the student's recipe takes the larger
    model's tokenizer instead of rebuilding it (a rebuild can number tokens differently under another
    ``tokenizers`` version), and the PRM is a copy of the larger model."""
    from transformers import AutoTokenizer

    from reasoning_viz.models.presets import BUNDLED_LARGE, BUNDLED_PRM, BUNDLED_STUDENT
    from reasoning_viz.train.policy import recipe

    assert recipe("student").tokenizer_from == BUNDLED_LARGE and recipe("large").tokenizer_from is None
    vocab = AutoTokenizer.from_pretrained(BUNDLED_STUDENT).get_vocab()
    assert vocab == AutoTokenizer.from_pretrained(BUNDLED_LARGE).get_vocab()
    assert vocab == AutoTokenizer.from_pretrained(BUNDLED_PRM).get_vocab()
