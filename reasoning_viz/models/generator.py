"""The batched step generator: K children for each of B frontier nodes in one batched decode.

Why it is fast: every frontier node of a search shares the prompt (and often more), so the longest
common prefix is prefilled once, and its KV cache is read once per step by all B*K rows
(``shared_prefix.py``; for architectures it does not cover, the cache is copied to every row).
Each node's own suffix is prefilled in one padded batch (explicit ``position_ids`` keep positions
contiguous across the padding), and that cache is repeated K times so all B*K children decode
together. Rows that finish are dropped from the batch as it shrinks. Decoded tokens are written
into spare room in the cache (``kv_cache.AppendLayer``) rather than concatenated onto it, prefills
compute logits for the last position only, and when no row is padded no attention mask is passed.
Nodes stay token ids throughout: nothing is re-tokenised from joined strings.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .kv_cache import append_cache, cache_keyword
from .shared_prefix import SharedPrefix, enable_shared_prefix

STEP_DELIMITER = "\n\n"
DEFAULT_TEMPERATURE = 0.8  # search-and-learn samples at 0.8; instruct models ship 0.6-1.0 (one source)


@dataclass
class StepSample:
    """One generated child: its new tokens (delimiter included) and per-token statistics."""

    token_ids: list[int]
    text: str
    logprobs: list[float] = field(default_factory=list)  # log p(token) under the untempered model
    margins: list[float] = field(default_factory=list)  # p(top-1) - p(top-2) at each position
    finish: str = "step"  # "step": hit the delimiter; "eos": end of answer; "length": token cap

    @property
    def mean_logprob(self) -> float:
        return sum(self.logprobs) / len(self.logprobs) if self.logprobs else 0.0


@dataclass
class SamplingParams:
    """How tokens are drawn. ``temperature == 0`` is greedy decoding."""

    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = 1.0
    max_step_tokens: int = 48
    stop_at_step: bool = True  # False: run to EOS (a whole solution in one call)
    ignore_eos: bool = False  # always run to the token cap (benchmarks)

    def validate(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_step_tokens < 1:
            raise ValueError(f"max_step_tokens must be >= 1, got {self.max_step_tokens}")


def encode_steps(tokenizer: PreTrainedTokenizerBase, steps: list[str], delimiter: str = STEP_DELIMITER) -> list[int]:
    """Token ids of finished steps joined by the delimiter, ending *before* the last delimiter.

    A continuation (a rollout, the next step) must start from these ids and write the delimiter
    itself: with byte-level BPE the blank line's tokens depend on what follows it (one merged
    token before a digit, two before a letter), so a delimiter encoded in advance would tell the
    model what kind of step comes next — e.g. "the answer line" — and derail it.
    """
    return tokenizer.encode(delimiter.join(s.strip() for s in steps), add_special_tokens=False)


def check_expansion(prefixes: list[list[int]], k: int, params: SamplingParams) -> None:
    """What every backend's ``expand`` refuses: bad sampling settings, no prefix, k < 1, an empty prefix."""
    params.validate()
    if not prefixes or k < 1:
        raise ValueError("expand needs at least one prefix and k >= 1")
    if any(len(p) == 0 for p in prefixes):
        raise ValueError("every prefix needs at least one token")


class OutOfMemory(RuntimeError):
    """The device ran out of memory even at the smallest batch; the message says what to try."""


T = TypeVar("T")


def halve_until_it_fits(attempt: Callable[[float], T], size: float, smallest: Callable[[float], bool],
                        message: str) -> T:
    """``attempt(size)``, halving ``size`` after each out-of-memory error until it fits.

    The one retry loop of the generator (``size``: its KV memory budget) and the scorers (a batch of
    paths). When ``smallest(size)`` says it cannot shrink further, raises ``OutOfMemory(message)``:
    one sentence for the user instead of a CUDA trace."""
    while True:
        try:
            return attempt(size)
        except torch.OutOfMemoryError:
            if smallest(size):
                raise OutOfMemory(message) from None
            size /= 2
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # give the failed attempt's blocks back before the next


def _no_check() -> None:
    pass


def eos_token_ids(tokenizer: PreTrainedTokenizerBase, generation_config=None) -> list[int]:
    """The ids that end an answer: the generation config's and the tokenizer's."""
    eos = getattr(generation_config, "eos_token_id", None)
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(i for i in ids if i is not None)


def chat_prompt_ids(tokenizer: PreTrainedTokenizerBase, question: str, system_prompt: str | None = None) -> list[int]:
    """Token ids of the chat prompt for ``question`` (the tokenizer's chat template, else plain text)."""
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else [])
    messages.append({"role": "user", "content": question})
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    text = (system_prompt + "\n\n" if system_prompt else "") + question + "\n\n"
    return tokenizer(text)["input_ids"]


class PolicyBackend(Protocol):
    """What a search needs of a policy: ``StepGenerator`` in-process, ``engine.EngineGenerator`` through
    an inference engine. Only token ids go in and out."""

    tokenizer: PreTrainedTokenizerBase
    device: torch.device  # where the run's random generator lives

    @property
    def context_length(self) -> int | None: ...

    def prompt_ids(self, question: str, system_prompt: str | None = None) -> list[int]: ...

    def expand(self, prefixes: list[list[int]], k: int, params: SamplingParams,
               generator: torch.Generator | None = None, first_tokens: list[list[int]] | None = None,
               check: Callable[[], None] | None = None) -> list[list[StepSample]]: ...

    def top_tokens(self, prefix: list[int], k: int) -> list[int]: ...

    def token_logprobs(self, sequences: list[list[int]], check: Callable[[], None] | None = None
                       ) -> list[list[float]]: ...

    def describe(self) -> dict | None: ...


def _common_prefix_length(seqs: list[list[int]]) -> int:
    first, n = seqs[0], min(len(s) for s in seqs)
    for i in range(n):
        t = first[i]
        if any(s[i] != t for s in seqs):
            return i
    return n


class StepGenerator:
    """Expands frontier nodes of a search tree with one model, in shared-prefix batches."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 step_delimiter: str = STEP_DELIMITER, memory_budget_mb: float = 1024.0,
                 shared_prefix_attention: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.memory_budget_bytes = memory_budget_mb * 2**20
        self.eos_ids = eos_token_ids(tokenizer, model.generation_config)
        # Per-vocabulary flags, so stop checks are tensor lookups rather than string work per token.
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        vocab = max(len(tokenizer), model.get_output_embeddings().weight.shape[0])
        self._has_delim = torch.zeros(vocab, dtype=torch.bool)
        self._starts_nl = torch.zeros(vocab, dtype=torch.bool)
        self._ends_nl = torch.zeros(vocab, dtype=torch.bool)
        for i, t in enumerate(texts):
            self._has_delim[i] = step_delimiter in t
            self._starts_nl[i] = t.startswith("\n")
            self._ends_nl[i] = t.endswith("\n")
        self._is_eos = torch.zeros(vocab, dtype=torch.bool)
        self._is_eos[self.eos_ids] = True
        cfg = model.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self._kv_bytes_per_token = 2 * cfg.num_hidden_layers * kv_heads * head_dim * model.dtype.itemsize
        self._cache_kw = cache_keyword(model)
        # Rows read one copy of their common prefix's KV cache, where the architecture allows (shared_prefix.py).
        self._shared_attention = shared_prefix_attention and enable_shared_prefix(model)
        # Only the last position's logits are used; most causal LMs can skip the rest of a prefill's.
        self._last_logits = ({"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters
                             else {})

    # ---- public API -------------------------------------------------------------------------
    @torch.inference_mode()
    def expand(self, prefixes: list[list[int]], k: int, params: SamplingParams,
               generator: torch.Generator | None = None,
               first_tokens: list[list[int]] | None = None,
               check: Callable[[], None] | None = None) -> list[list[StepSample]]:
        """``k`` children for each prefix (token ids). ``first_tokens[b][j]`` forces child j's first token.

        ``check`` is called before every decode step (a search passes its cap and Stop test, which
        raises): one expansion of thousands of rows can take longer than a run's whole time cap.
        """
        check_expansion(prefixes, k, params)
        budget = self.memory_budget_bytes

        def attempt(size: float) -> list[list[StepSample]]:
            self.memory_budget_bytes = size  # fewer rows per chunk: ``_rows_per_chunk`` reads it
            return self._expand_all(prefixes, k, params, generator, first_tokens, check or _no_check)

        try:
            return halve_until_it_fits(
                attempt, budget, lambda _: self._rows_per_chunk(prefixes, params.max_step_tokens) <= 1,
                "out of GPU memory even when generating one sequence at a time; "
                "try a smaller preset, fewer beams, or shorter steps")
        finally:
            self.memory_budget_bytes = budget

    def _rows_per_chunk(self, prefixes: list[list[int]], max_new: int) -> int:
        longest = max(len(p) for p in prefixes) + max_new
        shared = 0  # tokens held once for all rows rather than once per row
        if self._shared_attention:
            shared = max(0, min(_common_prefix_length(prefixes), min(len(p) for p in prefixes) - 1))
        per_row = (longest - shared) * self._kv_bytes_per_token
        return max(1, int((self.memory_budget_bytes - shared * self._kv_bytes_per_token) // per_row))

    def _expand_all(self, prefixes, k, params, generator, first_tokens, check) -> list[list[StepSample]]:
        out: list[list[StepSample]] = []
        for lo, hi, klo, khi in self._chunks(prefixes, k, params.max_step_tokens):
            check()
            forced = None if first_tokens is None else [f[klo:khi] for f in first_tokens[lo:hi]]
            part = self._expand_chunk(prefixes[lo:hi], khi - klo, params, generator, forced, check)
            if klo == 0:
                out.extend(part)
            else:  # a node split across chunks: append the rest of its children
                out[-1].extend(part[0])
        return out

    def prompt_ids(self, question: str, system_prompt: str | None = None) -> list[int]:
        """Token ids of the chat prompt for ``question``, ready for the first expansion."""
        return chat_prompt_ids(self.tokenizer, question, system_prompt)

    @property
    def context_length(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)

    def describe(self) -> dict | None:
        """What the tree records of the backend: nothing beyond the library versions, in-process."""
        return None

    @torch.inference_mode()
    def top_tokens(self, prefix: list[int], k: int) -> list[int]:
        """The ``k`` most likely next tokens after ``prefix`` (CoT-decoding's branches)."""
        logits = self.model(input_ids=torch.tensor([prefix], device=self.device), **self._last_logits).logits[0, -1]
        return logits.topk(k).indices.tolist()

    @torch.inference_mode()
    def token_logprobs(self, sequences: list[list[int]], check: Callable[[], None] | None = None,
                       batch_size: int = 16) -> list[list[float]]:
        """log p(token t | tokens before it), untempered, for t >= 1 of each sequence."""
        pad = self.tokenizer.pad_token_id or 0
        out: list[list[float]] = []
        for lo in range(0, len(sequences), batch_size):
            (check or _no_check)()
            batch = sequences[lo:lo + batch_size]
            width = max(len(seq) for seq in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, seq in enumerate(batch):
                ids[row, :len(seq)] = torch.tensor(seq)
                mask[row, :len(seq)] = 1
            logp = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)
                              ).logits.float().log_softmax(-1).cpu()
            chosen = logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]  # the token at t is predicted at t - 1
            out += [chosen[row, :len(seq) - 1].tolist() for row, seq in enumerate(batch)]
        return out

    # ---- internals --------------------------------------------------------------------------
    def _chunks(self, prefixes: list[list[int]], k: int, max_new: int):
        """Split the B*K rows so each chunk's KV cache fits the memory budget."""
        max_rows = self._rows_per_chunk(prefixes, max_new)
        if k > max_rows:  # one node's children alone exceed the budget
            for b in range(len(prefixes)):
                for klo in range(0, k, max_rows):
                    yield b, b + 1, klo, min(k, klo + max_rows)
            return
        per_chunk = max(1, max_rows // k)
        for lo in range(0, len(prefixes), per_chunk):
            yield lo, min(len(prefixes), lo + per_chunk), 0, k

    def _forward(self, ids, mask, positions, cache):
        return self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                          **{self._cache_kw: cache}, **self._last_logits).logits[:, -1, :].float()

    def _expand_chunk(self, prefixes, k, params, generator, forced, check):
        dev = self.device
        b = len(prefixes)
        # 1. prefill the longest common prefix once (leave >= 1 token per row for step 2)
        shared = min(_common_prefix_length(prefixes), min(len(p) for p in prefixes) - 1)
        suffixes = [p[shared:] for p in prefixes]
        width = max(len(s) for s in suffixes)
        # room for every row's suffix and its whole step, so decoding never reallocates the cache
        cache = append_cache(self.model.config, reserve=width + params.max_step_tokens)
        prefix = self._prefill_prefix(prefixes[0][:shared], b, cache) if shared > 0 else None
        cached = 0 if prefix is not None else shared  # prefix tokens in the rows' own caches
        with prefix.active() if prefix is not None else nullcontext():
            # 2. each node's own suffix, left-padded so every row's last real token is at the end
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            ids = torch.full((b, width), pad, dtype=torch.long)
            mask = torch.zeros((b, cached + width), dtype=torch.long)
            mask[:, :cached] = 1
            pos = torch.zeros((b, width), dtype=torch.long)
            for i, s in enumerate(suffixes):
                ids[i, width - len(s):] = torch.tensor(s)
                mask[i, cached + width - len(s):] = 1
                pos[i, width - len(s):] = torch.arange(shared, shared + len(s))
            ids, mask, pos = ids.to(dev), mask.to(dev), pos.to(dev)
            logits = self._forward(ids, mask, pos, cache)
            if all(len(s) == width for s in suffixes):
                mask = None  # nothing padded: a causal model attends to the whole cache, no mask needed
            next_pos = torch.tensor([len(p) for p in prefixes], device=dev)
            # 3. K children per node share that cache
            if k > 1:
                cache.batch_repeat_interleave(k)
                logits, next_pos = logits.repeat_interleave(k, 0), next_pos.repeat_interleave(k, 0)
                mask = None if mask is None else mask.repeat_interleave(k, 0)
            rows = b * k
            forced_first = None
            if forced is not None:
                forced_first = torch.tensor([t for node in forced for t in node], device=dev)
            return self._decode(logits, cache, mask, next_pos, rows, k, params, generator, forced_first, check)

    def _prefill_prefix(self, tokens: list[int], rows: int, cache) -> SharedPrefix | None:
        """Run the rows' common prefix once: into a batch-1 cache of its own that every row will attend
        to (returned), or, without shared-prefix attention, into ``cache``, then copied to every row."""
        ids = torch.tensor([tokens], device=self.device)
        if self._shared_attention:
            own = append_cache(self.model.config, reserve=0)
            self.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True,
                       **{self._cache_kw: own}, **self._last_logits)
            return SharedPrefix([(layer.keys, layer.values) for layer in own.layers])
        self.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True,
                   **{self._cache_kw: cache}, **self._last_logits)
        if rows > 1:
            cache.batch_repeat_interleave(rows)
        return None

    def _sample(self, logits: torch.Tensor, params: SamplingParams, generator) -> torch.Tensor:
        if params.temperature == 0:
            return logits.argmax(-1)
        probs = torch.softmax(logits / params.temperature, -1)
        if params.top_p < 1.0:
            sorted_p, order = probs.sort(-1, descending=True)
            drop = sorted_p.cumsum(-1) - sorted_p > params.top_p
            sorted_p[drop] = 0
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

    def _decode(self, logits, cache, mask, next_pos, rows, k, params, generator, forced_first, check):
        dev = self.device
        tokens: list[list[int]] = [[] for _ in range(rows)]
        logps: list[list[float]] = [[] for _ in range(rows)]
        margins: list[list[float]] = [[] for _ in range(rows)]
        finish = ["length"] * rows
        active = torch.arange(rows, device=dev)  # original row index of each batch row
        prev_ends_nl = torch.zeros(rows, dtype=torch.bool)
        alive = torch.ones(rows, dtype=torch.bool)  # per batch row: still generating
        for t in range(params.max_step_tokens):
            if t:
                check()
            tok = self._sample(logits, params, generator)
            if t == 0 and forced_first is not None:
                tok = forced_first[active]
            logp = torch.log_softmax(logits, -1)
            top2 = logp.topk(2, -1).values.exp()
            chosen = logp.gather(-1, tok[:, None]).squeeze(-1)
            tok_cpu = tok.cpu()
            is_eos = self._is_eos[tok_cpu] & (not params.ignore_eos)
            hit_step = (self._has_delim[tok_cpu] | (prev_ends_nl[active.cpu()] & self._starts_nl[tok_cpu]))
            done = is_eos | (hit_step if params.stop_at_step and not params.ignore_eos else torch.zeros_like(is_eos))
            done = done & alive  # rows that finished earlier stay in the batch until compaction
            # one conversion per step, not one tensor read per row
            rows_now, tok_list, alive_list = active.tolist(), tok_cpu.tolist(), alive.tolist()
            logp_list, margin_list = chosen.tolist(), (top2[:, 0] - top2[:, 1]).tolist()
            done_list, eos_list = done.tolist(), is_eos.tolist()
            for r, row in enumerate(rows_now):
                if not alive_list[r]:
                    continue
                tokens[row].append(tok_list[r])
                logps[row].append(logp_list[r])
                margins[row].append(margin_list[r])
                if done_list[r]:
                    finish[row] = "eos" if eos_list[r] else "step"
            prev_ends_nl[active.cpu()] = self._ends_nl[tok_cpu]
            alive = alive & ~done
            n_alive = int(alive.sum())
            if n_alive == 0 or t == params.max_step_tokens - 1:
                break
            if n_alive <= 0.75 * len(active):  # compact: copying the cache is worth it now
                keep_dev = alive.nonzero().squeeze(-1).to(dev)
                cache.batch_select_indices(keep_dev)
                active, tok, next_pos = active[keep_dev], tok[keep_dev], next_pos[keep_dev]
                mask = None if mask is None else mask[keep_dev]
                alive = torch.ones(len(active), dtype=torch.bool)
            if mask is not None:
                mask = torch.cat([mask, torch.ones((len(active), 1), dtype=mask.dtype, device=dev)], 1)
            logits = self._forward(tok[:, None], mask, next_pos[:, None], cache)
            next_pos = next_pos + 1
        samples = [StepSample(tokens[r], self.tokenizer.decode(tokens[r], skip_special_tokens=True),
                              logps[r], margins[r], finish[r]) for r in range(rows)]
        return [samples[i * k:(i + 1) * k] for i in range(rows // k)]
