"""The PRM training recipe's parts: format adaptation, contrastive copies, the labels cache, the probe
(the surprise stage: test_surprise_stage.py)."""

import random

import pytest

from reasoning_viz.problems.tinygsm import EQUATION, apply_op
from reasoning_viz.train.labels import load_or_label, perturb_step
from reasoning_viz.train.prm import PRMTrainConfig, adapt_to_format, format_lm_example, gold_format_example


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


def test_format_adaptation_trains_the_answer_line_too(tiny_models):
    from reasoning_viz.train.policy import ProblemStream

    prm = tiny_models.scorer
    problem = ProblemStream(5).next()
    ids, labels = gold_format_example(prm, problem)
    trained = prm.tokenizer.decode([t for t, y in zip(ids, labels) if y != -100])
    assert f"\\boxed{{{problem.answer}}}" in trained and problem.steps[-1] in trained


def test_format_adaptation_teaches_the_policy_the_prm_format():
    """A few steps of next-token training on gold solutions lower the loss on unseen ones in the PRM's format."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reasoning_viz.models.scorers import MathShepherdPRM
    from reasoning_viz.train.common import POLICY_DIR, pad_batch
    from reasoning_viz.train.policy import ProblemStream

    torch.manual_seed(0)
    prm = MathShepherdPRM(AutoModelForCausalLM.from_pretrained(POLICY_DIR), AutoTokenizer.from_pretrained(POLICY_DIR))
    held = [format_lm_example(prm, p.question, list(p.steps)) for p in (ProblemStream(99).next() for _ in range(16))]
    batch = pad_batch([e[0] for e in held], [e[1] for e in held], prm.tokenizer.pad_token_id)

    def held_loss() -> float:
        with torch.no_grad():
            return prm.model(**batch).loss.item()

    before = held_loss()
    losses = adapt_to_format(prm, ProblemStream(5), steps=12, lr=1e-3, batch_size=8, log_path=None)
    assert len(losses) == 12
    assert held_loss() < 0.8 * before, (before, held_loss())


def test_labels_cache_is_reused_only_for_the_same_recipe(bundled_models, tmp_path):
    cfg = PRMTrainConfig(problems=2, samples_per_problem=1, rollouts=2, max_solution_tokens=120,
                         labels_cache=tmp_path / "labels.json")
    first = load_or_label(bundled_models.generator, cfg)
    assert cfg.labels_cache.exists() and first
    assert load_or_label(None, cfg) == first  # no generator needed: nothing is labelled again
    cfg.rollouts = 3
    with pytest.raises(SystemExit, match="another recipe"):
        load_or_label(None, cfg)


def test_bad_recipe_or_cache_is_refused_with_a_message(tmp_path, capsys):
    from reasoning_viz.train.__main__ import main

    for flag in ("--problems", "--batch-size"):
        with pytest.raises(SystemExit, match="problems, steps, rollouts and batch-size >= 1"):
            main(["prm", flag, "0", "--out", str(tmp_path)])
    for flag in ("--perturbed-per-path", "--format-steps", "--surprise-layers", "--surprise-steps", "--code-rank",
                 "--compare-steps"):
        with pytest.raises(SystemExit, match="perturbed-per-path, format-steps, surprise-steps, surprise-layers"):
            main(["prm", flag, "-1", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--code-rank needs --compare-steps or --surprise-layers"):
        main(["prm", "--compare-steps", "0", "--code-rank", "8", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--compare-steps needs --code-rank"):
        main(["prm", "--code-rank", "0", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="set one of them to 0"):
        main(["prm", "--surprise-layers", "2", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="carries at most 64 numbers"):  # the bundled policy: 2 x 32
        main(["prm", "--code-rank", "65", "--out", str(tmp_path)])
    # with neither reader of the surprise the default code layer goes too: validation gets past the code-rank check
    with pytest.raises(SystemExit, match="no folder"):
        main(["prm", "--compare-steps", "0", "--labels-cache", str(tmp_path / "missing" / "labels.json"),
              "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="no folder"):
        main(["prm", "--labels-cache", str(tmp_path / "missing" / "labels.json"), "--out", str(tmp_path)])
    for argv, message in ((["prm", "--policy", str(tmp_path / "none")], "--policy"),
                          (["evaluate", "--prm", str(tmp_path / "none")], "--prm"),
                          (["evaluate", "--samples", "8"], "at least 64 samples")):
        with pytest.raises(SystemExit) as refused:
            main(argv)
        assert refused.value.code == 2 and message in capsys.readouterr().err
    broken = tmp_path / "labels.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(SystemExit, match="not a labels cache"):
        load_or_label(None, PRMTrainConfig(labels_cache=broken))


def _probe_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "prm_learnability.py"
    spec = importlib.util.spec_from_file_location("prm_learnability", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_probe_pairs_differ_only_in_the_slipped_last_step():
    from reasoning_viz.train.policy import ProblemStream

    probe, stream, rng = _probe_module(), ProblemStream(3), random.Random(0)
    for _ in range(20):
        right, slipped = probe.slipped_pair(stream, rng, ("result",))
        assert right.question == slipped.question and right.steps[:-1] == slipped.steps[:-1]
        assert right.steps[-1] != slipped.steps[-1] and EQUATION.search(slipped.steps[-1])
        assert right.labels == [1.0] * len(right.steps) and slipped.labels == [1.0] * (len(right.steps) - 1) + [0.0]


def test_probe_digit_accuracy_tells_the_two_formats_apart(bundled_models):
    """The bundled policy computes results in its chat format, much less so in the PRM's (measured 99% vs 66%)."""
    from reasoning_viz.models.scorers import MathShepherdPRM
    from reasoning_viz.train.policy import ProblemStream

    probe = _probe_module()
    prm = MathShepherdPRM(bundled_models.generator.model, bundled_models.generator.tokenizer)
    chat = probe.result_digit_accuracy(prm, ProblemStream(4000), 30, chat=True)
    prm_format = probe.result_digit_accuracy(prm, ProblemStream(4000), 30)
    assert chat >= 0.9 and prm_format <= chat - 0.15, (chat, prm_format)


def test_probe_at_slip_labels_only_the_first_wrong_token(tiny_models):
    from reasoning_viz.train.policy import ProblemStream

    probe, stream, rng, prm = _probe_module(), ProblemStream(5), random.Random(0), tiny_models.scorer
    for _ in range(10):
        right, slipped = probe.slipped_pair(stream, rng, ("result",))
        (a, la), (b, lb) = probe.at_slip_examples(prm, right, slipped)
        k = probe.first_difference(a, b)
        assert a[:k] == b[:k] and a[k] != b[k]
        assert prm.tokenizer.decode([b[k]]).isdigit(), "the slip starts at a digit of the result"
        assert [(i, x) for i, x in enumerate(la) if x != -100] == [(k, 1.0)]
        assert [(i, x) for i, x in enumerate(lb) if x != -100] == [(k, 0.0)]
        assert 0.0 <= probe.p_good_at(prm, b, k) <= 1.0

