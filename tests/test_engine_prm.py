"""PRM scoring through an inference engine (#22): a real vLLM server (its CPU build) serving the bundled
PRM as a pooling model, with the flags ``prm_engine_flags`` gives, against the same PRM in-process.

The last test kills the server; the tests run in file order, so it stays last.
"""

from __future__ import annotations

import json

import pytest

from engine_process import VLLMServer, require_vllm
from reasoning_viz.cli import main
from reasoning_viz.models.engine import EngineError
from reasoning_viz.models.engine_prm import EnginePRM, prm_engine_flags
from reasoning_viz.models.loading import DEFAULT_PRESET, load_preset, load_tokenizer
from reasoning_viz.models.presets import BUNDLED_PRM
from reasoning_viz.problems.tinygsm import final_answer_line, load_test_set
from reasoning_viz.strategies import STRATEGIES, run_search

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prm_engine():
    require_vllm()
    with VLLMServer(BUNDLED_PRM, extra_args=prm_engine_flags(load_tokenizer(BUNDLED_PRM))) as server:
        yield server


@pytest.fixture(scope="module")
def engine_scored(prm_engine):
    return load_preset(DEFAULT_PRESET, prm_url=prm_engine.url)  # the policy in-process, the PRM there


def paths_to_score():
    """Two held-out problems a level: the gold path, and a copy whose first result is off by one."""
    problems = [p for level in range(1, 7) for p in [q for q in load_test_set() if q.level == level][:2]]
    out = []
    for p in problems:
        gold = [*p.steps, final_answer_line(p.answer)]
        head, result = p.steps[0].rsplit("= ", 1)
        out.append((p.question, [gold, [f"{head}= {int(result) + 1}", *gold[1:]]]))
    return out


def test_the_engines_step_scores_are_the_in_process_prms(prm_engine, engine_scored, bundled_models):
    """Every step's P(+) from vLLM's step pooling equals MathShepherdPRM's to float32 rounding (vLLM's
    CPU kernels are not torch's), and the slipped copies score below the gold paths there too."""
    prm = EnginePRM.connect(prm_engine.url, load_tokenizer(BUNDLED_PRM))
    here = bundled_models.scorer.for_run()
    for question, paths in paths_to_score():
        theirs, ours = prm.score(question, paths), here.score(question, paths)
        assert [len(s) for s in theirs] == [len(s) for s in ours] == [len(p) for p in paths]
        assert max(abs(a - b) for t, o in zip(theirs, ours) for a, b in zip(t, o)) < 1e-4
        assert theirs[1][0] < theirs[0][0]
    assert prm.tokens_scored > 0 and prm.describe()["url"] == prm_engine.url


@pytest.mark.parametrize("strategy", ["beam_search", "best_of_n"])
def test_a_search_scored_through_the_engine_is_the_in_process_tree(engine_scored, bundled_models, strategy):
    """Same seed, same policy in-process: the same nodes, scores within 1e-4, the same answer; the record
    names the scorer's engine."""
    problem = [p for p in load_test_set() if p.level == 3][0]
    params = STRATEGIES[strategy].params(**({"n": 8, "beam_width": 2} if strategy == "beam_search" else {"n": 8}))
    there = run_search(problem.question, strategy, engine_scored, params, seed=3, gold=problem.answer)
    here = run_search(problem.question, strategy, bundled_models, params, seed=3, gold=problem.answer)
    assert [(n.id, n.parent, n.text, n.status) for n in there.nodes()] == [(n.id, n.parent, n.text, n.status) for n in here.nodes()]
    pairs = [(a.step_score, b.step_score) for a, b in zip(there.nodes(), here.nodes()) if a.step_score is not None]
    assert pairs and max(abs(a - b) for a, b in pairs) < 1e-4
    assert there.run["selection"]["answer"] == here.run["selection"]["answer"]
    assert there.run["scorer_engine"]["url"] == engine_scored.scorer.describe()["url"] and "scorer_engine" not in here.run


def test_the_cli_scores_through_the_prm_engine(prm_engine, tmp_path, capsys):
    problem = load_test_set()[0]
    assert main(["solve", problem.question, "--strategy", "best_of_n", "--set", "n=4", "--gold", str(problem.answer),
                 "--prm-url", prm_engine.url, "--json", str(tmp_path / "tree.json")]) == 0
    record = json.loads((tmp_path / "tree.json").read_text())
    assert record["run"]["scorer_engine"]["engine"] == "vllm" and record["run"]["scorer_engine"]["url"] == prm_engine.url
    assert main(["prm-flags"]) == 0 and "--runner pooling" in capsys.readouterr().out


def test_a_prm_engine_that_dies_mid_search_is_one_sentence(prm_engine, engine_scored):
    problem = load_test_set()[0]
    prm_engine.stop()
    with pytest.raises(EngineError, match="is not answering"):
        run_search(problem.question, "best_of_n", engine_scored, STRATEGIES["best_of_n"].params(n=2), seed=0)
