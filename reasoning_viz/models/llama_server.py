"""Generating steps through llama.cpp's ``llama-server`` (a GGUF model on a CPU, no Python) instead of
in-process.

``LlamaServerGenerator`` has the interface of ``generator.StepGenerator`` (``PolicyBackend``), like
``engine.EngineGenerator`` for vLLM, and shares its HTTP client (time-outs, retries with backoff,
aborting on Stop). What it sends per expansion: one ``/completion`` request per child, all at once
(the server's slots batch them, and ``cache_prompt`` reuses a slot's KV of the shared path), each with
the node's path as **token ids**, the step delimiter as ``stop``, a ``seed`` drawn from the run's
generator, and ``n_probs=2`` so each token's probability and top-1 minus top-2 margin are the ones the
in-process generator records.

Where llama.cpp differs from vLLM, and what is done about it (read in its ``tools/server`` source):

- A request's sampler chain defaults to top-k 40, top-p 0.95 and min-p 0.05; the requests name their
  chain (``samplers``: temperature, then top-p), so sampling is plain temperature as in-process.
- A non-streamed answer drops the stop string's probabilities (it cuts as many entries as the stop
  string has tokens, which need not be the tokens that wrote it), so answers are streamed: every
  token comes with its probabilities, the delimiter's tokens included.
- ``n_cmpl`` is capped at the server's slot count, so each child is its own request; its seed is the
  one ``n_cmpl`` would give it (the first child's seed plus its index), drawn per child here.
- There are no prompt log-probabilities, which the self-confidence and rollout scorers need of a
  policy: with this engine they refuse in one sentence (vLLM serves them).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from .engine import EngineClient, EngineError, no_check, top2_margin
from .generator import (STEP_DELIMITER, SamplingParams, StepSample, chat_prompt_ids, check_expansion,
                        eos_token_ids)


class LlamaServerGenerator:
    """Steps from a llama.cpp ``llama-server``, with the interface of ``StepGenerator``.

    ``tokenizer`` is the served model's tokenizer, loaded locally (for a GGUF file, from the same
    file): prompts are built and samples decoded here, and only token ids cross the wire.
    """

    device = torch.device("cpu")  # where the run's random generator lives (it draws the request seeds)
    engine = "llama.cpp"

    def __init__(self, client: EngineClient, tokenizer: PreTrainedTokenizerBase, props: dict[str, Any],
                 step_delimiter: str = STEP_DELIMITER):
        self.client, self.tokenizer, self.step_delimiter = client, tokenizer, step_delimiter
        # the file's name, not the server's path to it (the answer panel shows this to every user)
        self.model_name = Path(str(props.get("model_alias") or props.get("model_path") or "")).name
        self.version: str | None = props.get("build_info")
        self.context_length: int | None = (props.get("default_generation_settings") or {}).get("n_ctx")
        self.eos_ids = eos_token_ids(tokenizer)

    @classmethod
    def connect(cls, url: str, tokenizer: PreTrainedTokenizerBase, **client_options: Any) -> "LlamaServerGenerator":
        """Reach the server, read what it serves and check that it tokenizes as ``tokenizer`` does."""
        client = EngineClient(url, **client_options)
        props = client.get("/props")
        probe = "Tom has 3 apples.\n\nHe buys 4 more: 3 + 4 = 7.\n\n\\boxed{7}"
        ours = tokenizer.encode(probe, add_special_tokens=False)
        theirs = client.post("/tokenize", {"content": probe, "add_special": False}).get("tokens")
        if theirs != ours:
            served = Path(str(props.get("model_path") or "")).name
            raise EngineError(f"The llama.cpp server at {client.url} serves {served!r}, whose "
                              "tokenizer differs from this preset's policy: point the preset at the model the "
                              "server serves.")
        return cls(client, tokenizer, props)

    def describe(self) -> dict[str, Any]:
        """What the tree records of the backend."""
        return {"engine": self.engine, "version": self.version, "url": self.client.url, "model": self.model_name}

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
        if first_tokens is None:
            seeds = torch.randint(0, 2**31 - 1, (len(prefixes),), generator=generator).tolist()
            rows = [(b, prefixes[b], seed + j, None) for b, seed in enumerate(seeds) for j in range(k)]
        else:  # a forced first token: its probability is read at the prefix, the rest continues after it
            forced = [(b, t) for b, tokens in enumerate(first_tokens) for t in tokens[:k]]
            seeds = torch.randint(0, 2**31 - 1, (len(forced),), generator=generator).tolist()
            heads = self._next_token_tops(prefixes, max(2, *(len(t) for t in first_tokens)), check)
            rows = [(b, prefixes[b] + [t], seed, self._forced_head(heads[b], t)) for (b, t), seed in zip(forced, seeds)]
        out: list[list[StepSample]] = [[] for _ in prefixes]
        to_send = [(i, row) for i, row in enumerate(rows) if not self._ends_with_forced(row, params)]
        bodies = [self._body(prompt, params, seed, 0 if head is None else 1) for _, (_, prompt, seed, head) in to_send]
        answers = dict(zip((i for i, _ in to_send), self.client.call_many("POST", "/completion", bodies, check)))
        for i, (b, _, _, head) in enumerate(rows):
            out[b].append(self._sample(answers.get(i), head, params))
        return out

    def top_tokens(self, prefix: list[int], k: int) -> list[int]:
        """The ``k`` most likely next tokens after ``prefix`` (CoT-decoding's branches)."""
        tops = self._next_token_tops([prefix], k, no_check)[0]
        return [t for t, _ in sorted(tops.items(), key=lambda kv: -kv[1])][:k]

    def token_logprobs(self, sequences: list[list[int]], check: Callable[[], None] | None = None
                       ) -> list[list[float]]:
        raise EngineError(f"The llama.cpp server at {self.client.url} does not return the probabilities of a "
                          "given text, which scoring a path by the policy itself needs: use a vLLM engine, or "
                          "the preset in-process.")

    # ---- requests and answers -------------------------------------------------------------------
    def _body(self, prompt: list[int], params: SamplingParams, seed: int, forced: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "prompt": prompt, "seed": seed, "n_predict": max(1, params.max_step_tokens - forced),
            "temperature": params.temperature, "top_p": params.top_p, "samplers": ["temperature", "top_p"],
            "repeat_penalty": 1.0, "n_probs": 2, "return_tokens": True, "cache_prompt": True, "stream": True,
            "ignore_eos": params.ignore_eos,
        }
        if params.stop_at_step and not params.ignore_eos:
            body["stop"] = [self.step_delimiter]
        return body

    def _next_token_tops(self, prefixes: list[list[int]], k: int, check: Callable[[], None]) -> list[dict[int, float]]:
        """The ``k`` most likely next tokens after each prefix, with their log-probabilities."""
        bodies = [{"prompt": p, "n_predict": 1, "temperature": 0.0, "n_probs": k, "cache_prompt": True}
                  for p in prefixes]
        answers = self.client.call_many("POST", "/completion", bodies, check)
        try:
            return [{e["id"]: e["logprob"] for e in a["completion_probabilities"][0]["top_logprobs"]}
                    for a in answers]
        except (KeyError, IndexError, TypeError):
            raise EngineError(f"The llama.cpp server at {self.client.url} answered without token "
                              "probabilities.") from None

    def _forced_head(self, tops: dict[int, float], token: int) -> tuple[int, float, float]:
        if token not in tops:
            raise EngineError(f"The llama.cpp server at {self.client.url} did not rank the forced token "
                              f"{token} among its most likely next tokens.")
        return token, tops[token], top2_margin(tops.values())

    def _ends_with_forced(self, row: tuple, params: SamplingParams) -> bool:
        """A forced token that ends the step by itself, or a one-token step: nothing to ask for."""
        head = row[3]
        if head is None:
            return False
        text = self.tokenizer.decode([head[0]])
        return (head[0] in self.eos_ids or params.max_step_tokens == 1
                or (params.stop_at_step and self.step_delimiter in text))

    def _sample(self, events: list[dict] | None, head: tuple[int, float, float] | None,
                params: SamplingParams) -> StepSample:
        tokens: list[int] = []
        logprobs: list[float] = []
        margins: list[float] = []
        finish = "length"
        if head is not None:
            tokens, logprobs, margins = [head[0]], [head[1]], [head[2]]
            if events is None:  # the forced token was the whole step
                finish = ("eos" if head[0] in self.eos_ids else
                          "length" if params.max_step_tokens == 1 else "step")
        for event in events or []:
            for entry in event.get("completion_probabilities") or []:
                tokens.append(entry["id"])
                logprobs.append(entry["logprob"])
                margins.append(top2_margin(e["logprob"] for e in entry.get("top_logprobs") or []))
            if event.get("stop"):
                finish = {"word": "step", "eos": "eos"}.get(event.get("stop_type"), "length")
        if events is not None and not any(e.get("stop") for e in events):
            raise EngineError(f"The llama.cpp server at {self.client.url} ended a completion before it said why.")
        return StepSample(tokens, self.tokenizer.decode(tokens, skip_special_tokens=True), logprobs, margins, finish)

