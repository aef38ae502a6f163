"""Fuzzing every endpoint and the tree loader (issue #20): no hang, no crash, no opaque error.

Bounded and derandomized (the same examples on every run), so CI runs it in about a minute. Every
endpoint gets raw JSON through the queue, as a hostile client can send it: mostly valid values with
hostile ones mixed in (NaN, infinities, huge numbers, lone surrogates, Markdown and HTML, deep nesting,
wrong types), so that calls get past the first check and reach the code behind it. Each call must end
within its timeout with either a result or one sentence (never an empty error, never a trace or a
server path), and the server must serve a normal run afterwards. The figures printed at the end
(``-s``) are the README's.
"""

from __future__ import annotations

import json
import re
from collections import Counter

import httpx
import pytest
import raw_queue
from app_process import ROOT, AppProcess
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_tree import small_tree

from reasoning_viz.models.presets import PRESETS
from reasoning_viz.render.figures import tree_figure, vote_figure
from reasoning_viz.render.text import answer_markdown, event_markdown, node_rows, path_markdown, progress_line
from reasoning_viz.service import gallery_runs
from reasoning_viz.strategies import STRATEGIES
from reasoning_viz.tree import SearchTree, TreeFormatError, replay

pytestmark = pytest.mark.slow  # about a minute: in the README command, not in `-m "not slow"`
BUNDLED_PRESETS = [name for name in PRESETS if name.startswith("TinyGSM")]
FIELDS = sorted({f for s in STRATEGIES.values() for f in s.params.__dataclass_fields__})
OUTCOMES: Counter = Counter()

HOSTILE_TEXT = ["", " ", "NaN", "1e400", "-1", "0", "[x](http://evil.example)", "<img src=x onerror=alert(1)>",
                "../../etc/passwd", "/etc/passwd", "\ud800", "a" * 5000, "[" * 3000 + "]" * 3000, "$\\href{x}{y}$"]
hostile = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(HOSTILE_TEXT),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


@st.composite
def inputs(draw, valid: list[st.SearchStrategy]) -> list:
    """Valid values for every input, then up to two of them replaced by hostile ones: deep enough to
    reach the code behind the first checks, hostile enough to find what those checks miss."""
    values = [draw(v) for v in valid]
    for i in draw(st.lists(st.integers(0, len(values) - 1), max_size=2)):
        values[i] = draw(hostile)
    return values


small_numbers = st.one_of(st.integers(1, 6), st.floats(0.0, 2.0))
params_json = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS), st.one_of(small_numbers, small_numbers, hostile,
                                                       st.sampled_from(["last", "min", "majority"])),
                    max_size=4).map(lambda d: json.dumps(d, allow_nan=True)),
    st.just("{}"))
ENDPOINT_INPUTS = {
    "run": [st.sampled_from(["Tom has 3 apples and buys 4 more. How many apples does he have?", "asdf"]),
            st.sampled_from(["", "7"]), st.sampled_from(list(STRATEGIES)),
            st.sampled_from(BUNDLED_PRESETS), st.integers(0, 3), params_json,
            st.integers(2, 60), st.integers(1, 3000), st.floats(0.1, 3.0),
            st.just(""), st.sampled_from(["llm-judge", "calculator"]), st.just(""),
            st.sampled_from(["", "a"])],
    "stop": [st.sampled_from(["", "a", "b"])],
    "inspect": [st.integers(-2, 40), st.none(), st.booleans()],
    "inspect_click": [st.integers(-2, 40).map(str), st.none(), st.booleans()],
    "redraw": [st.booleans(), st.none()],
    "replay": [st.integers(-2, 80), st.none()],
    "gallery": [st.sampled_from(list(gallery_runs()) or ["none"])],
    "export_html": [st.none()],
    "export_training": [st.none()],
    "rejudge": [st.one_of(st.sampled_from(["majority", "weighted", "best", "confidence", "most-visited"]), hostile),
                st.one_of(st.sampled_from(["last", "min", "prod", "mean"]), hostile), st.none()],
    "compare": [st.just("Tom has 3 apples and buys 4 more. How many apples does he have?"),
                st.just("7"), st.lists(st.sampled_from(list(STRATEGIES)), min_size=2, max_size=3, unique=True),
                st.sampled_from(BUNDLED_PRESETS), st.integers(0, 3), st.integers(1, 3),
                st.integers(2, 40), st.integers(1, 2000), st.floats(0.1, 2.0)],
    "show_strategy": [hostile],
    "preset_temperature": [hostile],
    "collect_params": [st.sampled_from(list(STRATEGIES))] + [hostile] * sum(
        len(s.params.__dataclass_fields__) for s in STRATEGIES.values()),
}
SESSIONS = ["fuzz-a", "fuzz-b", None]  # two sessions that hold a tree, and fresh ones


@pytest.fixture(scope="module")
def app():
    with AppProcess(RV_MAX_SECONDS="2", RV_MAX_NODES="300", RV_MAX_TOKENS="20000") as process:
        for session in SESSIONS[:2]:  # a tree in the session state, for inspect, replay and export
            ok, _ = raw_queue.call(process.url, "run", ["Tom has 3 apples and buys 4 more. How many apples?", "",
                                                        "best_of_n", BUNDLED_PRESETS[0], 0, '{"n": 2}', 50, 2000, 2,
                                                        "", "llm-judge", "", ""], session=session)
            assert ok
        yield process
        print(f"\nfuzz outcomes over {sum(OUTCOMES.values())} calls: {dict(sorted(OUTCOMES.items()))}")


def check_outcome(app: AppProcess, endpoint: str, ok: bool, output) -> None:
    if ok:
        OUTCOMES[f"{endpoint}: result"] += 1
        return
    error = output.get("error") if isinstance(output, dict) else None
    assert isinstance(error, str) and len(error) > 10, f"{endpoint}: an opaque error {output!r}"
    assert "Traceback" not in error and str(ROOT) not in error, f"{endpoint}: a trace or a server path: {error}"
    OUTCOMES[f"{endpoint}: sentence"] += 1


def _endpoint_test(endpoint: str, examples: int):
    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=inputs(ENDPOINT_INPUTS[endpoint]), session=st.sampled_from(SESSIONS))
    def fuzz(app, data, session):
        ok, output = raw_queue.call(app.url, endpoint, json.dumps(list(data), allow_nan=True), session=session,
                                    timeout=60)
        check_outcome(app, endpoint, ok, output)
    return fuzz


test_fuzz_run = _endpoint_test("run", 60)
test_fuzz_compare = _endpoint_test("compare", 15)
test_fuzz_stop = _endpoint_test("stop", 15)
test_fuzz_inspect = _endpoint_test("inspect", 25)
test_fuzz_inspect_click = _endpoint_test("inspect_click", 15)
test_fuzz_replay = _endpoint_test("replay", 25)
test_fuzz_gallery = _endpoint_test("gallery", 15)
test_fuzz_export_html = _endpoint_test("export_html", 5)
test_fuzz_export_training = _endpoint_test("export_training", 5)
test_fuzz_rejudge = _endpoint_test("rejudge", 15)
test_fuzz_collect_params = _endpoint_test("collect_params", 20)
test_fuzz_show_strategy = _endpoint_test("show_strategy", 10)
test_fuzz_redraw = _endpoint_test("redraw", 10)
test_fuzz_preset_temperature = _endpoint_test("preset_temperature", 10)


# ---- uploads: mutated trees through the tree loader, in process and through the server ------------
def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:6]):
            yield from _paths(v, (*prefix, i))


BASE_TREES = [small_tree().to_json()] + [json.loads(p.read_text(encoding="utf-8")) for p in list(gallery_runs().values())[:1]]


@st.composite
def mutated_tree(draw):
    data = json.loads(json.dumps(draw(st.sampled_from(BASE_TREES))))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(data) if p]
        path = draw(st.sampled_from(paths))
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        old = parent[path[-1]]
        how = draw(st.sampled_from(["same type"] * 6 + ["hostile"] * 3 + ["delete"]))
        if how == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif how == "same type" and isinstance(old, str):  # hostile text where text belongs
            parent[path[-1]] = draw(st.one_of(st.text(max_size=20), st.sampled_from(HOSTILE_TEXT)))
        elif how == "same type" and isinstance(old, (int, float)) and not isinstance(old, bool):
            parent[path[-1]] = draw(st.one_of(st.integers(-3, 50), st.floats(-1, 2), st.floats()))
        else:
            parent[path[-1]] = draw(hostile)
    return data


def render_everything(tree: SearchTree) -> None:
    tree_figure(tree).to_dict()
    vote_figure(tree.run.get("selection")).to_dict()
    answer_markdown(tree), progress_line(tree), node_rows(tree)
    for n in tree.nodes():
        path_markdown(tree, n.id)
    for i in range(len(tree.events)):
        event_markdown(tree, i)
    tree_figure(replay(tree.events, len(tree.events) // 2, run=tree.run))


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(data=mutated_tree())
def test_fuzz_tree_loader(data):
    """A mutated tree is either refused with TreeFormatError or loads and renders in every view."""
    try:
        tree = SearchTree.from_json(data)
    except TreeFormatError as exc:
        assert str(exc)
        OUTCOMES["loader: refused"] += 1
        return
    render_everything(tree)
    OUTCOMES["loader: loaded and rendered"] += 1


def _upload(app: AppProcess, content: bytes) -> dict:
    response = httpx.post(app.url + "gradio_api/upload", files={"files": ("tree.json", content)}, timeout=30)
    response.raise_for_status()
    return {"path": response.json()[0], "meta": {"_type": "gradio.FileData"}, "orig_name": "tree.json"}


@settings(max_examples=25, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(data=mutated_tree())
def test_fuzz_uploads_through_the_server(app, data):
    file = _upload(app, json.dumps(data, allow_nan=True).encode("utf-8", "surrogatepass"))
    ok, output = raw_queue.call(app.url, "import_tree", [file], timeout=60)
    check_outcome(app, "import_tree", ok, output)


@settings(max_examples=15, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(payload=hostile)
def test_fuzz_upload_payloads(app, payload):
    """The file input itself replaced by junk (a path outside the uploads, a number, a list)."""
    ok, output = raw_queue.call(app.url, "import_tree", json.dumps([payload], allow_nan=True), timeout=60)
    check_outcome(app, "import_tree payload", ok, output)


def test_the_server_serves_on_after_the_fuzzing(app):
    assert app.alive()
    ok, output = raw_queue.call(app.url, "run", ["Tom has 3 apples and buys 4 more. How many apples?", "7",
                                                 "beam_search", BUNDLED_PRESETS[0], 0, '{"n": 4}', 300, 20000, 2,
                                                 "", "llm-judge", "", ""])
    assert ok and re.search(r"Answer", output["data"][2])
    log = app.output()  # no call reached an error our code did not expect (Gradio logs refused payloads itself)
    assert "unexpected error while" not in log, log[log.find("unexpected error while"):][:3000]
