"""``python -m reasoning_viz bench``: speed figures for the two hot paths, as ratios.

1. Expanding B frontier nodes into K children each, with a randomly initialised ~20M-parameter
   Llama on the CPU: (a) one ``generate`` call per child, (b) one per node with
   ``num_return_sequences=K``, (c) the batched shared-prefix ``StepGenerator``.
2. The PRM's cost per newly scored step at depth 2 and depth 10, with and without reuse of the
   scored prefix's KV cache.
3. With ``--engine-url``: many users at once, in-process against an inference engine (``bench_users``).
"""

from __future__ import annotations

import statistics
import threading
import time

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from .models.generator import SamplingParams, StepGenerator
from .models.loading import DEFAULT_PRESET, load_preset
from .models.presets import BUNDLED_STUDENT
from .models.scorers import MathShepherdPRM
from .problems.tinygsm import load_test_set
from .strategies import run_search


def random_llama(vocab: int, hidden: int, layers: int, inter: int, heads: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=2048,
                         tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def _interleaved(fns, repeats: int) -> list[list[float]]:
    """Seconds of each of ``fns`` in every round, the methods taking turns within a round.

    On a shared machine the speed drifts over a minute; timing the methods in turn puts each
    round's drift on all of them alike, so their ratios hold steadier than back-to-back blocks.
    """
    for fn in fns:
        fn()  # warm-up
    seconds: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, seconds):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return seconds


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class IdTokenizer:
    """A stand-in tokenizer for random models in benchmarks: the generator needs only decode and pad/eos ids;
    token 2 decodes to a blank line, the step delimiter."""

    pad_token_id, eos_token_id, chat_template = 0, 1, None

    def __init__(self, vocab: int):
        self.vocab = vocab

    def __len__(self) -> int:
        return self.vocab

    def batch_decode(self, seqs):
        return ["\n\n" if s == [2] else f"<{s[0]}>" for s in seqs]

    def decode(self, ids, skip_special_tokens=False):
        return "".join(f"<{i}>" for i in ids)


def bench_generator(b: int, k: int, prompt_len: int, step_tokens: int, repeats: int) -> list[tuple[str, float, float]]:
    model = random_llama(vocab=8192, hidden=512, layers=5, inter=1408, heads=8)
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    tok = IdTokenizer(8192)
    gen = StepGenerator(model, tok)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, 8192, (prompt_len,), generator=g).tolist()
    nodes = [prompt + torch.randint(3, 8192, (8,), generator=g).tolist() for _ in range(b)]
    sampling = SamplingParams(temperature=1.0, max_step_tokens=step_tokens, ignore_eos=True)
    common = dict(max_new_tokens=step_tokens, min_new_tokens=step_tokens, do_sample=True, temperature=1.0,
                  top_k=0, pad_token_id=0, eos_token_id=None)

    def per_child():
        with torch.inference_mode():
            for node in nodes:
                for _ in range(k):
                    model.generate(torch.tensor([node]), **common)

    def per_node():
        with torch.inference_mode():
            for node in nodes:
                model.generate(torch.tensor([node]), num_return_sequences=k, **common)

    def batched():
        gen.expand(nodes, k, sampling, generator=g)

    children = b * k
    methods = (("(a) generate per child", per_child), ("(b) generate per node, num_return_sequences=K", per_node),
               ("(c) batched shared-prefix StepGenerator", batched))
    seconds = _interleaved([fn for _, fn in methods], repeats)
    rows = [(name, children * step_tokens / statistics.median(ts), children / statistics.median(ts))
            for (name, _), ts in zip(methods, seconds)]
    per_round = sorted(a / c for a, c in zip(seconds[0], seconds[2]))  # (c)/(a) within each round
    print(f"\nStep generation: B={b} frontier nodes, K={k} children, {prompt_len}-token prompt, "
          f"{step_tokens}-token steps, random Llama {params_m:.1f}M params, CPU x{torch.get_num_threads()} threads, "
          f"median of {repeats} interleaved rounds")
    print("| method | tokens/s | children/s |\n|---|---|---|")
    for name, tps, cps in rows:
        print(f"| {name} | {tps:.0f} | {cps:.1f} |")
    print(f"| ratio (c)/(a) | {rows[2][1] / rows[0][1]:.1f}x (rounds: {per_round[0]:.1f}x to {per_round[-1]:.1f}x) | |")
    print(f"| ratio (c)/(b) | {rows[2][1] / rows[1][1]:.1f}x | |")
    return rows


def bench_prm(depths: tuple[int, ...], k: int, repeats: int) -> None:
    tok = AutoTokenizer.from_pretrained(BUNDLED_STUDENT)  # all bundled models share it
    model = random_llama(vocab=len(tok), hidden=512, layers=5, inter=1408, heads=8)
    question = ("Mia has 120 apples. She buys 35 more apples. She gives 40 apples to a friend. "
                "How many apples does Mia have now?")
    steps = [f"Step words {i}: {100 + i} + {i + 7} = {107 + 2 * i}" for i in range(max(depths) + 1)]
    print(f"\nPRM scoring of {k} new sibling steps, random Llama-shaped PRM, bundled tokenizer, median of {repeats}")
    print("| depth | ms per new step, prefix cache reused | ms per new step, full re-score | ratio |")
    print("|---|---|---|---|")
    results = {}
    for depth in depths:
        parent = steps[: depth - 1]
        children = [parent + [f"Candidate {j}: {200 + j} - {j} = {200}"] for j in range(k)]
        cached = MathShepherdPRM(model, tok)

        def with_cache():
            cached.reset()
            cached.score(question, [parent] if parent else [[steps[0]]])  # the parent, scored earlier
            t0 = time.perf_counter()
            cached.score(question, children)
            return time.perf_counter() - t0

        fresh = MathShepherdPRM(model, tok, cache_mb=0)

        def without_cache():
            t0 = time.perf_counter()
            fresh.score(question, children)
            return time.perf_counter() - t0

        with_cache()
        t_cache = statistics.median(with_cache() for _ in range(repeats)) / k
        t_full = _timed(without_cache, repeats) / k
        results[depth] = t_cache
        print(f"| {depth} | {1000 * t_cache:.2f} | {1000 * t_full:.2f} | {t_full / t_cache:.1f}x |")
    lo, hi = min(depths), max(depths)
    print(f"cost per new step at depth {hi} / depth {lo}, with the cache: {results[hi] / results[lo]:.2f} (flat = 1.0)")


def run_benchmarks(quick: bool = False) -> None:
    """Print both benchmarks; ``quick`` shrinks them to seconds (used by the test suite)."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if quick:
        bench_generator(b=2, k=2, prompt_len=32, step_tokens=4, repeats=1)
        bench_prm(depths=(2, 4), k=2, repeats=1)
    else:
        bench_generator(b=4, k=4, prompt_len=240, step_tokens=32, repeats=5)
        bench_prm(depths=(2, 10), k=4, repeats=5)


def _users(models, slots: int, users: int, searches: int, problems) -> tuple[float, float]:
    """``users`` threads, each running ``searches`` beam searches one after another, at most ``slots`` at
    once (as the app's queue admits them); (searches per minute, p95 latency in s, waiting included)."""
    gate = threading.BoundedSemaphore(slots)
    latencies: list[float] = []
    lock = threading.Lock()

    def user(u: int) -> None:
        for j in range(searches):
            problem = problems[(u * searches + j) % len(problems)]
            t0 = time.perf_counter()
            with gate:
                run_search(problem.question, "beam_search", models, seed=u * searches + j)
            with lock:
                latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=user, args=(u,)) for u in range(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return users * searches / wall * 60, statistics.quantiles(latencies, n=20)[-1]


def bench_users(engine_url: str, users: int = 8, searches: int = 5, preset: str = DEFAULT_PRESET) -> None:
    """Users x beam searches (default settings) on held-out level-3 and -4 problems: in-process with the
    app's default one slot, in-process with every user at once, and through the engine with every user
    at once (its generation batched across searches; the preset's scorer still runs here)."""
    problems = [p for p in load_test_set() if p.level in (3, 4)]
    here, there = load_preset(preset), load_preset(preset, engine_url)
    run_search(problems[0].question, "beam_search", there)  # warm both up: first calls compile and cache
    run_search(problems[0].question, "beam_search", here)
    rows = [("in-process, one search at a time (RV_CONCURRENCY=1, the default)", here, 1),
            (f"in-process, {users} at once", here, users),
            (f"{there.generator.describe()['engine']} engine at {engine_url}, {users} at once", there, users)]
    print(f"\n{users} users x {searches} beam searches each (n=16, beam width 4), preset {preset!r}")
    print("| backend | searches / minute | p95 latency (s) |\n|---|---|---|")
    results = []
    for title, models, slots in rows:
        per_minute, p95 = _users(models, slots, users, searches, problems)
        results.append(per_minute)
        print(f"| {title} | {per_minute:.1f} | {p95:.1f} |", flush=True)
    print(f"| ratio engine / in-process one at a time | {results[2] / results[0]:.2f}x | |")
