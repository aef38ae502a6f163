"""The load test (issue #20): 8 concurrent clients x 6 runs each, with RV_CONCURRENCY 1 and 2.

Against the app in its own process (``python app.py``), through ``gradio_client`` as users' programs
call it: every run returns, no client gets another's tree, every tree is identical to the same run made
alone before the load, one client's Stop stops only its own run, and the server's memory afterwards is
back within ``MEMORY_BOUND_MB`` of where it was before the load. ``-s`` prints the figures the README
quotes.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from app_process import AppProcess
from gradio_client import Client

from reasoning_viz.problems.tinygsm import load_test_set
from reasoning_viz.tree import SearchTree

CLIENTS, RUNS = 8, 6  # 48 runs at once: enough to cross, and under 90 s a setting on 2 cores
MEMORY_BOUND_MB = 150  # the server's resident memory after the load, above what it was after the serial runs
PRESET = "TinyGSM student + PRM (bundled, CPU)"
PLANS = [("best_of_n", {"n": 3, "max_depth": 5}), ("beam_search", {"n": 4, "beam_width": 2, "max_depth": 5}),
         ("self_consistency", {"n": 3, "max_depth": 5})]


def jobs() -> list[tuple[str, str, dict, int]]:
    problems = load_test_set()
    return [(problems[i].question, *PLANS[i % len(PLANS)], i % 3) for i in range(CLIENTS * RUNS)]


def run(client: Client, job) -> SearchTree:
    question, strategy, params, seed = job
    out = client.predict(question, "", strategy, PRESET, seed, json.dumps(params), 400, 20000, 60, "",
                         "llm-judge", "", "", api_name="/run")
    return SearchTree.load(out[7])


def _first_difference(a: SearchTree, b: SearchTree) -> str:
    runs = f"; stopped {a.run['stopped']!r} vs {b.run['stopped']!r}, selection {a.run['selection']} vs {b.run['selection']}"
    for x, y in zip(nodes(a), nodes(b)):
        if x != y:
            return f"node {x['id']}: " + ", ".join(f"{k} {x[k]!r} vs {y[k]!r}" for k in x if x[k] != y[k]) + runs
    return f"{len(a)} vs {len(b)} nodes" + runs


def nodes(tree: SearchTree) -> list[dict]:
    return tree.to_json()["nodes"]


@pytest.mark.slow
@pytest.mark.parametrize("concurrency", [1, 2])
def test_eight_clients_at_once_get_their_own_trees(concurrency):
    work = jobs()
    with AppProcess(RV_CONCURRENCY=str(concurrency)) as app:
        solo = Client(app.url, analytics_enabled=False, verbose=False)
        started = time.perf_counter()
        alone = [run(solo, job) for job in work]  # each run made alone: the reference trees
        serial_seconds = time.perf_counter() - started
        memory_before = app.rss_mb()

        results: dict[int, SearchTree] = {}
        errors: list[BaseException] = []
        stopped: list[SearchTree] = []

        def client_work(c: int) -> None:
            try:
                client = Client(app.url, analytics_enabled=False, verbose=False)
                for r in range(RUNS):
                    i = c * RUNS + r
                    results[i] = run(client, work[i])
            except BaseException as exc:  # reported below, with the others
                errors.append(exc)

        def stopper() -> None:  # a ninth user starts an endless search and stops it
            client = Client(app.url, analytics_enabled=False, verbose=False)
            endless = json.dumps({"simulations": 10**9, "width": 64, "max_depth": 50})  # ~15 s to its node cap
            job = client.submit("Mia has 3 apples.", "", "mcts", PRESET, 0, endless, 2000, 200000, 60, "",
                                "llm-judge", "", "", api_name="/run")
            while not job.outputs() and not job.done():  # Stop reaches a run once it runs, not while it queues
                time.sleep(0.1)
            time.sleep(0.5)
            client.predict("", api_name="/stop")
            stopped.append(SearchTree.load(job.result()[7]))

        threads = [threading.Thread(target=client_work, args=(c,)) for c in range(CLIENTS)]
        threads.append(threading.Thread(target=stopper))
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        load_seconds = time.perf_counter() - started
        memory_after = app.rss_mb()
        assert not errors, errors
        assert sorted(results) == list(range(CLIENTS * RUNS)), "every run returns"
        crossed = [i for i, tree in results.items() if tree.question != work[i][0]]
        differ = [i for i, tree in results.items() if nodes(tree) != nodes(alone[i])]
        assert not crossed and not differ, (crossed, differ, [_first_difference(results[i], alone[i]) for i in differ])
        assert all(tree.run["stopped"] is None for tree in results.values()), "one client's Stop stops no other"
        assert stopped and stopped[0].run["stopped"] == "cancelled by the user"
        assert memory_after - memory_before <= MEMORY_BOUND_MB
        assert app.alive()
        print(f"\nload, RV_CONCURRENCY={concurrency}: {CLIENTS} clients x {RUNS} runs + 1 stopped run in "
              f"{load_seconds:.1f} s (the same {CLIENTS * RUNS} runs one at a time: {serial_seconds:.1f} s); "
              f"0 crossed, 0 differing from their serial run; server memory {memory_before:.0f} -> "
              f"{memory_after:.0f} MB")


@pytest.mark.slow
def test_another_users_search_runs_while_a_lab_run_is_under_way(tmp_path):
    """With one model slot (RV_CONCURRENCY=1), a lab run takes the slot one search at a time: a second
    user's search, sent once the lab is running, comes back while the lab is still running, and the lab
    still finishes."""
    lab_args = (PRESET, "none", ["beam_search"], ["1", "2", "4"], ["5", "6"], 3, 0, "all", "")  # 24 searches
    with AppProcess(RV_CONCURRENCY="1", RV_LAB_CACHE=str(tmp_path / "lab")) as app:
        lab_job = Client(app.url, analytics_enabled=False, verbose=False).submit(*lab_args, api_name="/lab")
        while len(lab_job.outputs()) < 2 and not lab_job.done():  # the lab has finished a search or more
            time.sleep(0.2)
        assert not lab_job.done(), "the lab run should take longer than one search"
        other = Client(app.url, analytics_enabled=False, verbose=False)
        started = time.perf_counter()
        tree = run(other, jobs()[1])
        waited = time.perf_counter() - started
        assert tree.run["stopped"] is None and tree.run["selection"]["node_id"] is not None
        assert not lab_job.done(), f"the other user's search waited {waited:.1f} s, until the lab run had ended"
        assert lab_job.result(timeout=600)[5].startswith("**Done**")
        assert app.alive()
        print(f"\na search sent during a lab run came back in {waited:.1f} s")
