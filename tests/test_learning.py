"""#23 items 2 and 3: re-judging a recorded tree (what-if), and turning a search into training data."""

from __future__ import annotations

import json

import pytest

from reasoning_viz.select import rejudge
from reasoning_viz.strategies import STRATEGIES, run_search
from reasoning_viz.traces import jsonl, sft_records, sos_actions, sos_text
from reasoning_viz.tree import SearchTree

QUESTION = "Mia has 12 apples. She buys 5 more apples. How many apples does Mia have now?"


@pytest.mark.parametrize("strategy, recorded, other, rule, aggregation", [
    ("self_consistency", {"vote": "majority"}, {"vote": "weighted"}, "weighted", "last"),
    ("self_consistency", {"vote": "weighted"}, {"vote": "majority"}, "majority", "last"),
    ("best_of_n", {"aggregation": "last"}, {"aggregation": "min"}, "best", "min"),
    ("best_of_n", {"aggregation": "min"}, {"aggregation": "prod"}, "best", "prod"),
])
def test_rejudging_a_recorded_tree_equals_a_fresh_run_under_that_rule(bundled_models, strategy, recorded, other,
                                                                      rule, aggregation):
    """The selection rule does not change what is generated, so a fresh run with the other rule and the
    same seed grows the same tree: its selection must equal the re-judged record's."""
    from reasoning_viz.problems.tinygsm import load_test_set

    problem = next(p for p in load_test_set() if p.level == 5)
    params = STRATEGIES[strategy].params
    first = run_search(problem.question, strategy, bundled_models, params(n=8, **recorded), seed=2, gold=problem.answer)
    fresh = run_search(problem.question, strategy, bundled_models, params(n=8, **other), seed=2, gold=problem.answer)
    loaded = SearchTree.from_json(json.loads(first.dumps()))  # as a user would upload it
    judged = rejudge(loaded, rule, aggregation)
    assert judged.run["selection"] == fresh.run["selection"]
    assert [n.id for n in judged.nodes() if n.selected] == [n.id for n in fresh.nodes() if n.selected]
    assert judged.run["rejudged"]["original"] == first.run["selection"]
    assert loaded.run["selection"] == first.run["selection"]  # the record itself is left as it was
    again = rejudge(judged, "majority")  # re-judging twice keeps the run's own first choice as the original
    assert again.run["rejudged"]["original"] == first.run["selection"]
    SearchTree.from_json(json.loads(again.dumps()))  # still a valid record


def test_rejudging_refuses_an_unknown_rule_or_aggregation():
    tree = SearchTree(QUESTION)
    with pytest.raises(ValueError, match="unknown selection rule"):
        rejudge(tree, "coin-flip")
    with pytest.raises(ValueError, match="unknown aggregation"):
        rejudge(tree, "best", "max")


def small_tree() -> SearchTree:
    """A beam search in miniature: two first steps, the weaker pruned, a wrong end, a backtrack, a right end."""
    tree = SearchTree(QUESTION, run={"gold": "17", "strategy": "beam_search"})
    a, b = tree.add_children(0, [dict(text="Buys 5: 12 + 5 = 17"), dict(text="Eats 5: 12 - 5 = 7")], "expand root")
    tree.set_scores({a: 0.9, b: 0.2}, "score")
    tree.prune({b: "beam: score 0.20 below the kept 0.90"}, "prune")
    c, = tree.add_children(a, [dict(text="The answer is \\boxed{18}.", answer="18", status="terminal",
                                    correct=False)], "expand a")
    tree.set_scores({c: 0.1}, "score")
    d, = tree.add_children(a, [dict(text="The answer is \\boxed{17}.", answer="17", status="terminal",
                                    correct=True)], "expand a again")
    tree.set_scores({d: 0.95}, "score")
    tree.run["selection"] = {"rule": "best", "answer": "17", "node_id": d, "score": 0.95, "votes": {},
                             "detail": "best"}
    tree.select_path(d, "chosen")
    return tree


def test_the_stream_of_search_trace_of_a_small_tree_is_its_expected_text():
    assert sos_text(small_tree()) == (
        f"Question: {QUESTION}\n"
        "Expand node 0:\n"
        "  node 1: Buys 5: 12 + 5 = 17\n"
        "  node 2: Eats 5: 12 - 5 = 7\n"
        "Scores: node 1 0.90, node 2 0.20\n"
        "Prune node 2 (score 0.20): beam: score 0.20 below the kept 0.90\n"
        "Expand node 1:\n"
        "  node 3: The answer is \\boxed{18}. [answer 18]\n"
        "Scores: node 3 0.10\n"
        "Move to node 1 (depth 1, score 0.90)\n"
        "Expand node 1:\n"
        "  node 4: The answer is \\boxed{17}. [answer 17]\n"
        "Scores: node 4 0.95\n"
        "Answer 17 at node 4: path 0 -> 1 -> 4\n")
    lines = [json.loads(line) for line in jsonl(sos_actions(small_tree())).splitlines()]
    assert [line["action"] for line in lines] == ["question", "expand", "score", "prune", "expand", "score",
                                                  "move", "expand", "score", "answer"]


def test_sft_records_are_the_verified_paths_or_the_chosen_one():
    tree = small_tree()
    (record,) = sft_records(tree)
    assert record["source"] == "verified" and record["answer"] == "17"
    assert record["messages"] == [{"role": "user", "content": QUESTION},
                                  {"role": "assistant", "content": "Buys 5: 12 + 5 = 17\n\nThe answer is \\boxed{17}."}]
    tree.run["gold"] = None  # no gold: the chosen path stands in for a verified one
    (record,) = sft_records(tree)
    assert record["source"] == "chosen" and record["node"] == 4
