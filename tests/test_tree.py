import json

import pytest

from reasoning_viz.select import best_score, majority_vote, most_visited, shortest_confident, weighted_vote
from reasoning_viz.tree import SCHEMA_VERSION, SearchTree, TreeFormatError, aggregate, replay


def small_tree() -> SearchTree:
    t = SearchTree("What is 2 + 3 * 4?", run={"strategy": "handmade"})
    a, b = t.add_children(0, [dict(text="3 * 4 = 12", num_tokens=6), dict(text="2 + 3 = 5", num_tokens=6)], "first")
    t.set_scores({a: 0.9, b: 0.2}, "scored")
    (a1, a2) = t.add_children(a, [dict(text="2 + 12 = 14\n\\boxed{14}", status="terminal", answer="14", correct=True,
                                       num_tokens=9),
                                  dict(text="\\boxed{15}", status="terminal", answer="15", correct=False, num_tokens=4)],
                              "second")
    t.set_scores({a1: 0.8, a2: 0.3}, "scored")
    (b1,) = t.add_children(b, [dict(text="\\boxed{20}", status="terminal", answer="20", correct=False, num_tokens=4)],
                           "third")
    t.set_scores({b1: 0.95}, "scored")
    (b2,) = t.add_children(b, [dict(text="5 * 4 = 20", num_tokens=6)], "fourth")
    t.prune({b2: "rank 2 of 2, beam keeps 1"}, "pruned one")
    return t


def test_aggregations():
    assert aggregate([0.5, 0.8], "last") == 0.8
    assert aggregate([0.5, 0.8], "min") == 0.5
    assert aggregate([0.5, 0.8], "prod") == pytest.approx(0.4)
    assert aggregate([0.5, 0.8], "mean") == pytest.approx(0.65)
    with pytest.raises(ValueError):
        aggregate([1.0], "max")


def test_invariants_and_path_scores():
    t = small_tree()
    nodes = t.nodes()
    assert [n.id for n in nodes if n.parent is None] == [0]
    assert all(n.parent in t.graph for n in nodes if n.parent is not None)
    assert all(n.reason for n in nodes if n.status == "pruned")
    assert t.node(0).status == "expanded" and t.node(1).status == "expanded"
    leaf = t.node(3)
    assert leaf.path_score["min"] == pytest.approx(0.8) and leaf.path_score["prod"] == pytest.approx(0.72)
    assert t.steps(3) == ["3 * 4 = 12", "2 + 12 = 14\n\\boxed{14}"]


def test_path_scores_have_one_source_the_record(monkeypatch):
    """Strategies and selection read the path score recorded at scoring time, and a file whose recorded
    path scores do not follow from its step scores is refused rather than read two ways."""
    t = small_tree()
    assert t.path_score(3, "prod") == t.node(3).path_score["prod"] == pytest.approx(0.72)
    assert t.path_score(6, "min") == t.path_score(2, "min") == pytest.approx(0.2)  # node 6 never scored
    assert t.path_score(0) == 0.0
    t.node(3).path_score["last"] = 0.123  # the record is what is read, not a recomputation
    assert t.path_score(3) == 0.123
    with pytest.raises(ValueError, match="unknown aggregation"):
        t.path_score(3, "max")
    data = json.loads(small_tree().dumps())
    for record in [n for n in data["nodes"] if n["id"] == 3] + [
            u for e in data["events"] for k, u in e["updates"].items() if k == "3" and "path_score" in u]:
        record["path_score"]["min"] = 0.01
    with pytest.raises(TreeFormatError, match="path scores do not follow"):
        SearchTree.from_json(data)


def test_json_round_trip_is_exact():
    t = small_tree()
    t.select_path(3, "chosen")
    loaded = SearchTree.loads(t.dumps())
    assert loaded.to_json() == json.loads(t.dumps())
    assert [n.selected for n in loaded.nodes()] == [True, True, False, True, False, False, False]


def test_replay_rebuilds_every_moment():
    t = small_tree()
    final = replay(t.events, len(t.events) - 1, run=t.run)
    assert final.to_json()["nodes"] == t.to_json()["nodes"]
    at_one = replay(t.events, 1, run=t.run)
    assert len(at_one) == 3 and at_one.node(1).step_score is None  # created, not yet scored
    assert replay(t.events, 2, run=t.run).node(1).step_score == 0.9


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d.update(version=SCHEMA_VERSION + 1), "newer"),
    (lambda d: d.update(schema="something-else"), "not a search-tree"),
    (lambda d: d.pop("events"), "events"),
    (lambda d: d["events"][1]["new_nodes"][0].update(parent=99), "parent"),
    (lambda d: d["events"][1]["new_nodes"][0].update(status="weird"), "status"),
    (lambda d: d["nodes"][1].update(text="tampered"), "does not match"),
    (lambda d: d["events"][2]["updates"].update({"1": {"nonsense": 1}}), "unknown fields"),
])
def test_bad_files_are_refused_clearly(mutate, message):
    data = json.loads(small_tree().dumps())
    mutate(data)
    with pytest.raises(TreeFormatError, match=message):
        SearchTree.from_json(data)


def test_not_json_at_all():
    with pytest.raises(TreeFormatError, match="not a JSON"):
        SearchTree.loads("{not json")
    with pytest.raises(TreeFormatError, match="JSON object"):
        SearchTree.loads("[1, 2]")


def test_selection_rules_rejudge_a_recorded_tree():
    t = small_tree()
    assert best_score(t, "last").answer == "20"  # the last step alone looks best
    assert best_score(t, "min").answer == "14"  # but its path has a weak step
    maj = majority_vote(t)
    assert maj.votes == {"14": 1, "15": 1, "20": 1} and maj.answer == "14"  # tie: earliest answer
    w = weighted_vote(t, "min")
    assert w.answer == "14" and w.votes["14"] == pytest.approx(0.8)
    s = shortest_confident(t, "min", 0.5)
    assert s.answer == "14"
    assert most_visited(t).answer == best_score(t, "last").answer  # no visits: falls back
