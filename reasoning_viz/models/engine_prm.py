"""Scoring steps with a PRM served by vLLM's pooling API instead of in-process.

``EnginePRM`` scores steps with a Math-Shepherd-format PRM served by vLLM's pooling API: one
``/pooling`` request per path, its token ids in the PRM's input format, and vLLM's step pooler returns
P(``+``) at each step tag — the two-way softmax over the ``+``/``-`` logits that ``MathShepherdPRM``
reads in-process. ``prm_engine_flags`` gives the flags that make vLLM serve a PRM that way.
Qwen2.5-Math-PRM (``Qwen2ForProcessRewardModel``, native in vLLM) is served the same way, with its
own two-class head; its input is built as ``prm_adapters.QwenPRM`` builds it.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable
from typing import Any

from transformers import PreTrainedTokenizerBase

from .engine import EngineClient, EngineError, is_llama_server, no_check, served_model
from .prm_adapters import qwen_prm_ids
from .scorers import math_shepherd_candidates, math_shepherd_text

ENGINE_PRM_KINDS = ("math-shepherd", "qwen-prm")  # the PRM formats vLLM's step pooling serves (``EnginePRM``)
STEP_TAGS = {"math-shepherd": "ки", "qwen-prm": "<extra_0>"}


def prm_engine_flags(tokenizer: PreTrainedTokenizerBase, kind: str = "math-shepherd", good_token: str = "+",
                     bad_token: str = "-") -> list[str]:
    """The flags that make vLLM (0.32) serve a PRM of ``kind`` for ``EnginePRM``, as a pooling model
    whose output is returned at every step tag. A Math-Shepherd-format PRM is a causal LM: its one output
    is the two-way softmax of the ``+``/``-`` logits (the score head is the difference of their rows of
    the LM head). Qwen2.5-Math-PRM (``Qwen2ForProcessRewardModel``) has its own two-class head: vLLM
    returns both classes' probabilities and the positive one is read."""
    if kind not in ENGINE_PRM_KINDS:
        raise ValueError(f"vLLM's step pooling serves {' and '.join(ENGINE_PRM_KINDS)} PRMs, not {kind}")
    tag_ids = tokenizer.encode(STEP_TAGS[kind], add_special_tokens=False)
    pooler = {"task": "token_classify", "tok_pooling_type": "STEP", "step_tag_id": tag_ids[-1]}
    if kind == "qwen-prm":
        if len(tag_ids) != 1:
            raise ValueError(f"{STEP_TAGS[kind]} is not one token of this tokenizer: it is not a Qwen2.5-Math-PRM")
        return ["--runner", "pooling", "--pooler-config", json.dumps(pooler)]
    bad, good = tokenizer.convert_ids_to_tokens(math_shepherd_candidates(tokenizer, good_token, bad_token)[::-1])
    overrides = {"classifier_from_token": [bad, good], "method": "from_2_way_softmax"}
    return ["--runner", "pooling", "--convert", "classify", "--hf-overrides", json.dumps(overrides, ensure_ascii=False),
            "--pooler-config", json.dumps(pooler)]


class EnginePRM:
    """A PRM served by vLLM's pooling API, with the interface of ``MathShepherdPRM`` (``StepScorer``):
    a Math-Shepherd-format one, or Qwen2.5-Math-PRM (``kind`` ``"qwen-prm"``, its input as ``QwenPRM``
    builds it). ``tokenizer`` is the PRM's tokenizer, loaded locally: paths are formatted and encoded
    here and only token ids cross the wire. The engine keeps no state of a run's, so a run's scorer is a
    copy with its own token count."""

    def __init__(self, client: EngineClient, tokenizer: PreTrainedTokenizerBase, served: dict[str, Any],
                 version: str | None, kind: str = "math-shepherd"):
        if kind not in ENGINE_PRM_KINDS:
            raise ValueError(f"vLLM's step pooling serves {' and '.join(ENGINE_PRM_KINDS)} PRMs, not {kind}")
        self.client, self.tokenizer, self.kind, self.step_tag = client, tokenizer, kind, STEP_TAGS[kind]
        self.name = "math-shepherd-prm" if kind == "math-shepherd" else kind
        self.model_name, self.version = served["id"], version
        self.step_tag_id = tokenizer.encode(self.step_tag, add_special_tokens=False)[-1]
        self._tokens_scored = 0
        self._lock = threading.Lock()

    @classmethod
    def connect(cls, url: str, tokenizer: PreTrainedTokenizerBase, kind: str = "math-shepherd",
                **client_options: Any) -> "EnginePRM":
        """Reach the engine, check it serves this PRM's tokenizer as a step-pooling model: a one-step path
        must come back with one score in [0, 1]."""
        client = EngineClient(url, **client_options)
        if is_llama_server(client):
            raise EngineError(f"The engine at {client.url} is llama.cpp's server, which does not score steps as "
                              "a PRM: serve the PRM with vLLM (`python -m reasoning_viz prm-flags MODEL`).")
        served, version = served_model(client, tokenizer, "this preset's PRM")
        prm = cls(client, tokenizer, served, version, kind)
        try:
            (scores,) = prm.score("Tom has 3 apples. He buys 4 more.", [["Buys 4 more: 3 + 4 = 7"]])
        except EngineError as err:
            raise EngineError(f"The inference engine at {client.url} does not score steps as a PRM ({err}). "
                              f"Serve the PRM with the flags of `python -m reasoning_viz prm-flags MODEL --kind {kind}`."
                              ) from None
        prm._tokens_scored = 0
        return prm

    @property
    def tokens_scored(self) -> int:
        return self._tokens_scored

    def describe(self) -> dict[str, Any]:
        """What the tree records of the scorer's engine."""
        return {"engine": "vllm", "version": self.version, "url": self.client.url, "model": self.model_name}

    def reset(self) -> None:
        """Nothing is cached here (the engine keeps its own caches)."""

    def for_run(self) -> "EnginePRM":
        run = copy.copy(self)  # shares the client; the token count and its lock are the run's own
        run._tokens_scored, run._lock = 0, threading.Lock()
        return run

    def encode(self, question: str, steps: list[str]) -> list[int]:
        """A path in the PRM's own input format, as token ids."""
        if self.kind == "qwen-prm":
            return qwen_prm_ids(self.tokenizer, question, steps, separator=self.step_tag)
        return self.tokenizer.encode(math_shepherd_text(question, steps, self.step_tag))

    def score(self, question: str, paths: list[list[str]], gold: str | None = None,
              check: Callable[[], None] | None = None) -> list[list[float]]:
        """A step's probability of being right at every step of every path, one pooling request per path
        (sent at once)."""
        seqs = [self.encode(question, steps) for steps in paths]
        bodies = [{"model": self.model_name, "input": ids, "task": "token_classify"} for ids in seqs]
        answers = self.client.call_many("POST", "/pooling", bodies, check or no_check)
        out = []
        for steps, ids, answer in zip(paths, seqs, answers):
            try:
                # one value per tag (Math-Shepherd's two-way softmax) or both classes (Qwen's head): the last
                scores = [float(v[-1] if isinstance(v, list) else v) for v in answer["data"][0]["data"]]
            except (KeyError, IndexError, TypeError, ValueError):
                raise EngineError(f"The inference engine at {self.client.url} answered a pooling request without "
                                  "per-token scores.") from None
            if len(scores) != ids.count(self.step_tag_id) or not all(0.0 <= x <= 1.0 for x in scores):
                raise EngineError(f"The inference engine at {self.client.url} returned {len(scores)} scores for "
                                  f"{len(steps)} steps: it must pool a step's probability at each step tag.")
            out.append(scores)
        with self._lock:
            self._tokens_scored += sum(len(ids) for ids in seqs)
        return out
