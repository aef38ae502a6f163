"""The engine client's failure paths, without an engine: a host whose engine is down, a URL that is
not one, an answer that is not the engine's. (The engine itself is exercised in ``test_engine.py``.)"""

from __future__ import annotations

import http.server
import socket
import threading
import time

import pytest

from reasoning_viz import service
from reasoning_viz.models import loading
from reasoning_viz.models.engine import EngineClient, EngineError, EngineGenerator
from reasoning_viz.models.engine_prm import EnginePRM
from reasoning_viz.models.presets import BUNDLED_PRM, BUNDLED_STUDENT, engine_preset


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_engine_that_is_down_is_one_sentence_after_the_retries():
    url = f"http://127.0.0.1:{free_port()}"
    t0 = time.perf_counter()
    with pytest.raises(EngineError, match=r"^The inference engine at http://127\.0\.0\.1:\d+ is not answering"):
        EngineGenerator.connect(url, loading.load_tokenizer(BUNDLED_STUDENT))
    assert 3.0 < time.perf_counter() - t0 < 10.0  # three retries, 0.5 + 1 + 2 s of backoff


def test_the_app_says_so_for_an_engine_preset_and_serves_on(monkeypatch):
    preset = engine_preset(f"http://127.0.0.1:{free_port()}", str(BUNDLED_STUDENT))
    monkeypatch.setitem(loading.PRESETS, preset.name, preset)
    monkeypatch.setitem(service.PRESETS, preset.name, preset)
    with pytest.raises(ValueError, match="is not answering") as refused:
        service.get_models(preset.name)
    assert "Traceback" not in str(refused.value) and "pick a preset that runs in-process" in str(refused.value)
    assert service.get_models(loading.DEFAULT_PRESET).generator.describe() is None  # in-process still loads


@pytest.mark.parametrize("url", ["ftp://example.org", "127.0.0.1:8000", "", "http://"])
def test_an_engine_url_that_is_not_http_is_refused(url):
    with pytest.raises(ValueError, match="not an http"):
        EngineClient(url)


class NotAnEngine(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"<html>a login page</html>"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_server_that_is_not_an_engine_is_one_sentence():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotAnEngine)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(EngineError, match="answered something that is not JSON"):
            EngineClient(f"http://127.0.0.1:{server.server_port}").get("/v1/models")
    finally:
        server.shutdown()


def test_a_prm_engine_that_is_down_is_one_sentence_and_only_math_shepherd_prms_go_there():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(EngineError, match=r"^The inference engine at http://127\.0\.0\.1:\d+ is not answering"):
        EnginePRM.connect(url, loading.load_tokenizer(BUNDLED_PRM))
    with pytest.raises(ValueError, match="scores math-shepherd and qwen-prm PRMs; this preset's scorer is calculator"):
        loading.load_models(str(BUNDLED_STUDENT), "calculator", "calculator", prm_url=url)
    with pytest.raises(ValueError, match="RV_ENGINE_PRM_URL"):
        engine_preset(url, "Qwen/Qwen2.5-0.5B-Instruct", prm_url=url)  # its preset's scorer is an LLM judge
    served = engine_preset(url, str(BUNDLED_STUDENT), prm_url=url)
    assert served.prm_url == url and "the PRM's scores from the engine" in served.description


class NeverAnswers(http.server.BaseHTTPRequestHandler):
    """An engine that takes a request and hangs (overloaded, or stuck)."""

    def do_POST(self):
        time.sleep(20)

    def log_message(self, *args):
        pass


def test_a_search_whose_prm_engine_hangs_ends_at_its_time_cap(tiny_models):
    """The scorer gets the search's check, so a pooling request that never comes back is given up at the
    cap (the client's own time-out is 120 s), its steps left unscored, and the tree says why."""
    import dataclasses

    from reasoning_viz.search import Budget
    from reasoning_viz.strategies import STRATEGIES, run_search

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NeverAnswers)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        prm = EnginePRM(EngineClient(f"http://127.0.0.1:{server.server_port}"), loading.load_tokenizer(BUNDLED_PRM),
                        {"id": "prm"}, None)
        models = dataclasses.replace(tiny_models, scorer=prm)
        t0 = time.perf_counter()
        tree = run_search("Mia has 3 apples. She buys 2 more.", "best_of_n", models,
                          STRATEGIES["best_of_n"].params(n=2, max_depth=1, max_step_tokens=4),
                          budget=Budget(max_seconds=1.5))
        assert time.perf_counter() - t0 < 5.0
        assert "time" in tree.run["stopped"] and all(n.step_score is None for n in tree.nodes()[1:])
    finally:
        server.shutdown()


class StreamThatFails(http.server.BaseHTTPRequestHandler):
    """Answers a POST the way llama.cpp's server streams one that fails after it began."""

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        body = (b'data: {"index": 0, "tokens": [5], "completion_probabilities": []}\n\n'
                b'data: {"error": {"code": 500, "message": "slot unavailable", "type": "server_error"}}\n\n')
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_streamed_answer_is_read_event_by_event_and_an_error_inside_it_is_one_sentence():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StreamThatFails)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(EngineError, match=r"refused a request: slot unavailable$"):
            EngineClient(f"http://127.0.0.1:{server.server_port}").post("/completion", {"stream": True})
    finally:
        server.shutdown()


def test_prm_flags_refuse_a_tokenizer_without_the_formats_step_tag():
    from reasoning_viz.models.engine_prm import prm_engine_flags

    with pytest.raises(ValueError, match="not one token of this tokenizer: it is not a Qwen2.5-Math-PRM"):
        prm_engine_flags(loading.load_tokenizer(BUNDLED_PRM), "qwen-prm")
    assert "--convert" in prm_engine_flags(loading.load_tokenizer(BUNDLED_PRM))  # Math-Shepherd's own tag is there
