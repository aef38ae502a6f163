"""Loading models by local path or hub id, through the one ``from_pretrained`` path, and presets.

The bundled pair lives in ``assets/models``; hub ids load the same way where a hub is reachable.
Loaded models are cached per process, so every user of the app shares one instance.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..search import Models
from .generator import StepGenerator
from .scorers import CalculatorChecker, MathShepherdPRM

ASSETS_MODELS = Path(__file__).resolve().parents[2] / "assets" / "models"
BUNDLED_POLICY = ASSETS_MODELS / "tinygsm-policy"
BUNDLED_PRM = ASSETS_MODELS / "tinygsm-prm"


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_causal_lm(name_or_path: str | Path, device: torch.device | None = None
                   ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer; bf16 + SDPA on CUDA, float32 on CPU. Never remote code."""
    device = device or pick_device()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(name_or_path), dtype=dtype, attn_implementation="sdpa")
    return model.to(device).eval(), tokenizer


@dataclass(frozen=True)
class Preset:
    """A policy + scorer pair the app offers by name."""

    name: str
    policy: str
    scorer: str  # a model path/id, or "calculator"
    scorer_kind: str  # "math-shepherd" or "calculator"
    system_prompt: str | None
    memory_gb: float
    description: str


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("TinyGSM (bundled, CPU)", str(BUNDLED_POLICY), str(BUNDLED_PRM), "math-shepherd", None, 0.2,
           "The bundled ~3.4M-parameter policy and PRM: runs anywhere, offline, in seconds."),
    Preset("TinyGSM + calculator checker", str(BUNDLED_POLICY), "calculator", "calculator", None, 0.1,
           "The bundled policy scored by the exact rule-based step checker instead of a learned PRM."),
)}
DEFAULT_PRESET = next(iter(PRESETS))

_lock = threading.Lock()
_loaded: dict[str, Models] = {}


def load_preset(name: str) -> Models:
    """The preset's models, loaded once per process and shared by every caller."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {list(PRESETS)}")
    with _lock:
        if name not in _loaded:
            p = PRESETS[name]
            model, tokenizer = load_causal_lm(p.policy)
            budget = float(os.environ.get("RV_KV_BUDGET_MB", "1024"))
            generator = StepGenerator(model, tokenizer, memory_budget_mb=budget)
            if p.scorer_kind == "calculator":
                scorer = CalculatorChecker()
            else:
                prm_model, prm_tok = load_causal_lm(p.scorer, device=generator.device)
                scorer = MathShepherdPRM(prm_model, prm_tok)
            _loaded[name] = Models(generator, scorer, policy_id=_short(p.policy), scorer_id=_short(p.scorer),
                                   system_prompt=p.system_prompt)
        return _loaded[name]


def _short(name: str) -> str:
    path = Path(name)
    return path.name if path.exists() else name
