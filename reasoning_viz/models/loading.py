"""Loading models by local path or hub id, through the one ``from_pretrained`` path.

The bundled models live in ``assets/models`` (``presets.BUNDLED_MODELS``); hub ids load the same way
where a hub is reachable.
Loaded models are cached per process, so every user of the app shares one instance. CUDA gets
bf16 and SDPA attention; the CPU gets float32.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..search import Models
from .generator import StepGenerator
from .presets import BUNDLED_MODELS, DEFAULT_PRESET, PRESETS, Preset, check_fits, trusts_remote_code  # noqa: F401
from .scorers import CalculatorChecker, MathShepherdPRM, SelfConfidence, StepScorer


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_tokenizer(name_or_path: str | Path) -> PreTrainedTokenizerBase:
    ref = str(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(ref, trust_remote_code=trusts_remote_code(ref))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(name_or_path: str | Path, device: torch.device | None = None
                   ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer. Remote code only for ids the host trusts (RV_TRUST_REMOTE_CODE)."""
    device = device or pick_device()
    ref = str(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(ref, dtype=_dtype(device), attn_implementation="sdpa",
                                                 trust_remote_code=trusts_remote_code(ref))
    return model.to(device).eval(), load_tokenizer(ref)


def load_scorer(kind: str, ref: str, device: torch.device) -> StepScorer:
    """The step scorer of the given kind (see ``presets.SCORER_KINDS``)."""
    from . import prm_adapters as pa

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


_lock = threading.Lock()
_loaded: dict[tuple, Models] = {}


def load_models(policy: str, scorer: str, scorer_kind: str, system_prompt: str | None = None,
                temperature: float = 0.8) -> Models:
    """A policy + scorer pair, loaded once per process and shared by every caller."""
    key = (policy, scorer, scorer_kind, system_prompt, temperature)
    with _lock:
        if key not in _loaded:
            device = pick_device()
            model, tokenizer = load_causal_lm(policy, device)
            budget = float(os.environ.get("RV_KV_BUDGET_MB", "1024"))
            generator = StepGenerator(model, tokenizer, memory_budget_mb=budget)
            if scorer_kind == "self-confidence":  # the policy grades itself: no second model
                scorer_obj: StepScorer = SelfConfidence(generator, system_prompt)
            elif scorer == policy and scorer_kind == "llm-judge":  # one model plays both parts
                from .prm_adapters import LLMJudge

                scorer_obj = LLMJudge(model, tokenizer)
            else:
                scorer_obj = load_scorer(scorer_kind, scorer, device)
            bundled = Path(policy).resolve() in {m.resolve() for m in BUNDLED_MODELS}
            _loaded[key] = Models(generator, scorer_obj, policy_id=_short(policy), scorer_id=_short(scorer),
                                  system_prompt=system_prompt, temperature=temperature,
                                  domain="tinygsm" if bundled else None)
        return _loaded[key]


def load_preset(name: str) -> Models:
    """The named preset's models; refuses a preset that does not fit this machine's memory."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {list(PRESETS)}")
    p: Preset = PRESETS[name]
    key = (p.policy, p.scorer, p.scorer_kind, p.system_prompt, p.temperature)
    if key not in _loaded:
        check_fits(p, pick_device())
    return load_models(p.policy, p.scorer, p.scorer_kind, p.system_prompt, p.temperature)


def _short(name: str) -> str:
    path = Path(name)
    return path.name if path.exists() else name
