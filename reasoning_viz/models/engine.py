"""Generating steps through an inference engine (vLLM's OpenAI-compatible server) instead of
in-process.

``EngineGenerator`` has the interface of ``generator.StepGenerator`` (``PolicyBackend``), so every
strategy, the tree record, replay and export work unchanged. What it sends per expansion: one
``/v1/completions`` request per frontier node, all at once (the engine batches them, and its prefix
cache reuses the KV of the path the nodes share), each with the node's path as **token ids**
(nothing is re-tokenised from joined text), ``n`` children, the step delimiter as ``stop`` (kept in
the output), a ``seed`` drawn from the run's generator, and ``logprobs=2`` so each token's
probability and top-1 minus top-2 margin are the ones the in-process generator records.

A stopped search closes its connections; vLLM aborts a request whose client went away. Connection
errors, time-outs and 5xx answers are retried with backoff; then the search ends with one sentence
that says the engine is not answering (``EngineError``), and the app keeps serving.

``engine_prm.EnginePRM`` scores steps through vLLM's pooling API with the same client.
``EngineClient`` (JSON or server-sent events over HTTP, with the retries and aborts above) is shared
with ``llama_server.LlamaServerGenerator``, llama.cpp's counterpart of ``EngineGenerator``.
"""

from __future__ import annotations

import http.client
import json
import math
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from .generator import (STEP_DELIMITER, SamplingParams, StepSample, chat_prompt_ids, check_expansion,
                        eos_token_ids)

RETRIES = 3  # attempts after the first, with backoff 0.5 s, 1 s, 2 s
TIMEOUT_SECONDS = 120.0  # per request: an engine under load queues requests, it does not drop them
MAX_IN_FLIGHT = 64  # requests one expansion keeps open at once


class EngineError(RuntimeError):
    """The engine is down, refused a request, or answered something unexpected; the text is for users."""


class EngineUnreachable(EngineError):
    """No answer from the engine after the retries (down, killed, or too slow)."""


class _Aborted(Exception):
    pass


def no_check() -> None:
    pass


class _Call:
    """One HTTP request that another thread can abort by shutting its socket down."""

    def __init__(self, url: urllib.parse.SplitResult, method: str, path: str, body: dict | None, timeout: float):
        self.url, self.method, self.path, self.body, self.timeout = url, method, path, body, timeout
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._conn: http.client.HTTPConnection | None = None
        self._aborted = False
        self._lock = threading.Lock()

    def start(self) -> "_Call":
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        try:
            cls = http.client.HTTPSConnection if self.url.scheme == "https" else http.client.HTTPConnection
            conn = cls(self.url.hostname, self.url.port, timeout=self.timeout)
            with self._lock:
                if self._aborted:
                    raise _Aborted()
                self._conn = conn
            data = None if self.body is None else json.dumps(self.body).encode()
            conn.request(self.method, self.url.path.rstrip("/") + self.path, body=data,
                         headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            payload = response.read()
            conn.close()
            self.result = (response.status, payload)
        except BaseException as exc:  # reported to the waiting thread, never raised here
            self.error = exc
        finally:
            self.done.set()

    def abort(self) -> None:
        with self._lock:
            self._aborted = True
            conn = self._conn
        if conn is not None and conn.sock is not None:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class EngineClient:
    """JSON over HTTP to one engine, with time-outs, retries with backoff and cancellation."""

    def __init__(self, url: str, timeout: float = TIMEOUT_SECONDS, retries: int = RETRIES):
        parsed = urllib.parse.urlsplit(url.strip())
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"The engine URL {url!r} is not an http(s) address.")
        self.url, self.base, self.timeout, self.retries = url.strip().rstrip("/"), parsed, timeout, retries

    def get(self, path: str, check: Callable[[], None] = no_check) -> Any:
        return self.call_many("GET", path, [None], check)[0]

    def post(self, path: str, body: dict, check: Callable[[], None] = no_check) -> Any:
        return self.call_many("POST", path, [body], check)[0]

    def call_many(self, method: str, path: str, bodies: list[dict | None],
                  check: Callable[[], None] = no_check) -> list[Any]:
        """Send every body at once (at most ``MAX_IN_FLIGHT`` open); the answers in order. ``check`` is
        called every 50 ms while waiting: when it raises (a Stop, a time cap), every open request is
        aborted and its exception goes on up."""
        results: list[Any] = [None] * len(bodies)
        attempts = [0] * len(bodies)
        pending = list(range(len(bodies)))  # not yet sent, or to be re-sent
        not_before: dict[int, float] = {}
        open_calls: dict[int, _Call] = {}
        try:
            while pending or open_calls:
                now = time.monotonic()
                while pending and len(open_calls) < MAX_IN_FLIGHT and not_before.get(pending[0], 0) <= now:
                    i = pending.pop(0)
                    open_calls[i] = _Call(self.base, method, path, bodies[i], self.timeout).start()
                check()
                for i, call in list(open_calls.items()):
                    if not call.done.wait(0.05 / max(1, len(open_calls))):
                        continue
                    del open_calls[i]
                    retry_reason = self._outcome(call, results, i)
                    if retry_reason is None:
                        continue
                    attempts[i] += 1
                    if attempts[i] > self.retries:
                        raise EngineUnreachable(f"The inference engine at {self.url} is not answering "
                                                f"({retry_reason}). Ask the host to start it, or pick a preset "
                                                "that runs in-process.")
                    not_before[i] = time.monotonic() + 0.5 * 2 ** (attempts[i] - 1)
                    pending.append(i)
                if pending and not open_calls:
                    time.sleep(0.05)
        finally:
            for call in open_calls.values():
                call.abort()
        return results

    def _outcome(self, call: _Call, results: list[Any], i: int) -> str | None:
        """Store a finished call's answer; the reason to retry it, or None when it is done."""
        if call.error is not None:
            if isinstance(call.error, (ConnectionError, TimeoutError, socket.timeout, http.client.HTTPException,
                                       OSError)):
                return type(call.error).__name__
            raise call.error
        status, payload = call.result
        if status >= 500 or status == 429:
            return f"HTTP {status}"
        try:
            data = _server_sent_events(payload) if payload.startswith(b"data:") else json.loads(payload)
        except ValueError:
            raise EngineError(f"The inference engine at {self.url} answered something that is not JSON "
                              f"(HTTP {status}).") from None
        if isinstance(data, list) and any(isinstance(e, dict) and "error" in e for e in data):
            status, data = 400, next(e for e in data if isinstance(e, dict) and "error" in e)  # failed mid-stream
        if status >= 400:
            message = data.get("error", {}).get("message") if isinstance(data.get("error"), dict) else data
            raise EngineError(f"The inference engine at {self.url} refused a request: {str(message)[:200]}")
        results[i] = data
        return None


def is_llama_server(client: EngineClient) -> bool:
    """Whether the engine is llama.cpp's server: it answers ``/props`` with its build and settings."""
    try:
        props = client.get("/props")
    except EngineUnreachable:
        raise
    except EngineError:
        return False  # vLLM has no /props route
    return isinstance(props, dict) and "default_generation_settings" in props


def served_model(client: EngineClient, tokenizer: PreTrainedTokenizerBase, what: str) -> tuple[dict[str, Any], str | None]:
    """The model the engine serves (its ``/v1/models`` entry) and the engine's version, after checking that
    the engine tokenizes as ``tokenizer`` does (``what`` names whose tokenizer that is, for the refusal)."""
    models = client.get("/v1/models").get("data") or []
    if not models:
        raise EngineError(f"The inference engine at {client.url} serves no model.")
    try:
        version = client.get("/version").get("version")
    except EngineError:
        version = None  # an engine without vLLM's /version route
    probe = "Tom has 3 apples.\n\nHe buys 4 more: 3 + 4 = 7.\n\n\\boxed{7} ки"
    ours = tokenizer.encode(probe, add_special_tokens=False)
    theirs = client.post("/tokenize", {"model": models[0]["id"], "prompt": probe,
                                       "add_special_tokens": False}).get("tokens")
    if theirs is not None and theirs != ours:
        raise EngineError(f"The inference engine at {client.url} serves {models[0]['id']!r}, whose tokenizer "
                          f"differs from {what}: point the preset at the model the engine serves.")
    return models[0], version


class EngineGenerator:
    """Steps from a vLLM server, with the interface of ``StepGenerator``.

    ``tokenizer`` is the served model's tokenizer, loaded locally: prompts are built and samples
    decoded here, and only token ids cross the wire. ``connect`` checks that the engine serves a model
    whose tokenizer agrees with it.
    """

    device = torch.device("cpu")  # where the run's random generator lives (it draws the request seeds)

    def __init__(self, client: EngineClient, tokenizer: PreTrainedTokenizerBase, served: dict[str, Any],
                 version: str | None, step_delimiter: str = STEP_DELIMITER):
        self.client, self.tokenizer, self.step_delimiter = client, tokenizer, step_delimiter
        self.model_name = served["id"]
        self.context_length: int | None = served.get("max_model_len")
        self.version = version
        self.eos_ids = eos_token_ids(tokenizer)

    @classmethod
    def connect(cls, url: str, tokenizer: PreTrainedTokenizerBase, **client_options: Any) -> "EngineGenerator":
        """Reach the engine, find the model it serves and check its tokenizer matches ``tokenizer``."""
        client = EngineClient(url, **client_options)
        served, version = served_model(client, tokenizer, "this preset's policy")
        return cls(client, tokenizer, served, version)

    def describe(self) -> dict[str, Any]:
        """What the tree records of the backend."""
        return {"engine": "vllm", "version": self.version, "url": self.client.url, "model": self.model_name}

    def prompt_ids(self, question: str, system_prompt: str | None = None) -> list[int]:
        return chat_prompt_ids(self.tokenizer, question, system_prompt)

    # ---- the generator interface ---------------------------------------------------------------
    def expand(self, prefixes: list[list[int]], k: int, params: SamplingParams,
               generator: torch.Generator | None = None,
               first_tokens: list[list[int]] | None = None,
               check: Callable[[], None] | None = None) -> list[list[StepSample]]:
        """``k`` children for each prefix; ``first_tokens[b][j]`` forces child j's first token."""
        check_expansion(prefixes, k, params)
        check = check or no_check
        rows = len(prefixes) if first_tokens is None else len(prefixes) * k
        seeds = torch.randint(0, 2**31 - 1, (rows,), generator=generator).tolist()
        if first_tokens is None:
            bodies = [self._body(p, k, params, seed) for p, seed in zip(prefixes, seeds)]
            answers = self.client.call_many("POST", "/v1/completions", bodies, check)
            return [[self._sample(c) for c in sorted(a["choices"], key=lambda c: c["index"])] for a in answers]
        # a forced first token: the rest of the step continues from the prefix and that token
        forced = [(b, t) for b, tokens in enumerate(first_tokens) for t in tokens[:k]]
        bodies = [self._body(prefixes[b] + [t], 1, params, seed, max_tokens=max(1, params.max_step_tokens - 1),
                             prompt_logprobs=2) for (b, t), seed in zip(forced, seeds)]
        answers = self.client.call_many("POST", "/v1/completions", bodies, check)
        out: list[list[StepSample]] = [[] for _ in prefixes]
        for (b, t), answer in zip(forced, answers):
            out[b].append(self._forced_sample(t, answer["choices"][0], params))
        return out

    def top_tokens(self, prefix: list[int], k: int) -> list[int]:
        """The ``k`` most likely next tokens after ``prefix`` (CoT-decoding's branches)."""
        answer = self.client.post("/v1/completions", {
            "model": self.model_name, "prompt": prefix, "max_tokens": 1, "temperature": 0.0, "logprobs": k,
            "return_tokens_as_token_ids": True})
        top = answer["choices"][0]["logprobs"]["top_logprobs"][0]
        return [_token_id(t) for t, _ in sorted(top.items(), key=lambda kv: -kv[1])][:k]

    def token_logprobs(self, sequences: list[list[int]], check: Callable[[], None] | None = None
                       ) -> list[list[float]]:
        """log p(token t | tokens before it) for t >= 1 of each sequence (the engine's prompt logprobs)."""
        bodies = [{"model": self.model_name, "prompt": seq, "max_tokens": 1, "temperature": 0.0,
                   "prompt_logprobs": 0} for seq in sequences]
        answers = self.client.call_many("POST", "/v1/completions", bodies, check or no_check)
        out = []
        for seq, answer in zip(sequences, answers):
            entries = answer["choices"][0]["prompt_logprobs"][1:]
            out.append([entry[str(tok)]["logprob"] for tok, entry in zip(seq[1:], entries)])
        return out

    # ---- requests and answers -------------------------------------------------------------------
    def _body(self, prompt: list[int], n: int, params: SamplingParams, seed: int, max_tokens: int | None = None,
              prompt_logprobs: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model_name, "prompt": prompt, "n": n, "seed": seed,
            "max_tokens": params.max_step_tokens if max_tokens is None else max_tokens,
            "temperature": params.temperature, "top_p": params.top_p, "logprobs": 2,
            "return_token_ids": True, "return_tokens_as_token_ids": True, "ignore_eos": params.ignore_eos,
            "skip_special_tokens": False,
        }
        if params.stop_at_step and not params.ignore_eos:
            body.update(stop=[self.step_delimiter], include_stop_str_in_output=True)
        if prompt_logprobs is not None:
            body["prompt_logprobs"] = prompt_logprobs
        return body

    def _sample(self, choice: dict[str, Any], first: tuple[int, float, float] | None = None) -> StepSample:
        tokens = list(choice.get("token_ids") or [])
        logprobs = choice.get("logprobs") or {}
        token_logp = list(logprobs.get("token_logprobs") or [])
        tops = logprobs.get("top_logprobs") or []
        if len(token_logp) != len(tokens) or len(tops) != len(tokens):
            raise EngineError(f"The inference engine at {self.client.url} answered without per-token ids and "
                              "log-probabilities; it must be a vLLM server (0.10 or newer).")
        margins = [top2_margin(top.values()) for top in tops]
        if choice.get("finish_reason") == "length":
            finish = "length"
        elif choice.get("stop_reason") == self.step_delimiter:
            finish = "step"
        else:
            finish = "eos"
        if first is not None:
            tokens, token_logp, margins = [first[0], *tokens], [first[1], *token_logp], [first[2], *margins]
        return StepSample(tokens, self.tokenizer.decode(tokens, skip_special_tokens=True), token_logp, margins,
                          finish)

    def _forced_sample(self, token: int, choice: dict[str, Any], params: SamplingParams) -> StepSample:
        entry = choice["prompt_logprobs"][-1]  # the forced token's position: its own logprob and the top 2
        first = (token, entry[str(token)]["logprob"], top2_margin(e["logprob"] for e in entry.values()))
        text = self.tokenizer.decode([token])
        if token in self.eos_ids or (params.stop_at_step and self.step_delimiter in text):
            finish = "eos" if token in self.eos_ids else "step"  # the forced token ends the step by itself
            return StepSample([token], self.tokenizer.decode([token], skip_special_tokens=True), [first[1]],
                              [first[2]], finish)
        if params.max_step_tokens == 1:
            return StepSample([token], text, [first[1]], [first[2]], "length")
        return self._sample(choice, first)


def _token_id(key: str) -> int:
    return int(key.rsplit(":", 1)[-1])  # "token_id:123" (return_tokens_as_token_ids)


def _server_sent_events(payload: bytes) -> list[Any]:
    """The JSON events of a streamed answer (``data: {...}`` lines; ``[DONE]`` ends it)."""
    events = []
    for line in payload.decode().splitlines():
        if line.startswith("data:") and line[5:].strip() != "[DONE]":
            events.append(json.loads(line[5:]))
    return events


def top2_margin(logprobs) -> float:
    """p(top-1) - p(top-2), from the top log-probabilities the engine returned."""
    top = sorted(logprobs, reverse=True)[:2]
    return math.exp(top[0]) - math.exp(top[1]) if len(top) == 2 else 1.0
