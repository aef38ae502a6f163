"""Shared fixtures. Tests never reach a model hub: everything loads from local folders."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("RV_LAB_CACHE", tempfile.mkdtemp(prefix="rv-lab-cache-"))  # never the user's own cache
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402
import torch  # noqa: E402

ARTIFACTS = ROOT / "artifacts"


@pytest.fixture(scope="session")
def bundled_models():
    from reasoning_viz.models.loading import DEFAULT_PRESET, load_preset

    return load_preset(DEFAULT_PRESET)


@pytest.fixture(scope="session")
def tiny_models():
    """A tiny randomly initialised policy and PRM that share the bundled tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from reasoning_viz.models.generator import StepGenerator
    from reasoning_viz.models.presets import BUNDLED_STUDENT
    from reasoning_viz.models.scorers import MathShepherdPRM
    from reasoning_viz.search import Models

    tok = AutoTokenizer.from_pretrained(BUNDLED_STUDENT)
    torch.manual_seed(0)

    def tiny():
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                          pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        return LlamaForCausalLM(cfg).eval()

    return Models(StepGenerator(tiny(), tok), MathShepherdPRM(tiny(), tok), "tiny-random", "tiny-random-prm")


@pytest.fixture(scope="module")
def server():
    """The app, launched on a free loopback port for the module's tests."""
    import socket

    import app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, share=False, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    app.demo.close()


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
