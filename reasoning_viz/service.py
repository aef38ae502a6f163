"""What the app does, without any widgets: validated inputs in, search snapshots out.

``app.py`` only lays out Gradio components and wires events to these functions, which raise
``ValueError`` with a sentence for the user on bad input (the app shows it as ``gr.Error``).
Host limits come from environment variables (see ``HostLimits``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .models.loading import PRESETS, load_models, load_preset
from .models.presets import BUNDLED_MODELS, MATH_SYSTEM_PROMPT, SCORER_KINDS, check_model_ref
from .problems.tinygsm import LEVELS, load_test_set
from .search import Budget, Models, SearchContext, run_search
from .strategies import STRATEGIES
from .tree import SearchTree, TreeFormatError

try:  # on a Hugging Face Space with ZeroGPU, model work must run inside @spaces.GPU
    import spaces

    gpu_task = spaces.GPU(duration=120)
except ImportError:  # everywhere else it is a no-op
    def gpu_task(fn):
        return fn

RUNS_DIR = Path(__file__).resolve().parents[1] / "assets" / "runs"
MAX_QUESTION_CHARS = 4000
MAX_UPLOAD_BYTES = 20 * 2**20


@dataclass(frozen=True)
class HostLimits:
    """Caps a host sets by environment variable; users can ask for less, never more."""

    max_nodes: int = 2000
    max_tokens: int = 200_000
    max_seconds: float = 120.0
    concurrency: int = 1  # simultaneous searches (model work)

    @classmethod
    def from_env(cls) -> "HostLimits":
        def read(name: str, default, kind):
            raw = os.environ.get(name)
            if raw is None or raw == "":
                return default
            try:
                value = kind(raw)
            except ValueError:
                raise ValueError(f"environment variable {name}={raw!r} must be a number") from None
            if value <= 0:
                raise ValueError(f"environment variable {name} must be positive")
            return value

        d = cls()
        return cls(read("RV_MAX_NODES", d.max_nodes, int), read("RV_MAX_TOKENS", d.max_tokens, int),
                   read("RV_MAX_SECONDS", d.max_seconds, float), read("RV_CONCURRENCY", d.concurrency, int))


LIMITS = HostLimits.from_env()


# ---- inputs -----------------------------------------------------------------------------------
def clean_question(question: str | None) -> str:
    q = (question or "").strip()
    if not q:
        raise ValueError("Please type a question (it is empty).")
    if len(q) > MAX_QUESTION_CHARS:
        raise ValueError(f"The question is {len(q)} characters; the limit is {MAX_QUESTION_CHARS}.")
    return q


def make_params(strategy: str, values: dict[str, Any]) -> Any:
    """The strategy's hyperparameter dataclass from UI values, type-checked and validated."""
    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown strategy {strategy!r}. Choose one of: {', '.join(STRATEGIES)}.")
    cls = STRATEGIES[strategy].params
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values or values[f.name] is None:
            continue
        raw = values[f.name]
        kind = float if f.default is None else type(f.default)  # temperature: None means the preset's
        try:
            if kind is int:
                if float(raw) != int(float(raw)):
                    raise ValueError
                kwargs[f.name] = int(float(raw))
            elif kind is float:
                kwargs[f.name] = float(raw)
            elif kind is bool:
                kwargs[f.name] = bool(raw)
            else:
                kwargs[f.name] = str(raw)
        except (TypeError, ValueError):
            raise ValueError(f"{f.name} must be a whole number" if kind is int else f"{f.name} must be a number") from None
    params = cls(**kwargs)
    params.validate()
    return params


def make_budget(max_nodes: Any = None, max_tokens: Any = None, max_seconds: Any = None) -> Budget:
    """A budget within the host's caps (missing values take the host's cap)."""
    def pick(value, cap, kind):
        if value is None or value == "":
            return cap
        value = kind(value)
        if not value > 0:  # also refuses NaN, which min() would keep and which disables the cap
            raise ValueError("budget caps must be positive numbers")
        return min(value, cap)

    return Budget(pick(max_nodes, LIMITS.max_nodes, int), pick(max_tokens, LIMITS.max_tokens, int),
                  pick(max_seconds, LIMITS.max_seconds, float))


def check_preset(preset: str) -> None:
    if preset not in PRESETS:
        raise ValueError(f"Unknown model preset {preset!r}. Choose one of: {', '.join(PRESETS)}.")


def get_models(preset: str, custom_policy: str | None = None, scorer_kind: str | None = None,
               custom_scorer: str | None = None) -> Models:
    """The preset's models, or custom ones the host allows (policy id/path, scorer kind and id/path)."""
    if not (custom_policy or "").strip():
        check_preset(preset)
        return load_preset(preset)
    policy = check_model_ref(custom_policy)
    kind = (scorer_kind or "llm-judge").strip()
    if kind not in SCORER_KINDS:
        raise ValueError(f"Unknown scorer kind {kind!r}. Choose one of: {', '.join(SCORER_KINDS)}.")
    if kind == "calculator":
        scorer = "calculator"
    elif kind == "self-confidence":
        scorer = policy  # always the policy itself: a scorer model typed beside it would be ignored
    elif (custom_scorer or "").strip():
        scorer = check_model_ref(custom_scorer)
    elif kind == "llm-judge":
        scorer = policy  # the policy judges its own steps
    else:
        raise ValueError(f"A {kind} scorer needs a model id or path.")
    try:
        return load_models(policy, scorer, kind, MATH_SYSTEM_PROMPT)
    except OSError as exc:  # missing files, unreachable hub
        raise ValueError(f"Could not load the model: {exc}") from None


# ---- running ----------------------------------------------------------------------------------
_cancel_events: dict[str, threading.Event] = {}


def new_run_id() -> str:
    return uuid.uuid4().hex


def cancel(run_id: str | None) -> bool:
    """Ask the run ``run_id`` to stop at its next expansion; it keeps its partial tree."""
    event = _cancel_events.get(run_id or "")
    if event is None:
        return False
    event.set()
    return True


def stream_search(question: str, strategy: str, models: Models, params: Any, seed: int, budget: Budget,
                  gold: str | None, run_id: str, min_interval: float = 0.3) -> Iterator[tuple[SearchTree, bool]]:
    """Run a search in a worker thread; yield (snapshot, finished) at most every ``min_interval`` s."""
    question = clean_question(question)
    cancel_event = threading.Event()
    _cancel_events[run_id] = cancel_event
    updates: queue.Queue = queue.Queue()
    last = [0.0]

    def on_update(ctx: SearchContext) -> None:
        now = time.perf_counter()
        if now - last[0] >= min_interval:  # throttle: big trees stay smooth
            last[0] = now
            ctx.tree.run["totals"] = ctx.totals()
            updates.put(("snapshot", ctx.tree.dumps()))

    def work() -> None:
        try:
            tree = gpu_task(run_search)(question, strategy, models, params, seed=int(seed), budget=budget, gold=gold,
                              on_update=on_update, cancel=cancel_event)
            updates.put(("done", tree))
        except Exception as exc:  # handed to the caller's thread, which reports it
            updates.put(("error", exc))

    worker = threading.Thread(target=work, name=f"search-{run_id[:8]}", daemon=True)
    worker.start()
    try:
        while True:
            kind, payload = updates.get()
            if kind == "snapshot":
                if updates.qsize() == 0:  # skip stale snapshots if the UI fell behind
                    yield SearchTree.loads(payload), False
            elif kind == "done":
                yield payload, True
                return
            else:
                raise payload
    finally:
        cancel_event.set()  # a client that went away stops the search too
        _cancel_events.pop(run_id, None)


def run_once(question: str, strategy: str, models: Models, params: Any, seed: int, budget: Budget,
             gold: str | None) -> SearchTree:
    """A whole search without streaming (the compare view)."""
    return gpu_task(run_search)(clean_question(question), strategy, models, params, seed=int(seed), budget=budget,
                                gold=gold)


# ---- files ------------------------------------------------------------------------------------
def export_tree(tree: SearchTree, folder: str | Path) -> Path:
    path = Path(folder) / f"reasoning-tree-{tree.run.get('strategy', 'run')}-{uuid.uuid4().hex[:6]}.json"
    tree.save(path)
    return path


def import_tree(path: str | Path | None) -> SearchTree:
    """A tree from an uploaded file, validated; ``ValueError`` with a plain reason otherwise."""
    if path is None:
        raise ValueError("Please choose a tree JSON file to upload.")
    p = Path(path)
    if p.stat().st_size > MAX_UPLOAD_BYTES:
        raise ValueError(f"The file is larger than {MAX_UPLOAD_BYTES // 2**20} MB.")
    try:
        return SearchTree.load(p)
    except TreeFormatError as exc:
        raise ValueError(f"This file is not a valid reasoning tree: {exc}") from None
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"This file is not a valid reasoning tree (malformed content: {exc}).") from None


# ---- bundled content --------------------------------------------------------------------------
FREE_FORM_EXAMPLES = [
    ("A farmer has 48 eggs. He sells 19 eggs and then collects 3 times as many as he has left. "
     "How many eggs does he have now?", ""),
    ("Tom reads 12 pages on Monday and twice as many on Tuesday. How many pages did he read in total?", "36"),
]


def example_problems(per_level: int = 2) -> list[tuple[str, str, str]]:
    """(label, question, gold answer) for the examples gallery: held-out problems by difficulty."""
    problems = load_test_set()
    out = []
    for level in LEVELS:
        for p in [q for q in problems if q.level == level][:per_level]:
            out.append((f"Level {level}", p.question, str(p.answer)))
    out += [("Free-form", q, g) for q, g in FREE_FORM_EXAMPLES]
    return out


def model_cards() -> list[tuple[str, str]]:
    """(folder name, card text) of each bundled model, for reading inside the app: what it was trained
    on, what it cannot do, its evaluation table. The YAML front matter (hub metadata) is left out."""
    cards = []
    for folder in BUNDLED_MODELS:
        try:
            text = (folder / "README.md").read_text(encoding="utf-8")
        except OSError:
            text = "_No model card found._"
        if text.startswith("---"):
            text = text.split("---", 2)[-1].lstrip()
        cards.append((folder.name, text))
    return cards


def gallery_runs() -> dict[str, Path]:
    """Recorded runs shipped under ``assets/runs``: title -> file."""
    out = {}
    for path in sorted(RUNS_DIR.glob("*.json")):
        try:
            run = json.loads(path.read_text(encoding="utf-8"))["run"]
            title = STRATEGIES[run["strategy"]].title if run["strategy"] in STRATEGIES else run["strategy"]
            out[f"{title} · {run['question'][:60]}…"] = path
        except (OSError, KeyError, ValueError):
            continue
    return out
