"""Regression tests for issue #20: one request must never take the server down.

Each test names the defect it guards against; each failed on the main of 2026-12-01.
"""

import dataclasses
import json
import math
import re
import threading
import time
from types import SimpleNamespace

import pytest
import httpx
import raw_queue
from gradio_client import Client, handle_file
from test_tree import small_tree

from reasoning_viz import service
from reasoning_viz.models import loading
from reasoning_viz.render.figures import standalone_html, tree_figure, vote_figure
from reasoning_viz.render.text import (answer_markdown, event_markdown, explain_markdown, path_markdown, plain,
                                       progress_line)
from reasoning_viz.models.pair import Models
from reasoning_viz.models.scorers import CalculatorChecker
from reasoning_viz.search import SCORE_BATCH, Budget
from reasoning_viz.strategies import run_search
from reasoning_viz.service import make_budget
from reasoning_viz.strategies.best_of_n import BestOfNParams
from reasoning_viz.strategies.mcts import MCTSParams
from reasoning_viz.tree import SearchTree, TreeFormatError

ENDLESS_MCTS = MCTSParams(simulations=1_000_000_000, width=2, max_depth=2, max_step_tokens=4)
PRESET = "TinyGSM student + PRM (bundled, CPU)"
QUESTION = "Mia has 12 apples. She buys 5 more apples. How many apples does Mia have now?"


def same_tree(a: SearchTree, b: SearchTree) -> bool:
    """Equal nodes and event log (timings aside)."""
    return a.to_json()["nodes"] == b.to_json()["nodes"] and \
        [(e.kind, e.message) for e in a.events] == [(e.kind, e.message) for e in b.events]


# ---- 1, 5: every cap and Stop hold, wherever a run spends its time --------------------------------
def test_an_endless_mcts_stops_at_its_time_cap(tiny_models):
    """Item 1: once every leaf is finished, simulations only re-visit them, never reaching expand's
    checks; the run went on past every cap. Now every simulation checks the clock and Stop."""
    started = time.perf_counter()
    tree = run_search("Mia has 3 apples.", "mcts", tiny_models, ENDLESS_MCTS,
                      budget=Budget(max_nodes=100_000, max_seconds=1.0))  # an event cap far off
    assert time.perf_counter() - started < 10
    assert tree.run["stopped"] == "time cap reached (1 s)"


def test_an_endless_mcts_stops_when_the_user_stops_it(tiny_models):
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    started = time.perf_counter()
    tree = run_search("Mia has 3 apples.", "mcts", tiny_models, ENDLESS_MCTS,
                      budget=Budget(max_nodes=100_000, max_seconds=60), cancel=cancel)
    assert time.perf_counter() - started < 10 and tree.run["stopped"] == "cancelled by the user"


def test_one_huge_expansion_stops_at_the_time_cap(tiny_models):
    """Item 5: the cap was checked only between expansions: one expansion of N=1500 ran 19 s against a
    0.2 s cap, and the record said it was not stopped. Now generation checks it at every decode step."""
    budget = Budget(max_nodes=5000, max_tokens=10**7, max_seconds=0.5)
    started = time.perf_counter()
    tree = run_search("Mia has 3 apples.", "best_of_n", tiny_models, BestOfNParams(n=1500, max_depth=1), budget=budget)
    assert time.perf_counter() - started < 0.5 + 1.5
    assert tree.run["stopped"] == "time cap reached (0.5 s)"


class StopsWhileScoring:
    """A scorer that presses Stop during its first batch (as a user would while a big batch scores)."""

    name = "stops-while-scoring"
    tokens_scored = 0

    def __init__(self, inner, cancel: threading.Event):
        self.inner, self.cancel = inner, cancel

    def for_run(self):
        return self

    def score(self, question, paths, gold=None, check=None):
        self.cancel.set()
        return self.inner.score(question, paths, gold)


def test_a_stop_during_scoring_keeps_the_unscored_steps_marked(tiny_models):
    """Scoring is batched with the caps checked between batches; steps left unscored say so."""
    cancel = threading.Event()
    models = dataclasses.replace(tiny_models, scorer=StopsWhileScoring(tiny_models.scorer.for_run(), cancel))
    tree = run_search("Mia has 3 apples.", "best_of_n", models, BestOfNParams(n=100, max_depth=1, max_step_tokens=4),
                      cancel=cancel)
    assert tree.run["stopped"] == "cancelled by the user"
    scored = [n for n in tree.nodes()[1:] if n.step_score is not None]
    unscored = [n for n in tree.nodes()[1:] if n.step_score is None]
    assert len(scored) == SCORE_BATCH
    assert len(unscored) == 100 - len(scored)
    assert all(n.status == "pruned" and n.reason == "not scored: cancelled by the user" for n in unscored)


@pytest.mark.parametrize("seconds", [math.nan, math.inf, -1.0, 0.0])
def test_a_time_cap_that_is_not_a_positive_number_is_refused(seconds):
    """Item 4: ``min(nan, cap)`` is nan, which disabled the time cap."""
    with pytest.raises(ValueError, match="positive"):
        Budget(max_seconds=seconds).validate()
    if not seconds == math.inf:  # an infinite request is capped by the host's limit instead
        with pytest.raises(ValueError, match="positive"):
            make_budget(max_seconds=seconds)
    assert make_budget(max_seconds=math.inf).max_seconds < math.inf


# ---- 2: uploads validated completely --------------------------------------------------------------
def test_an_upload_whose_parents_form_a_cycle_is_refused():
    data = small_tree().to_json()
    index = len(data["events"])
    data["events"].append({"index": index, "kind": "scored", "message": "a cycle",
                           "new_nodes": [], "updates": {"1": {"parent": 3}}})
    with pytest.raises(TreeFormatError, match="never change"):
        SearchTree.from_json(data)


def _node_change(field, value):
    def change(data):
        data["events"][1]["new_nodes"][0][field] = value
        data["nodes"][1][field] = value
    return change


def _run_change(key, value):
    def change(data):
        data["run"][key] = value
    return change


@pytest.mark.parametrize("change, message", [
    (_node_change("step_score", "high"), "'step_score' has a wrong value"),
    (_node_change("text", ["a", "list"]), "'text' has a wrong value"),
    (_node_change("depth", 7), "has depth 7"),
    (_node_change("selected", "yes"), "'selected' has a wrong value"),
    (_node_change("path_score", {"last": "x"}), "path_score must map"),
    (_node_change("finish", "never"), "unknown finish"),
    (_run_change("strategy", {"name": "beam"}), "'strategy' is missing or not text"),
    (_run_change("selection", {"answer": 3}), "selection is malformed"),
    (_run_change("totals", {"nodes": "many"}), "totals are incomplete"),
    (_run_change("warnings", "not a list"), "'warnings' must be a list"),
    (_run_change("budget", {"max_nodes": -1, "max_tokens": 1, "max_seconds": 1}), "budget needs positive"),
])
def test_an_upload_with_wrong_typed_fields_is_refused_with_a_reason(change, message):
    """Item 12: wrong-typed fields were accepted and crashed a renderer later, with an empty "Error"."""
    data = small_tree().to_json()
    change(data)
    with pytest.raises(TreeFormatError, match=message):
        SearchTree.from_json(data)


def test_deeply_nested_json_is_refused_with_a_reason():
    with pytest.raises(TreeFormatError, match="nested too deeply"):
        SearchTree.loads("[" * 100_000 + "]" * 100_000)


# ---- 6, 7, 9: files unique, bounded, and a deleted folder comes back ------------------------------
def test_every_export_is_a_file_of_its_own(tmp_path):
    """Item 6: one file name per strategy in a shared folder: users received each other's HTML."""
    folder = service.ExportFolder(tmp_path, max_files=50)
    tree = small_tree()
    paths = {service.export_tree(tree, folder) for _ in range(5)} | {service.export_html(tree, "<p>", folder)
                                                                      for _ in range(5)}
    assert len(paths) == 10 and all(p.parent == tmp_path for p in paths)


def test_the_export_folder_is_bounded_and_comes_back_when_deleted(tmp_path):
    """Items 7 and 9: every run's JSON stayed on disk; deleting the folder broke every later run."""
    folder = service.ExportFolder(tmp_path / "exports", max_files=3)
    tree = small_tree()
    for _ in range(10):
        service.export_tree(tree, folder)
    assert len(list((tmp_path / "exports").iterdir())) == 3
    for f in (tmp_path / "exports").iterdir():
        f.unlink()
    (tmp_path / "exports").rmdir()
    assert service.export_tree(tree, folder).is_file()


def test_a_strategy_name_with_a_slash_is_no_path(tmp_path):
    """Item 12: an upload whose strategy held '/' made the export path point elsewhere (a trace)."""
    tree = small_tree()
    tree.run["strategy"] = "../../etc/evil"
    path = service.export_tree(tree, service.ExportFolder(tmp_path, 5))
    assert path.parent == tmp_path and path.name.startswith("reasoning-tree-etcevil-")


def test_the_model_cache_keeps_only_the_most_recently_used(tiny_models):
    """Item 7: a model pair was cached forever per scorer kind."""
    cache = loading.ModelCache(max_entries=2)
    for key in ("a", "b", "a", "c"):
        assert cache.get((key,), lambda: tiny_models) is tiny_models
    assert ("a",) in cache and ("c",) in cache and ("b",) not in cache and len(cache) == 2


def test_a_run_leaves_nothing_in_the_shared_scorer(bundled_models):
    """Item 7: the PRM's prefix cache lived in the shared scorer and grew with every run."""
    shared = bundled_models.scorer
    before = (len(shared._cache), shared.tokens_scored)
    tree = run_search(QUESTION, "beam_search", bundled_models, seed=0)
    assert (len(shared._cache), shared.tokens_scored) == before and tree.run["totals"]["scorer_tokens"] > 0


# ---- 10, 11: runs isolated ------------------------------------------------------------------------
def test_concurrent_runs_give_the_trees_of_serial_runs(bundled_models):
    """Item 10: one run reset the PRM's shared prefix cache while another used it (10 of 18 trees
    differed from their serial runs at RV_CONCURRENCY=2), and token totals counted other runs' tokens."""
    jobs = [("beam_search", 0), ("best_of_n", 1), ("dvts", 2), ("beam_search", 3)]
    serial = [run_search(QUESTION, s, bundled_models, seed=seed) for s, seed in jobs]
    together: list = [None] * len(jobs)

    def work(i):
        together[i] = run_search(QUESTION, jobs[i][0], bundled_models, seed=jobs[i][1])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(serial, together):
        assert same_tree(a, b)
        assert a.run["totals"]["scorer_tokens"] == b.run["totals"]["scorer_tokens"] > 0


GROWING_MCTS = MCTSParams(simulations=10**9, width=2, max_depth=10**6, max_step_tokens=4)  # expands every time


def _stream(models, session, run_id, out):
    for tree, done in service.stream_search("Mia has 3 apples.", "mcts", models, GROWING_MCTS, 0,
                                            Budget(max_nodes=100_000, max_seconds=30), None, session, run_id):
        if done:
            out[session, run_id] = tree


def test_each_run_of_a_session_can_be_stopped_alone(tiny_models, monkeypatch):
    """Item 11: runs were registered by session, so only the latest run of a session could be stopped."""
    monkeypatch.setattr(service, "_model_slots", threading.BoundedSemaphore(3))  # all three run at once
    out: dict = {}
    runs = [("session-a", "one"), ("session-a", "two"), ("session-b", "one")]
    threads = {r: threading.Thread(target=_stream, args=(tiny_models, *r, out)) for r in runs}
    for t in threads.values():
        t.start()
    time.sleep(1.0)
    assert service.cancel("session-a", "one") == 1
    threads["session-a", "one"].join(10)
    assert out["session-a", "one"].run["stopped"] == "cancelled by the user"
    assert threads["session-a", "two"].is_alive() and threads["session-b", "one"].is_alive()
    assert service.cancel("session-a") == 1  # no name: every run of the session
    threads["session-a", "two"].join(10)
    assert threads["session-b", "one"].is_alive()  # another session's run of the same name goes on
    assert service.cancel("session-b", "one") == 1
    threads["session-b", "one"].join(10)
    assert all(out[r].run["stopped"] == "cancelled by the user" for r in runs) and service.running_count() == 0


@pytest.mark.parametrize("engine", [False, True])
def test_the_model_slots_hold_for_every_caller(monkeypatch, engine):
    """Item 3: direct calls bypassed the queue's limit (6 searches at once with RV_CONCURRENCY=1); the
    service itself now allows only the host's number of searches at once, however it is called. Searches
    through an inference engine take slots of their own (RV_ENGINE_CONCURRENCY): the engine batches them."""
    monkeypatch.setattr(service, "_model_slots", threading.BoundedSemaphore(1))
    monkeypatch.setattr(service, "_engine_slots", threading.BoundedSemaphore(3))
    running, most = [0], [0]
    lock = threading.Lock()

    def fake_search(*args, **kwargs):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.2)
        with lock:
            running[0] -= 1
        return small_tree()

    monkeypatch.setattr(service, "run_search", fake_search)
    backend = {"engine": "vllm", "url": "http://127.0.0.1:1"} if engine else None
    models = Models(SimpleNamespace(describe=lambda: backend), CalculatorChecker(), "policy", "calculator")
    def search(i: int) -> None:
        for _ in service.stream_search("q", "cot", models, None, 0, Budget(), None, session=f"user-{i}"):
            pass

    threads = [threading.Thread(target=search, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == (3 if engine else 1)


def test_only_searches_that_run_weights_here_ask_for_the_gpu(monkeypatch):
    """On a ZeroGPU Space every search used to ask for the GPU (``@spaces.GPU``), also one whose policy
    is an engine elsewhere and whose scorer is the calculator; now only a search with weights here does."""
    wrapped = []

    def gpu_task(fn):
        wrapped.append(fn.__name__)
        return fn

    monkeypatch.setattr(service, "gpu_task", gpu_task)
    monkeypatch.setattr(service, "run_search", lambda *args, **kwargs: small_tree())
    engine = SimpleNamespace(describe=lambda: {"engine": "vllm", "url": "http://127.0.0.1:1"})
    here = SimpleNamespace(describe=lambda: None)
    prm = SimpleNamespace(model=object())  # a scorer with a model of its own
    for generator, scorer, asks in ((engine, CalculatorChecker(), False), (engine, prm, True),
                                    (here, CalculatorChecker(), True)):
        wrapped.clear()
        service._search("q", "cot", Models(generator, scorer, "p", "s"), None, 0, Budget(), None)
        assert bool(wrapped) == asks, (generator.describe(), type(scorer).__name__)


# ---- 3, 7, 12, 13, 14 through the running server ----------------------------------------------------
@pytest.fixture()
def client(server):
    return Client(server, analytics_enabled=False, verbose=False)


def _run(client, question=QUESTION, strategy="best_of_n", params='{"n": 2, "max_depth": 2}', seed=0,
         nodes=100, preset=PRESET, custom_policy=""):
    return client.predict(question, "", strategy, preset, seed, params, nodes, 20000, 30, custom_policy,
                          "llm-judge", "", "", api_name="/run")


def test_direct_posts_cannot_skip_the_queue(server):
    """Item 3: with the REST routes open, direct POSTs ran searches beside the queue's limit."""
    response = httpx.post(f"{server}gradio_api/run/run", json={"data": [QUESTION] + [None] * 12}, timeout=30)
    assert response.status_code == 404 and "join the queue" in response.text


def test_the_server_refuses_big_uploads_before_writing_them(server):
    """Item 7: uploads of any size were written to disk before the app refused them."""
    big = b"{" + b" " * int(service.LIMITS.max_upload_mb * 2**20 + 10) + b"}"
    response = httpx.post(f"{server}gradio_api/upload", files={"files": ("big.json", big)}, timeout=60)
    assert response.status_code == 413 or "too large" in response.text.lower()


def run_data(question=QUESTION, strategy="best_of_n", params='{"n": 2, "max_depth": 2}', seed=0, nodes=100,
             preset=PRESET) -> list:
    return [question, "", strategy, preset, seed, params, nodes, 20000, 30, "", "llm-judge", "", ""]


@pytest.mark.parametrize("kwargs, message", [
    ({"params": '{"n": 1e400}'}, "n must be a finite number"),
    ({"params": '{"temperature": NaN}'}, "temperature must be a finite number"),
    ({"params": "[" * 5000 + "]" * 5000}, "The input is nested too deeply."),
    ({"params": '{"n": 2, "bogus": 1}'}, "has no setting 'bogus'"),
    ({"params": '{"n": [1, 2]}'}, "n must be a whole number"),
    ({"params": '{"aggregation": {"a": 1}}'}, "aggregation must be one of the listed choices"),
    ({"params": '"just text"'}, "params must be a JSON object"),
    ({"nodes": "NAN"}, "max nodes must be a positive number"),
    ({"seed": 1.5}, "seed must be a whole number"),
    ({"seed": [1]}, "seed must be a whole number"),
    ({"strategy": ["cot"]}, "Unknown strategy"),
    ({"question": {"text": "hi"}}, "The question must be text."),
    ({"preset": "no such preset"}, "Unknown model preset"),
])
def test_bad_run_inputs_get_one_clear_sentence(server, kwargs, message):
    """Item 12: these gave an empty "error" (the trace only in the server log)."""
    data = json.dumps(run_data(**kwargs)).replace('"NAN"', "NaN")
    ok, output = raw_queue.call(server, "run", data)
    assert not ok and re.search(message, output["error"]), output


def test_nan_in_replay_and_inspect_gets_a_sentence(server):
    session = "nan-session"
    ok, _ = raw_queue.call(server, "run", run_data(), session=session)
    assert ok
    ok, output = raw_queue.call(server, "replay", "[NaN, null]", session=session)
    assert not ok and output["error"] == "event must be a finite number"
    ok, output = raw_queue.call(server, "inspect", "[NaN, null, false]", session=session)
    assert not ok and output["error"].startswith("There is no node")


def test_a_preset_that_fails_to_load_says_why_and_shows_no_path(client, monkeypatch):
    """Items 12 and 13: a hub preset with no hub gave a bare red "Error"; a corrupt bundled file, a trace
    naming the server's folders. (The server runs in this process, so the patch reaches it.)"""
    def offline(ref, device=None):
        raise OSError(f"We couldn't connect to 'https://huggingface.co' to load {ref}")

    monkeypatch.setattr(loading, "load_causal_lm", offline)
    with pytest.raises(Exception, match="could not be read from the Hugging Face hub"):
        _run(client, preset="Qwen2.5-0.5B-Instruct + LLM judge")

    def damaged(ref, device=None):
        raise RuntimeError(f"Error while deserializing header: HeaderTooLarge in {ref}/model.safetensors")

    loading.MODELS.clear()
    monkeypatch.setattr(loading, "load_causal_lm", damaged)
    with pytest.raises(Exception, match="a model file is missing or damaged") as err:
        _run(client)
    assert str(loading.BUNDLED_MODELS[0].parent) not in str(err.value)
    loading.MODELS.clear()


def test_an_unexpected_failure_is_a_sentence_and_the_server_serves_on(client, monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(service, "run_search", broken)
    with pytest.raises(Exception, match="Something went wrong while running the search"):
        _run(client)
    monkeypatch.undo()
    assert SearchTree.load(_run(client)[7]).run["selection"]["answer"] is not None


# ---- 14: text from uploads is text ------------------------------------------------------------------
HOSTILE = "[click](http://evil.example) ![x](http://evil.example/x.png) <img src=x onerror=alert(1)> www.evil.example"


def hostile_tree() -> SearchTree:
    tree = small_tree()
    data = tree.to_json()
    for event in data["events"]:
        event["message"] = HOSTILE
        for n in event.get("new_nodes", []):
            n["text"] = HOSTILE
            if n["answer"] is not None:
                n["answer"] = HOSTILE
    for n in data["nodes"]:
        n["text"] = HOSTILE
        if n["answer"] is not None:
            n["answer"] = HOSTILE
    data["run"].update(question=HOSTILE, warnings=[HOSTILE], stopped=HOSTILE, strategy=HOSTILE, gold=HOSTILE,
                       selection={"rule": HOSTILE, "answer": HOSTILE, "node_id": 3, "score": 0.8,
                                  "votes": {HOSTILE: 1.0}, "detail": HOSTILE})
    return SearchTree.from_json(data)


def test_uploaded_text_cannot_become_links_images_or_tags():
    """Item 14: uploaded trees put external links and images into the inspector, the answer, the replay
    text and the plot labels."""
    tree = hostile_tree()
    texts = [path_markdown(tree, n.id) for n in tree.nodes()] + [answer_markdown(tree), progress_line(tree),
                                                                  explain_markdown(tree)]
    texts += [event_markdown(tree, i) for i in range(len(tree.events))]
    for text in texts:
        assert "](" not in text and "<img" not in text and "http://" not in text and "www.evil" not in text
    assert plain(HOSTILE).count("&#") > 10
    figure = tree_figure(tree).to_dict()
    labels = json.dumps([t.get("text") for t in figure["data"]] + [t.get("hovertext") for t in figure["data"]]
                        + [figure["layout"]["title"]["text"]])
    assert "<img" not in labels and "&lt;img" in labels
    votes = vote_figure(tree.run["selection"]).to_dict()
    assert "<img" not in json.dumps(votes)
    page = standalone_html(tree)
    assert "<img src=x" not in page and "&lt;img src=x" in page


def test_a_hostile_upload_shows_as_text_through_the_app(client, tmp_path):
    path = tmp_path / "hostile.json"
    hostile_tree().save(path)
    out = client.predict(handle_file(str(path)), api_name="/import_tree")
    answer, inspector = out[2], client.predict(1, api_name="/inspect")[0]
    for text in (answer, inspector):
        assert "](" not in text and "<img" not in text


def test_an_endless_mcts_stops_at_the_event_cap_so_its_record_stays_bounded(tiny_models):
    """Item 1's other half: each re-visit of a finished path appended an event (41,634 in one second,
    12 MB of record for 7 nodes), so memory grew without bound under any time cap."""
    budget = Budget(max_nodes=20, max_seconds=60)
    tree = run_search("Mia has 3 apples.", "mcts", tiny_models, ENDLESS_MCTS, budget=budget)
    assert tree.run["stopped"] == f"event cap reached ({budget.max_events} events)"
    assert len(tree.events) <= budget.max_events + 3  # the stop note, the selection
