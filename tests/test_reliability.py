"""Regression tests for issue #20's defects fixed so far: one request must not take the server down."""

import math
import threading
import time

import pytest
from test_tree import small_tree

from reasoning_viz.search import Budget, run_search
from reasoning_viz.service import make_budget
from reasoning_viz.strategies.mcts import MCTSParams
from reasoning_viz.tree import SearchTree, TreeFormatError

ENDLESS_MCTS = MCTSParams(simulations=1_000_000_000, width=2, max_depth=2, max_step_tokens=4)


def test_an_endless_mcts_stops_at_its_time_cap(tiny_models):
    """Once every leaf is finished, simulations only re-visit them, never reaching expand's checks; the
    run went on past every cap. Now every simulation checks the clock and Stop."""
    started = time.perf_counter()
    tree = run_search("Mia has 3 apples.", "mcts", tiny_models, ENDLESS_MCTS, budget=Budget(max_seconds=1.0))
    assert time.perf_counter() - started < 10
    assert tree.run["stopped"] == "time cap reached (1 s)"


def test_an_endless_mcts_stops_when_the_user_stops_it(tiny_models):
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    started = time.perf_counter()
    tree = run_search("Mia has 3 apples.", "mcts", tiny_models, ENDLESS_MCTS, budget=Budget(max_seconds=60),
                      cancel=cancel)
    assert time.perf_counter() - started < 10 and tree.run["stopped"] == "cancelled by the user"


@pytest.mark.parametrize("seconds", [math.nan, math.inf, -1.0, 0.0])
def test_a_time_cap_that_is_not_a_positive_number_is_refused(seconds):
    with pytest.raises(ValueError, match="positive"):
        Budget(max_seconds=seconds).validate()
    if not seconds == math.inf:  # an infinite request is capped by the host's limit instead
        with pytest.raises(ValueError, match="positive"):
            make_budget(max_seconds=seconds)
    assert make_budget(max_seconds=math.inf).max_seconds < math.inf


def test_an_upload_whose_parents_form_a_cycle_is_refused():
    data = small_tree().to_json()
    index = len(data["events"])
    data["events"].append({"index": index, "kind": "scored", "message": "a cycle",
                           "new_nodes": [], "updates": {"1": {"parent": 3}}})
    with pytest.raises(TreeFormatError, match="never change"):
        SearchTree.from_json(data)
