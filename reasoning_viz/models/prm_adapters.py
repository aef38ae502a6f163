"""Adapters for published PRMs, each reading scores exactly where its authors' reference code does.

- ``RLHFlowPRM``: RLHFlow/Llama3.1-8B-PRM-{Deepseek,Mistral}-Data. A chat in which each step is a
  user turn answered by an assistant ``+``; the step score is softmax over the logits of ``+``
  and ``-`` at the position that predicts that ``+`` (RLHF-Reward-Modeling's ``prm_evaluate.py``
  reads position -3 for the last step; all steps are read in one pass here, which is the same
  by causality).
- ``QwenPRM``: Qwen/Qwen2.5-Math-PRM-7B. System prompt, question, and the steps joined and ended
  by ``<extra_0>``; a two-class head; the positive-class probability at each ``<extra_0>``.
  ``QwenProcessRewardModel`` is that architecture written out here, so the weights load without
  ``trust_remote_code``.
- ``SkyworkPRM``: Skywork/Skywork-o1-Open-PRM-Qwen-2.5-{1.5B,7B}. ``bos + question + "\\n"``,
  then each step followed by the ``"\\n"`` step token; a value head ``v_head.summary`` on the
  last hidden state; sigmoid at each step token.
- ``LLMJudge``: any instruct model. Asks whether the latest step is correct and reads
  P("Yes") against P("No") from the next-token logits.
"""

from __future__ import annotations

import copy
import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Qwen2Config, Qwen2Model, Qwen2PreTrainedModel

from .generator import halve_until_it_fits

QWEN_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


def _clean(step: str) -> str:
    return step.strip()


class _PathScorer(ABC):
    """The loop every adapter shares: one model serves every user (a lock), paths are scored one at a
    time (published PRMs are large; one path is the smallest batch), tokens run are counted, and running
    out of memory is one sentence. An adapter says only how to score one path (``score_path``),
    calling ``forward`` for each model pass."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model
        self._lock = threading.Lock()
        self._tokens = 0

    @property
    def tokens_scored(self) -> int:
        return self._tokens

    def for_run(self):
        """The same model with this run's own lock, token count and memo (see ``StepScorer.for_run``)."""
        run = copy.copy(self)
        run._lock, run._tokens = threading.Lock(), 0
        return run

    @torch.inference_mode()
    def score(self, question: str, paths: list[list[str]], gold: str | None = None,
              check: Callable[[], None] | None = None) -> list[list[float]]:
        with self._lock:
            return halve_until_it_fits(lambda _: [self.score_path(question, steps) for steps in paths], 1,
                                       lambda _: True, "out of GPU memory while scoring one path; try a "
                                       "smaller preset or shorter steps")

    def forward(self, ids: list[int], **kwargs):
        """One pass of the model over one sequence of token ids (counted)."""
        self._tokens += len(ids)
        return self.model(torch.tensor([ids], device=self.model.device), **kwargs)

    @abstractmethod
    def score_path(self, question: str, steps: list[str]) -> list[float]:
        """One score per step of one path."""


class RLHFlowPRM(_PathScorer):
    name = "rlhflow-prm"

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase):
        super().__init__(model)
        self.tokenizer = tokenizer
        self.candidate_ids = [tokenizer.encode("+")[-1], tokenizer.encode("-")[-1]]

    def conversation(self, question: str, steps: list[str]) -> list[dict]:
        turns = []
        for k, step in enumerate(steps):
            text = f"{question} {_clean(step)}" if k == 0 else _clean(step)
            turns += [{"role": "user", "content": text}, {"role": "assistant", "content": "+"}]
        return turns

    def positions(self, conversation: list[dict]) -> tuple[list[int], list[int]]:
        """Token ids of the chat and, per step, the position whose logits predict its ``+``."""
        ids = self.tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=False)
        positions = []
        for k in range(0, len(conversation), 2):
            start = len(self.tokenizer.apply_chat_template(conversation[: k + 1], tokenize=True,
                                                            add_generation_prompt=True, return_dict=False))
            if ids[start] != self.candidate_ids[0]:
                raise ValueError("the chat template does not place the assistant's '+' where expected")
            positions.append(start - 1)
        return ids, positions

    def score_path(self, question: str, steps: list[str]) -> list[float]:
        ids, positions = self.positions(self.conversation(question, steps))
        logits = self.forward(ids).logits[0]
        return logits[positions][:, self.candidate_ids].float().softmax(-1)[:, 0].tolist()


class QwenProcessRewardModel(Qwen2PreTrainedModel):
    """Qwen2.5-Math-PRM's architecture: a Qwen2 decoder and a two-layer two-class head per token."""

    config_class = Qwen2Config

    def __init__(self, config: Qwen2Config):
        super().__init__(config)
        self.num_labels = getattr(config, "num_labels", 2) or 2
        self.model = Qwen2Model(config)
        self.score = nn.Sequential(nn.Linear(config.hidden_size, config.hidden_size), nn.ReLU(),
                                   nn.Linear(config.hidden_size, self.num_labels))
        self.post_init()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.score(hidden)  # (batch, sequence, num_labels)


def qwen_prm_ids(tokenizer: PreTrainedTokenizerBase, question: str, steps: list[str], system_prompt: str = QWEN_SYSTEM,
                 separator: str = "<extra_0>") -> list[int]:
    """Qwen2.5-Math-PRM's input (its model card): the system prompt, the question, and the steps joined
    and ended by ``separator``, in the chat template."""
    messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": question},
                {"role": "assistant", "content": separator.join(_clean(s) for s in steps) + separator}]
    return tokenizer.encode(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False))


class QwenPRM(_PathScorer):
    name = "qwen-prm"

    def __init__(self, model: QwenProcessRewardModel, tokenizer: PreTrainedTokenizerBase,
                 system_prompt: str = QWEN_SYSTEM, separator: str = "<extra_0>"):
        super().__init__(model)
        self.tokenizer, self.system_prompt = tokenizer, system_prompt
        self.separator = separator
        self.separator_id = tokenizer.encode(separator)[0]

    def encode(self, question: str, steps: list[str]) -> list[int]:
        return qwen_prm_ids(self.tokenizer, question, steps, self.system_prompt, self.separator)

    def score_path(self, question: str, steps: list[str]) -> list[float]:
        ids = self.encode(question, steps)
        logits = self.forward(ids)[0].float()
        return logits.softmax(-1)[torch.tensor(ids, device=logits.device) == self.separator_id][:, 1].tolist()


def load_value_head(name_or_path: str | Path, hidden_size: int) -> nn.Linear:
    """Skywork's ``v_head.summary`` weights, read from the checkpoint's safetensors files."""
    from safetensors import safe_open
    from transformers.utils import cached_file

    index = cached_file(str(name_or_path), "model.safetensors.index.json", _raise_exceptions_for_missing_entries=False)
    if index:
        weight_map = json.loads(Path(index).read_text())["weight_map"]
        shard = cached_file(str(name_or_path), weight_map["v_head.summary.weight"])
    else:
        shard = cached_file(str(name_or_path), "model.safetensors")
    head = nn.Linear(hidden_size, 1)
    with safe_open(shard, framework="pt") as f:
        head.weight.data.copy_(f.get_tensor("v_head.summary.weight"))
        head.bias.data.copy_(f.get_tensor("v_head.summary.bias"))
    return head


class SkyworkPRM(_PathScorer):
    name = "skywork-prm"

    def __init__(self, model: PreTrainedModel, value_head: nn.Linear, tokenizer: PreTrainedTokenizerBase,
                 step_token: str = "\n"):
        super().__init__(model)
        self.tokenizer, self.step_token = tokenizer, step_token
        self.value_head = value_head.to(device=model.device, dtype=torch.float32).eval()
        self.step_token_id = tokenizer.encode(step_token)[-1]

    def encode(self, question: str, steps: list[str]) -> tuple[list[int], list[int]]:
        """Skywork's ``prepare_input``: the ids and the position of each step's reward."""
        ids = self.tokenizer.encode((self.tokenizer.bos_token or "") + question + "\n")
        flags = []
        for step in steps:
            text = _clean(step).replace(self.step_token, " ")  # one reward per step: no inner step tokens
            ids += (self.tokenizer.encode(text) if text else []) + [self.step_token_id]
            flags.append(len(ids) - 1)
        return ids, flags

    def score_path(self, question: str, steps: list[str]) -> list[float]:
        ids, flags = self.encode(question, steps)
        hidden = self.forward(ids, output_hidden_states=True).hidden_states[-1][0]
        return torch.sigmoid(self.value_head(hidden[flags].float())).squeeze(-1).tolist()


class LLMJudge(_PathScorer):
    """Any instruct model as a step verifier: P("Yes") when asked if the latest step is correct."""

    name = "llm-judge"
    SYSTEM = "You check math solutions step by step. Reply with one word: Yes or No."

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase):
        super().__init__(model)
        self.tokenizer = tokenizer
        yes = tokenizer.encode("Yes", add_special_tokens=False)
        no = tokenizer.encode("No", add_special_tokens=False)
        self.candidate_ids = [yes[0], no[0]]
        self._memo: dict[tuple, float] = {}  # a step's verdict depends only on its path, so reuse it

    def prompt_ids(self, question: str, steps: list[str]) -> list[int]:
        shown = "\n".join(f"Step {i + 1}: {_clean(s)}" for i, s in enumerate(steps))
        user = (f"Question: {question}\n\nSolution so far:\n{shown}\n\n"
                f"Is Step {len(steps)} correct? Answer Yes or No.")
        messages = [{"role": "system", "content": self.SYSTEM}, {"role": "user", "content": user}]
        if self.tokenizer.chat_template:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return self.tokenizer.encode(text, add_special_tokens=False)
        return self.tokenizer.encode(f"{self.SYSTEM}\n\n{user}\nAnswer:")

    def score_path(self, question: str, steps: list[str]) -> list[float]:
        scores = []
        for j in range(len(steps)):  # one question per step prefix
            key = (question, tuple(steps[: j + 1]))
            if key not in self._memo:
                logits = self.forward(self.prompt_ids(question, steps[: j + 1])).logits[0, -1]
                self._memo[key] = logits[self.candidate_ids].float().softmax(-1)[0].item()
            scores.append(self._memo[key])
        return scores

    def reset(self) -> None:
        with self._lock:
            self._memo.clear()

    def for_run(self) -> "LLMJudge":
        run = super().for_run()
        run._memo = {}  # verdicts are kept for one run only (memory stays bounded by the run's caps)
        return run
