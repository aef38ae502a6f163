"""Step scorers: everything that gives each reasoning step a score in [0, 1].

One interface (``StepScorer.score``): a batch of paths in, one score per step of each path out.
Implementations here: the Math-Shepherd-format PRM (the bundled one), the policy's own confidence (no
verifier at all), the exact calculator checker for the bundled domain, and the Monte-Carlo rollout
estimate that Math-Shepherd trains on.
"""

from __future__ import annotations

import copy
import math
import re
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable
from contextlib import nullcontext
from typing import Protocol

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from ..problems.grading import answers_match, extract_boxed, normalize_answer
from .generator import PolicyBackend, SamplingParams, encode_steps, halve_until_it_fits
from .kv_cache import append_cache, cache_keyword
from .shared_prefix import SharedPrefix, enable_shared_prefix


class StepScorer(Protocol):
    """Scores reasoning steps. ``paths[i]`` is the list of step texts of path i (no delimiters)."""

    name: str

    def score(self, question: str, paths: list[list[str]], gold: str | None = None,
              check: Callable[[], None] | None = None) -> list[list[float]]:
        """One score in [0, 1] for every step of every path, higher = more likely correct. ``check`` (a
        search's caps and Stop) is called where a scorer waits long, and raises to end the call early:
        the engine's and the policy's own scorers honour it; an in-process PRM's batch is short."""
        ...

    @property
    def tokens_scored(self) -> int:
        """Tokens this scorer has run through a model so far (0 for rule-based scorers)."""
        ...

    def for_run(self) -> "StepScorer":
        """A scorer for one search run: the same weights, but its own caches and token count, so
        concurrent runs never change each other's scores or totals (``search.run_strategy`` takes one per run)."""
        ...


def math_shepherd_text(question: str, steps: list[str], step_tag: str = "ки") -> str:
    """A path in the Math-Shepherd PRM's input format: ``f"{question} Step 1: ... ки\\nStep 2: ... ки"``.
    A step's own text never carries the tag (a sampled one would add a score): exactly one per step."""
    output = "\n".join(f"Step {i + 1}: {s.replace(step_tag, '').strip()} {step_tag}" for i, s in enumerate(steps))
    return f"{question.replace(step_tag, '')} {output}"


def math_shepherd_candidates(tokenizer: PreTrainedTokenizerBase, good_token: str = "+", bad_token: str = "-") -> list[int]:
    """The ids of the good and the bad token, as Math-Shepherd's reference inference reads them."""
    ids = tokenizer.encode(f"{good_token} {bad_token}", add_special_tokens=False)
    if len(ids) != 2:
        raise ValueError(f"'{good_token} {bad_token}' must tokenize to two tokens, got {ids}")
    return ids


class MathShepherdPRM:
    """A causal-LM PRM in the format of ``peiyi9979/math-shepherd-mistral-7b-prm``.

    Input: ``f"{question} {output}"`` where output is ``"Step 1: ... ки\\nStep 2: ... ки"``; the
    step score is softmax over the logits of ``+`` and ``-`` at each ``ки`` position, P(``+``).
    Paths that extend an already-scored path reuse its KV cache (bounded by ``cache_mb``), so the
    cost of scoring one new step does not grow with the depth of the tree.
    """

    name = "math-shepherd-prm"

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, step_tag: str = "ки",
                 good_token: str = "+", bad_token: str = "-", cache_mb: float = 256.0, batch_size: int = 16):
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        self.step_tag = step_tag
        self.candidate_ids = math_shepherd_candidates(tokenizer, good_token, bad_token)
        self.step_tag_id = tokenizer.encode(step_tag, add_special_tokens=False)[-1]
        self.batch_size = batch_size
        self.cache_bytes = cache_mb * 2**20
        # token ids of a scored path -> (its per-layer KV tensors, their bytes, its step scores)
        self._cache: OrderedDict[tuple[int, ...], tuple[list[tuple[torch.Tensor, torch.Tensor]], int, list[float]]] = OrderedDict()
        self._cached_lengths: Counter[int] = Counter()  # key lengths present, for longest-prefix lookup
        self._cached_bytes = 0
        self._tokens_scored = 0
        self._lock = threading.Lock()  # one model and cache shared by every user of the app
        # siblings read their parent's cached KV once instead of a copy each (shared_prefix.py)
        self._shared_attention = enable_shared_prefix(model)
        self._cache_kw = cache_keyword(model)

    @property
    def tokens_scored(self) -> int:
        return self._tokens_scored

    def format(self, question: str, steps: list[str]) -> str:
        return math_shepherd_text(question, steps, self.step_tag)

    def encode(self, question: str, steps: list[str]) -> list[int]:
        return self.tokenizer.encode(self.format(question, steps))

    @torch.inference_mode()
    def score(self, question: str, paths: list[list[str]], gold: str | None = None,
              check: Callable[[], None] | None = None) -> list[list[float]]:
        def attempt(size: float) -> list[list[float]]:
            batch = max(1, int(size))
            if len(paths) > 1:  # all paths share the question: run it once, reuse its cache
                self._prime(question)
            out: list[list[float]] = []
            for lo in range(0, len(paths), batch):
                out.extend(self._score_batch(question, paths[lo:lo + batch]))
            return out

        with self._lock:
            return halve_until_it_fits(attempt, self.batch_size, lambda size: size < 2,
                                       "out of GPU memory while scoring even one path; try a smaller "
                                       "preset or shorter steps")

    # ---- prefix KV cache ----------------------------------------------------------------
    def _lookup(self, ids: list[int]):
        """The longest cached prefix of ``ids`` (leaving at least one new token): (layers, length, scores)."""
        for n in sorted(self._cached_lengths, reverse=True):
            key = tuple(ids[:n])
            if n < len(ids) and key in self._cache:
                self._cache.move_to_end(key)
                layers, size, scores = self._cache[key]
                if isinstance(layers, _Extension):  # joined once, when the path is first extended
                    layers = layers.joined()
                    self._cache[key] = (layers, size, scores)
                return layers, n, scores
        return None, 0, []

    def _store(self, ids: list[int], layers: "list[tuple[torch.Tensor, torch.Tensor]] | _Extension",
               scores: list[float]) -> None:
        size = layers.nbytes if isinstance(layers, _Extension) else _nbytes(layers)
        key = tuple(ids)
        if size > self.cache_bytes or key in self._cache:
            return
        self._cache[key] = (layers, size, scores)
        self._cached_lengths[len(key)] += 1
        self._cached_bytes += size
        while self._cached_bytes > self.cache_bytes:
            old_key, (_, old, _) = self._cache.popitem(last=False)
            self._cached_bytes -= old
            self._cached_lengths[len(old_key)] -= 1
            if not self._cached_lengths[len(old_key)]:
                del self._cached_lengths[len(old_key)]

    def reset(self) -> None:
        """Forget cached prefixes: a run that starts from an empty cache computes bit-identical scores."""
        with self._lock:
            self._cache.clear()
            self._cached_lengths.clear()
            self._cached_bytes = 0

    def for_run(self) -> "MathShepherdPRM":
        run = copy.copy(self)  # shares the model; the prefix cache, its lock and the count are the run's own
        run._cache, run._cached_lengths, run._cached_bytes = OrderedDict(), Counter(), 0
        run._tokens_scored, run._lock = 0, threading.Lock()
        return run

    def _prime(self, question: str) -> None:
        ids = self.tokenizer.encode(question)
        if not ids or tuple(ids) in self._cache:
            return
        cache = DynamicCache(config=self.model.config)
        self.model(input_ids=torch.tensor([ids], device=self.device), use_cache=True, **{self._cache_kw: cache})
        self._tokens_scored += len(ids)
        self._store(ids, [(k.clone(), v.clone()) for k, v in _cache_layers(cache)], [])

    def _score_batch(self, question: str, paths: list[list[str]]) -> list[list[float]]:
        dev = self.device
        seqs = [self.encode(question, steps) for steps in paths]
        found = [self._lookup(s) for s in seqs]
        cached_len = [n for _, n, _ in found]
        new = [s[n:] for s, n in zip(seqs, cached_len)]
        width_n = max(len(x) for x in new)
        rows = len(seqs)
        prefix = None
        if self._shared_attention and found[0][0] is not None and all(f[0] is found[0][0] for f in found):
            # one scored prefix for every row (siblings): rows attend to its single copy
            prefix = SharedPrefix(found[0][0])
            width_c = 0
            cache = append_cache(self.model.config, reserve=width_n)
        else:  # cached prefixes, left-padded to a common width, copied once into each row's cache
            width_c = max(cached_len)
            cache = self._row_caches(found, width_c, width_n)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((rows, width_n), pad_id, dtype=torch.long)
        mask = torch.zeros((rows, width_c + width_n), dtype=torch.long)
        pos = torch.zeros((rows, width_n), dtype=torch.long)
        for i, (x, n) in enumerate(zip(new, cached_len)):
            ids[i, :len(x)] = torch.tensor(x)
            mask[i, width_c - (0 if prefix else n):width_c + len(x)] = 1
            pos[i, :len(x)] = torch.arange(n, n + len(x))
        with prefix.active() if prefix is not None else nullcontext():
            logits = self.model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                                use_cache=True, **{self._cache_kw: cache}).logits
        self._tokens_scored += sum(len(x) for x in new)
        probs = logits[:, :, self.candidate_ids].float().softmax(-1)[:, :, 0].cpu()
        results = []
        for i, (seq, n) in enumerate(zip(seqs, cached_len)):
            # scores at every tag of the full path: the cached part was scored when it was stored
            prefix_scores = found[i][2]
            new_ids = torch.tensor(new[i])
            new_scores = probs[i, :len(new[i])][new_ids == self.step_tag_id].tolist()
            full = prefix_scores + new_scores
            results.append(full)
            # the path's KV: its scored prefix's (kept, not copied), then its own new tokens'
            own = [(k[i:i + 1, :, width_c:width_c + len(new[i])].clone(),
                    v[i:i + 1, :, width_c:width_c + len(new[i])].clone()) for k, v in _cache_layers(cache)]
            self._store(seq, own if found[i][0] is None else _Extension(found[i][0], own), full)
        return results

    def _row_caches(self, found, width_c: int, width_n: int) -> DynamicCache:
        """A cache holding each row's scored prefix (right-aligned at ``width_c``), with room for ``width_n`` more."""
        cache = append_cache(self.model.config, reserve=width_n)
        ref = next((layers for layers, _, _ in found if layers is not None), None)
        if ref is None:
            return cache
        for li, (layer, (ref_k, ref_v)) in enumerate(zip(cache.layers, ref)):
            keys = ref_k.new_zeros((len(found), ref_k.shape[1], width_c + width_n, ref_k.shape[3]))
            values = ref_v.new_zeros((len(found), ref_v.shape[1], width_c + width_n, ref_v.shape[3]))
            for row, (layers, n, _) in enumerate(found):
                if layers is not None:
                    keys[row, :, width_c - n:width_c] = layers[li][0][0]
                    values[row, :, width_c - n:width_c] = layers[li][1][0]
            layer.load(keys, values, width_c)
        return cache


def _nbytes(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)


class _Extension:
    """A scored path stored as its parent's KV plus its own tokens' KV, joined only if it is extended.

    Most scored children are never extended (beam search keeps N/M of them; best-of-N none), so
    copying each one's whole path at store time would cost in proportion to the depth for nothing.
    ``nbytes`` counts the whole path, as a joined copy would take.
    """

    def __init__(self, parent: list[tuple[torch.Tensor, torch.Tensor]], own: list[tuple[torch.Tensor, torch.Tensor]]):
        self.parent, self.own = parent, own
        self.nbytes = _nbytes(parent) + _nbytes(own)

    def joined(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(torch.cat([pk, k], 2), torch.cat([pv, v], 2)) for (pk, pv), (k, v) in zip(self.parent, self.own)]


def _cache_layers(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


class SelfConfidence:
    """The policy grading itself: a step's score is the lowest probability the policy gives any of its
    tokens (untempered), read from one forward pass over the path. No second model.

    Why it is here: a sample that goes wrong by chance passes through a token the model found
    unlikely, and this catches that. A mistake the model makes *confidently* (a difference it cannot
    compute, where the wrong digit looks as likely to it as the right one) it cannot catch, which is
    what a verifier that knows more is for (the bundled PRM is built on the larger model).
    """

    name = "self-confidence"

    def __init__(self, generator: PolicyBackend, system_prompt: str | None = None):
        self.generator, self.system_prompt = generator, system_prompt
        self._lock = threading.Lock()
        self._tokens = 0

    @property
    def tokens_scored(self) -> int:
        return self._tokens

    def for_run(self) -> "SelfConfidence":
        run = copy.copy(self)
        run._tokens, run._lock = 0, threading.Lock()
        return run

    def spans(self, question: str, steps: list[str]) -> tuple[list[int], list[tuple[int, int]]]:
        """The path's token ids (prompt first) and, per step, the positions of its tokens: from the end
        of the step before (its blank line belongs to the step it opens) to its own last token."""
        tok = self.generator.tokenizer
        prompt = self.generator.prompt_ids(question, self.system_prompt)
        ends = [len(prompt) + len(encode_steps(tok, steps[: j + 1])) for j in range(len(steps))]
        starts = [len(prompt), *ends[:-1]]
        return prompt + encode_steps(tok, steps), [(a, max(a + 1, b)) for a, b in zip(starts, ends)]

    def score(self, question: str, paths: list[list[str]], gold: str | None = None,
              check: Callable[[], None] | None = None) -> list[list[float]]:
        encoded = [self.spans(question, steps) for steps in paths]
        with self._lock:
            token_logp = self.generator.token_logprobs([ids for ids, _ in encoded], check=check)
            self._tokens += sum(len(ids) for ids, _ in encoded)
        out: list[list[float]] = []
        for (seq, spans), logp in zip(encoded, token_logp):
            last = len(seq) - 1  # logp[t - 1] is the log-probability of the token at position t
            out.append([math.exp(min(logp[min(a, last) - 1:min(b, len(seq)) - 1])) for a, b in spans])
        return out


class CalculatorChecker:
    """Exact rule-based step checker for TinyGSM-style steps (and any step with ``a op b = c``).

    A step is correct when every equation in it is arithmetically true, and the numbers it uses come
    from the question or from earlier results (so a made-up operand counts as an error). A final
    answer step is correct when its boxed answer equals the last computed result *and* every step
    before it is correct: the answer line then speaks for the whole path, as a PRM's last score
    does, so best-of-N and beam search can rank paths by it (``last`` aggregation).
    """

    name = "calculator"
    _EQ = re.compile(r"(-?\d+(?:\.\d+)?)\s*([-+*/×÷])\s*(-?\d+(?:\.\d+)?)\s*=\s*(-?\d+(?:\.\d+)?)")

    @property
    def tokens_scored(self) -> int:
        return 0

    def for_run(self) -> "CalculatorChecker":
        return self  # no state

    def check_path(self, question: str, steps: list[str]) -> list[bool]:
        known = {float(x) for x in re.findall(r"\d+(?:\.\d+)?", question)}
        last_result: float | None = None
        verdicts = []
        for step in steps:
            boxed = extract_boxed(step)
            equations = self._EQ.findall(step)
            if boxed is not None and not equations:
                ok = last_result is not None and normalize_answer(boxed) == normalize_answer(_fmt(last_result))
                if last_result is None:  # answer given with no work: check it is a known number
                    ok = _to_float(boxed) in known
                verdicts.append(ok and all(verdicts))
                continue
            ok = bool(equations)
            for a, op, b, c in equations:
                a_f, b_f, c_f = float(a), float(b), float(c)
                value = {"+": a_f + b_f, "-": a_f - b_f, "*": a_f * b_f, "×": a_f * b_f,
                         "/": a_f / b_f if b_f else float("nan"), "÷": a_f / b_f if b_f else float("nan")}[op]
                ok = ok and abs(value - c_f) < 1e-9 and a_f in known and b_f in known
                known.add(c_f)
                last_result = c_f
            verdicts.append(ok)
        return verdicts

    def score(self, question: str, paths: list[list[str]], gold: str | None = None,
              check: Callable[[], None] | None = None) -> list[list[float]]:
        return [[1.0 if ok else 0.0 for ok in self.check_path(question, steps)] for steps in paths]


def _to_float(s: str) -> float | None:
    try:
        return float(normalize_answer(s) or "")
    except ValueError:
        return None


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


class MCRolloutScorer:
    """Math-Shepherd's Monte-Carlo estimate: the fraction of K rollouts of the policy from a step that
    reach the gold answer (or, with no gold, that agree with the majority answer of all rollouts).

    It is how Math-Shepherd *labels* a PRM's training data (``train/labels.py`` does it for the bundled
    PRM), offered as a scorer (kind ``mc-rollout``) so a user can watch it: slow (K completions per
    step) and, given the gold answer, no fair verifier — it knows the answer."""

    name = "mc-rollout"

    def __init__(self, generator: PolicyBackend, temperature: float, rollouts: int = 8, max_tokens: int = 256,
                 system_prompt: str | None = None, seed: int = 0):
        self.generator = generator
        self.params = SamplingParams(temperature=temperature, max_step_tokens=max_tokens, stop_at_step=False)
        self.rollouts = rollouts
        self.system_prompt = system_prompt
        self.seed = seed
        self._rng = torch.Generator().manual_seed(seed)
        self._tokens = 0
        # a step's estimate depends only on its path: a search scores each new step with its whole
        # path, so without this every earlier step would be rolled out again at every depth
        self._memo: dict[tuple, float] = {}

    @property
    def tokens_scored(self) -> int:
        return self._tokens

    def for_run(self) -> "MCRolloutScorer":
        run = copy.copy(self)  # every run draws the same rollouts for the same steps
        run._rng, run._tokens, run._memo = torch.Generator().manual_seed(self.seed), 0, {}
        return run

    def score(self, question: str, paths: list[list[str]], gold: str | None = None,
              check: Callable[[], None] | None = None) -> list[list[float]]:
        prompt = self.generator.prompt_ids(question, self.system_prompt)
        tok = self.generator.tokenizer
        prefixes, owners = [], []
        for i, steps in enumerate(paths):
            for j in range(len(steps)):
                if (question, gold, tuple(steps[: j + 1])) not in self._memo:
                    prefixes.append(prompt + encode_steps(tok, steps[: j + 1]))
                    owners.append((i, j))
        children = (self.generator.expand(prefixes, self.rollouts, self.params, generator=self._rng, check=check)
                    if prefixes else [])
        for (i, j), rolls in zip(owners, children):
            self._tokens += sum(len(r.token_ids) for r in rolls)
            answers = [extract_boxed(r.text) or extract_boxed(paths[i][j]) for r in rolls]
            if gold is not None:
                hits = sum(answers_match(a, gold) for a in answers)
            else:
                counted = Counter(normalize_answer(a) for a in answers if a is not None)
                hits = counted.most_common(1)[0][1] if counted else 0
            self._memo[question, gold, tuple(paths[i][: j + 1])] = hits / len(rolls)
        return [[self._memo[question, gold, tuple(steps[: j + 1])] for j in range(len(steps))] for steps in paths]
