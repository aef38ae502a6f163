"""The PRM recipe's optional surprise stage: new layers on a frozen base learn, at every token the
policy wrote, the base's own probability of that token (see ``prm_loss`` in ``prm.py``).

Why: at a hot temperature a sample goes wrong through a token the model itself found unlikely, so
that probability is the check a step needs; step labels alone do not teach it
(``scripts/prm_learnability.py``), a target at every token does. ``scripts/surprise_report.py``
measures how close a trained PRM gets to it.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from ..models.scorers import MathShepherdPRM


def add_top_layers(model: PreTrainedModel, n: int) -> None:
    """Stack ``n`` new Llama decoder layers on top whose output projections start at zero, so the
    model computes exactly what it did until they are trained. It still loads with ``from_pretrained``."""
    for _ in range(n):
        layer = LlamaDecoderLayer(model.config, layer_idx=len(model.model.layers))
        for name, param in layer.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                torch.nn.init.zeros_(param)
            elif param.dim() == 2:
                torch.nn.init.normal_(param, std=model.config.initializer_range)
        model.model.layers.append(layer)
    model.config.num_hidden_layers = len(model.model.layers)


def train_only_top(model: PreTrainedModel, n_base: int) -> None:
    """Freeze the embeddings, the first ``n_base`` layers and the final norm: the base keeps predicting
    tokens exactly as before, which is what the surprise target reads."""
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith("model.layers.") and int(name.split(".")[2]) >= n_base


def surprise_mask(prm: MathShepherdPRM, question: str, ids: list[int]) -> list[int]:
    """1 at every solution token the policy wrote (not the question, a tag, or the line after a tag)."""
    start = len(prm.tokenizer.encode(prm.format(question, [])))
    tag = prm.step_tag_id
    return [int(i >= start and ids[i] != tag and ids[i - 1] != tag) for i in range(len(ids))]


def base_token_probs(model: PreTrainedModel, base_hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """P(token | the tokens before it) under the frozen base, read through the model's own final norm
    and LM head from the base's last hidden state; 0 at the first position. ``ids``: (batch, length)."""
    probs = model.lm_head(model.model.norm(base_hidden)).softmax(-1)
    p_token = torch.zeros(ids.shape, dtype=probs.dtype)
    p_token[:, 1:] = probs[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
    return p_token
