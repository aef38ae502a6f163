"""Calling the app's queue with raw JSON, as a hostile client can: no ``gradio_client`` checks on the way.

``call(server, "run", [...])`` joins the queue for the endpoint ``api_name`` with exactly the given
payload (any JSON, even values gradio_client would refuse to send) and returns the final message's
``(success, output)``.
"""

from __future__ import annotations

import json
import uuid

import httpx

_ids: dict[str, dict[str, int]] = {}


def endpoint_ids(server: str) -> dict[str, int]:
    """api_name -> fn_index of every event the page wires (private ones too: the queue accepts them)."""
    if server not in _ids:
        config = httpx.get(server + "config", timeout=30).json()
        _ids[server] = {d["api_name"]: d["id"] for d in config["dependencies"] if d.get("api_name")}
    return _ids[server]


def call(server: str, api_name: str, data: list | str, session: str | None = None,
         timeout: float = 120) -> tuple[bool, object]:
    """``data`` is the list of inputs, or a JSON text of it (to send what ``json.dumps`` cannot, such as
    a lone surrogate escape)."""
    session = session or uuid.uuid4().hex
    body = {"data": "DATA", "fn_index": endpoint_ids(server)[api_name], "session_hash": session,
            "event_data": None, "trigger_id": None}
    text = json.dumps(body).replace('"DATA"', data if isinstance(data, str) else json.dumps(data))
    joined = httpx.post(server + "gradio_api/queue/join", content=text,
                        headers={"content-type": "application/json"}, timeout=timeout)
    if joined.status_code != 200:
        return False, {"status": joined.status_code, "error": joined.text}
    with httpx.stream("GET", f"{server}gradio_api/queue/data?session_hash={session}", timeout=timeout) as response:
        for line in response.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    return bool(message.get("success")), message.get("output")
    return False, {"error": "the stream ended without a result"}
