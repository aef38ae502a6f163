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
from reasoning_viz.models.engine import EngineClient, EngineError, EngineGenerator, EnginePRM
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
    with pytest.raises(ValueError, match="scores Math-Shepherd-format PRMs; this preset's scorer is calculator"):
        loading.load_models(str(BUNDLED_STUDENT), "calculator", "calculator", prm_url=url)
    with pytest.raises(ValueError, match="RV_ENGINE_PRM_URL"):
        engine_preset(url, "Qwen/Qwen2.5-0.5B-Instruct", prm_url=url)  # its preset's scorer is an LLM judge
    served = engine_preset(url, str(BUNDLED_STUDENT), prm_url=url)
    assert served.prm_url == url and "the PRM's scores from the engine" in served.description
