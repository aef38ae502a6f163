"""The app as a host runs it: ``python app.py`` in its own process, with the host's environment.

Used by the fuzz and load tests, which need host limits set before the app starts (``RV_*``) and the
server's own memory to read.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


class AppProcess:
    def __init__(self, **env: str):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self.env = {**os.environ, "GRADIO_SERVER_PORT": str(self.port), "GRADIO_SERVER_NAME": "127.0.0.1",
                    "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", **env}
        self.log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"reasoning-viz-app-{self.port}.log", "w+")
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "AppProcess":
        self.process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=self.env, stdout=self.log,
                                        stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the app exited: {self.output()[-2000:]}")
            try:
                if httpx.get(self.url + "config", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError("the app did not start within 120 s")

    def __exit__(self, *exc) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def rss_mb(self) -> float:
        """The server process's resident memory."""
        with open(f"/proc/{self.process.pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()
