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
import re
import tempfile
import threading
import time
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .lab import LAB_STRATEGIES, CellCache, LabSettings, run_lab, sft_records as lab_sft_records, sos_records
from .models.engine import EngineError
from .models.loading import PRESETS, load_models, load_preset
from .models.presets import MATH_SYSTEM_PROMPT, MODEL_CARDS, POLICY_SCORED_KINDS, SCORER_KINDS, check_model_ref
from .problems.tinygsm import LEVELS, load_test_set
from .search import Budget, Models, SearchContext
from .select import RULES, rejudge
from .strategies import STRATEGIES, run_search
from .traces import jsonl, sft_records, sos_actions, sos_text
from .tree import AGGREGATIONS, SearchTree, TreeFormatError

try:  # on a Hugging Face Space with ZeroGPU, model work must run inside @spaces.GPU
    import spaces

    gpu_task = spaces.GPU(duration=120)
except ImportError:  # everywhere else it is a no-op
    def gpu_task(fn):
        return fn

log = logging.getLogger(__name__)
RUNS_DIR = Path(__file__).resolve().parents[1] / "assets" / "runs"
RECORDED_LAB = Path(__file__).resolve().parents[1] / "assets" / "lab" / "lab.json"  # `python -m reasoning_viz lab --out assets/lab`
MAX_QUESTION_CHARS = 4000


@dataclass(frozen=True)
class HostLimits:
    """What a host sets by environment variable ``RV_<FIELD NAME>`` (the README's table); users can ask
    for less, never more."""

    max_nodes: int = Budget.max_nodes  # RV_MAX_NODES: caps on every search (defaults: one run's Budget)
    max_tokens: int = Budget.max_tokens  # RV_MAX_TOKENS
    max_seconds: float = Budget.max_seconds  # RV_MAX_SECONDS
    concurrency: int = 1  # RV_CONCURRENCY: in-process searches that run at once, however they are called
    engine_concurrency: int = 8  # RV_ENGINE_CONCURRENCY: searches through an inference engine at once (it batches them)
    max_upload_mb: float = 20.0  # RV_MAX_UPLOAD_MB: Gradio refuses bigger uploads before writing them
    export_files: int = 200  # RV_EXPORT_FILES: downloads kept on disk (the oldest go first)
    file_ttl_seconds: float = 3600.0  # RV_FILE_TTL_SECONDS: Gradio's copies of files are deleted after this
    sessions: int = 500  # RV_SESSIONS: browser sessions whose state (the last tree) is kept
    model_cache: int = 4  # RV_MODEL_CACHE: model pairs kept loaded (least recently used go first)
    lab_max_n: int = 64  # RV_LAB_MAX_N: the largest budget N a Lab run may ask for
    lab_max_problems: int = 60  # RV_LAB_MAX_PROBLEMS: problems in one Lab run

    @classmethod
    def from_env(cls) -> "HostLimits":
        def read(f: dataclasses.Field):
            name = "RV_" + f.name.upper()
            raw = os.environ.get(name)
            if raw is None or raw == "":
                return f.default
            try:
                value = type(f.default)(raw)
            except ValueError:
                raise ValueError(f"environment variable {name}={raw!r} must be a number") from None
            if not value > 0 or value == float("inf"):
                raise ValueError(f"environment variable {name} must be a positive finite number")
            return value

        return cls(**{f.name: read(f) for f in dataclasses.fields(cls)})


LIMITS = HostLimits.from_env()


# ---- inputs -----------------------------------------------------------------------------------
def clean_question(question: str | None) -> str:
    if question is not None and not isinstance(question, str):
        raise ValueError("The question must be text.")
    q = (question or "").strip()
    if not q:
        raise ValueError("Please type a question (it is empty).")
    if len(q) > MAX_QUESTION_CHARS:
        raise ValueError(f"The question is {len(q)} characters; the limit is {MAX_QUESTION_CHARS}.")
    try:
        q.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: no tokenizer can read it
        raise ValueError("The question contains characters that are not valid text; please retype it.") from None
    return q


def number(raw: Any, name: str, whole: bool) -> float:
    """A finite number from a widget or JSON value; ``ValueError`` with a sentence otherwise."""
    what = "a whole number" if whole else "a number"
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise ValueError(f"{name} must be {what}")
    try:
        value = float(raw)
    except (ValueError, OverflowError):
        raise ValueError(f"{name} must be {what}") from None
    if value != value or value in (float("inf"), float("-inf")):  # NaN and infinities
        raise ValueError(f"{name} must be a finite number")
    if whole and value != int(value):
        raise ValueError(f"{name} must be a whole number")
    return value


BOOL_WORDS = {True: True, False: False, "true": True, "false": False, "yes": True, "no": False, "1": True,
              "0": False}


def make_params(strategy: str, values: dict[str, Any]) -> Any:
    """The strategy's hyperparameter dataclass from UI or API values, type-checked and validated."""
    if not isinstance(strategy, str) or strategy not in STRATEGIES:
        raise ValueError(f"Unknown strategy {str(strategy)[:40]!r}. Choose one of: {', '.join(STRATEGIES)}.")
    if not isinstance(values, dict):
        raise ValueError("params must be a JSON object of hyperparameters")
    cls = STRATEGIES[strategy].params
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in values if k not in names)
    if unknown:
        raise ValueError(f"{STRATEGIES[strategy].title} has no setting {unknown[0][:40]!r}; "
                         f"it has: {', '.join(sorted(names))}.")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values or values[f.name] is None:
            continue
        raw = values[f.name]
        kind = float if f.default is None else type(f.default)  # temperature: None means the preset's
        if kind is int:
            kwargs[f.name] = int(number(raw, f.name, whole=True))
        elif kind is float:
            kwargs[f.name] = number(raw, f.name, whole=False)
        elif kind is bool:
            word = raw.strip().lower() if isinstance(raw, str) else raw
            if word not in BOOL_WORDS:
                raise ValueError(f"{f.name} must be true or false")
            kwargs[f.name] = BOOL_WORDS[word]
        else:
            if not isinstance(raw, str) or len(raw) > 40:
                raise ValueError(f"{f.name} must be one of the listed choices")
            kwargs[f.name] = raw
    params = cls(**kwargs)
    params.validate()
    return params


def shared_values(strategy: str, **values: Any) -> dict[str, Any]:
    """The given settings that ``strategy`` has (the compare view sets N for all that take one)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown strategy {str(strategy)[:40]!r}. Choose one of: {', '.join(STRATEGIES)}.")
    names = {f.name for f in dataclasses.fields(STRATEGIES[strategy].params)}
    return {k: v for k, v in values.items() if k in names and v is not None}


def make_budget(max_nodes: Any = None, max_tokens: Any = None, max_seconds: Any = None) -> Budget:
    """A budget within the host's caps (missing values take the host's cap; so does an infinite one)."""
    def pick(value, cap, name, kind):
        if value is None or value == "":
            return cap
        if isinstance(value, float) and value == float("inf"):
            return cap
        try:
            value = number(value, name, whole=False)
        except ValueError:
            value = -1.0
        if not value > 0:
            raise ValueError(f"{name} must be a positive number (budget caps are positive)")
        return min(kind(value), cap)

    return Budget(pick(max_nodes, LIMITS.max_nodes, "max nodes", int),
                  pick(max_tokens, LIMITS.max_tokens, "max tokens", int),
                  pick(max_seconds, LIMITS.max_seconds, "max seconds", float))


def check_preset(preset: str) -> None:
    if preset not in PRESETS:
        raise ValueError(f"Unknown model preset {preset!r}. Choose one of: {', '.join(PRESETS)}.")


def get_models(preset: str, custom_policy: str | None = None, scorer_kind: str | None = None,
               custom_scorer: str | None = None) -> Models:
    """The preset's models, or custom ones the host allows (policy id/path, scorer kind and id/path)."""
    for value in (preset, custom_policy, scorer_kind, custom_scorer):
        if value is not None and not isinstance(value, str):
            raise ValueError("Model presets, ids and scorer kinds must be text.")
    if not (custom_policy or "").strip():
        check_preset(preset)
        return _load(lambda: load_preset(preset), f"the preset {preset!r}", [PRESETS[preset].policy])
    policy = check_model_ref(custom_policy)
    kind = (scorer_kind or "llm-judge").strip()
    if kind not in SCORER_KINDS:
        raise ValueError(f"Unknown scorer kind {kind[:40]!r}. Choose one of: {', '.join(SCORER_KINDS)}.")
    if kind == "calculator":
        scorer = "calculator"
    elif kind in POLICY_SCORED_KINDS:
        scorer = policy  # always the policy itself: a scorer model typed beside it would be ignored
    elif (custom_scorer or "").strip():
        scorer = check_model_ref(custom_scorer)
    elif kind == "llm-judge":
        scorer = policy  # the policy judges its own steps
    else:
        raise ValueError(f"A {kind} scorer needs a model id or path.")
    return _load(lambda: load_models(policy, scorer, kind, MATH_SYSTEM_PROMPT), "these models", [policy, scorer])


def _load(load, what: str, refs: list[str]) -> Models:
    """Run a model load; any failure becomes one sentence that says what to do and shows no server path."""
    try:
        return load()
    except ValueError:  # already a sentence for the user (unknown preset, does not fit in memory)
        raise
    except EngineError as exc:  # the engine is down or serves another model: its own sentence
        raise ValueError(str(exc)) from None
    except Exception as exc:
        log.warning("loading %s failed", what, exc_info=True)
        hub = [r for r in refs if r != "calculator" and not Path(r).is_absolute()]
        if isinstance(exc, OSError) and hub:
            raise ValueError(f"Could not load {what}: {hub[0]!r} could not be read from the Hugging Face hub "
                             "(this host may be offline, or the id is wrong). Pick a bundled preset.") from None
        raise ValueError(f"Could not load {what}: a model file is missing or damaged ({public_reason(exc)}). "
                         "The host can reinstall the models; meanwhile pick another preset.") from None


def public_reason(exc: BaseException) -> str:
    """An exception's message for users: its class and text, server paths cut to their last part."""
    text = re.sub(r"(?:[A-Za-z]:)?(?:[\\/][^\s'\"\\/:]+)+[\\/]?", lambda m: m[0].rstrip("/\\").rsplit("/", 1)[-1],
                  str(exc))
    return f"{type(exc).__name__}: {text}"[:300]


# ---- running ----------------------------------------------------------------------------------
# Model work of every caller goes through these slots: the Gradio queue is one way in, direct calls to
# the server's routes are another, and neither may run more searches at once than the host allows.
# A search through an inference engine only sends requests (the engine batches them across searches),
# so those take slots of their own, more of them.
_model_slots = threading.BoundedSemaphore(LIMITS.concurrency)
_engine_slots = threading.BoundedSemaphore(LIMITS.engine_concurrency)


def queue_concurrency() -> int:
    """Requests the app's queue runs at once: the in-process slots, plus the engine's if a preset uses one."""
    engine = any(p.engine_url for p in PRESETS.values())
    return LIMITS.concurrency + (LIMITS.engine_concurrency if engine else 0)


_runs_lock = threading.Lock()
_runs: dict[str, dict[str, threading.Event]] = {}  # session -> run id -> its stop flag


def new_run_id() -> str:
    return uuid.uuid4().hex


def cancel(session: str | None, run_id: str | None = None) -> int:
    """Stop one named run of a session, or all of its runs; returns how many were asked to stop.
    A stopped run ends within a decode step and keeps its partial tree."""
    with _runs_lock:
        runs = _runs.get(session or "", {})
        events = list(runs.values()) if not run_id else [runs[run_id]] if run_id in runs else []
    for event in events:
        event.set()
    return len(events)


def _register(session: str, run_id: str) -> threading.Event:
    if len(run_id) > 64 or not run_id.isprintable():
        raise ValueError("A run name is at most 64 printable characters.")
    with _runs_lock:
        runs = _runs.setdefault(session, {})
        if run_id in runs:
            raise ValueError(f"A run named {run_id!r} is already running in this session; give the new one "
                             "another name.")
        runs[run_id] = threading.Event()
        return runs[run_id]


def _unregister(session: str, run_id: str) -> None:
    with _runs_lock:
        runs = _runs.get(session, {})
        runs.pop(run_id, None)
        if not runs:
            _runs.pop(session, None)


def running_count() -> int:
    """Runs registered now, all sessions together (the load test checks it returns to 0)."""
    with _runs_lock:
        return sum(len(r) for r in _runs.values())


def _search(question, strategy, models, params, seed, budget, gold, **kw) -> SearchTree:
    search = gpu_task(run_search) if models.runs_weights_here() else run_search
    with _engine_slots if models.generator.describe() is not None else _model_slots:
        return search(question, strategy, models, params, seed=int(seed), budget=budget, gold=gold, **kw)


def stream_search(question: str, strategy: str, models: Models, params: Any, seed: int, budget: Budget,
                  gold: str | None, session: str, run_id: str | None = None,
                  min_interval: float = 0.3) -> Iterator[tuple[SearchTree, bool]]:
    """Run a search in a worker thread; yield (snapshot, finished) at most every ``min_interval`` s.
    ``cancel(session, run_id)`` stops it; so does closing this iterator (a client that went away)."""
    question = clean_question(question)
    run_id = (run_id or "").strip() or new_run_id()
    cancel_event = _register(session, run_id)
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
            updates.put(("done", _search(question, strategy, models, params, seed, budget, gold,
                                         on_update=on_update, cancel=cancel_event)))
        except Exception as exc:  # handed to the caller's thread, which reports it
            updates.put(("error", exc))

    worker = threading.Thread(target=work, name=f"search-{run_id[:8]}", daemon=True)
    worker.start()
    try:
        while True:
            kind, payload = updates.get()
            if kind == "snapshot":
                if updates.qsize() == 0:  # skip stale snapshots if the UI fell behind
                    yield SearchTree.from_json(json.loads(payload), trusted=True), False
            elif kind == "done":
                yield payload, True
                return
            else:
                raise payload
    finally:
        cancel_event.set()  # a client that went away stops the search too
        _unregister(session, run_id)


class ExportFolder:
    """Where downloads are written: every file named uniquely for its run (users never receive each
    other's), at most ``max_files`` kept (the oldest removed), the folder re-made if someone deletes it.
    One folder per host (``RV_EXPORT_DIR``), not a new one per start."""

    def __init__(self, root: str | Path, max_files: int):
        self.root, self.max_files = Path(root), max_files
        self._lock = threading.Lock()

    def new_path(self, tree: SearchTree | None, suffix: str, label: str = "") -> Path:
        """A fresh file name: the tree's strategy (or ``label``, for what is not one tree) in it."""
        label = str(tree.run.get("strategy", "")) if tree is not None else label
        strategy = re.sub(r"[^a-z0-9_]", "", label.lower())[:32] or "run"
        with self._lock:
            self.root.mkdir(parents=True, exist_ok=True)
            old = sorted(self.root.glob("reasoning-tree-*"), key=_mtime)
            for stale in old[: max(0, len(old) - self.max_files + 1)]:
                stale.unlink(missing_ok=True)
            return self.root / f"reasoning-tree-{strategy}-{uuid.uuid4().hex[:12]}{suffix}"


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed meanwhile
        return 0.0


EXPORTS = ExportFolder(os.environ.get("RV_EXPORT_DIR") or Path(tempfile.gettempdir()) / "reasoning-viz-exports",
                       LIMITS.export_files)


def export_tree(tree: SearchTree, folder: ExportFolder = EXPORTS) -> Path:
    """The tree's JSON record as a download of its own."""
    path = folder.new_path(tree, ".json")
    tree.save(path)
    return path


def export_training(tree: SearchTree, folder: ExportFolder = EXPORTS) -> list[Path]:
    """Training data from a tree (``traces.py``), three downloads: the SFT records (JSONL), and the
    Stream-of-Search trace as text and as JSONL."""
    files = [(".sft.jsonl", jsonl(sft_records(tree))), (".sos.txt", sos_text(tree)),
             (".sos.jsonl", jsonl(sos_actions(tree)))]
    paths = []
    for suffix, text in files:
        path = folder.new_path(tree, suffix)
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


def rejudge_tree(tree: SearchTree, rule: Any, aggregation: Any) -> SearchTree:
    """The tree with its answer chosen again by another rule (no model call); refusals are sentences."""
    if not isinstance(rule, str) or rule not in RULES:  # a list or dict from the API is no rule either
        raise ValueError(f"Choose a selection rule: {', '.join(RULES)}.")
    if not isinstance(aggregation, str) or aggregation not in AGGREGATIONS:
        raise ValueError(f"Choose how a path's step scores combine: {', '.join(AGGREGATIONS)}.")
    return rejudge(tree, rule, aggregation)


def export_html(tree: SearchTree, html: str, folder: ExportFolder = EXPORTS) -> Path:
    """A standalone HTML page (made by the renderer) as a download of its own."""
    path = folder.new_path(tree, ".html")
    path.write_text(html, encoding="utf-8")
    return path


def import_tree(path: str | Path | None) -> SearchTree:
    """A tree from an uploaded file, validated completely; ``ValueError`` with a plain reason otherwise."""
    if not path:
        raise ValueError("Please choose a tree JSON file to upload.")
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError:
        raise ValueError("The uploaded file could not be read; please upload it again.") from None
    if size > LIMITS.max_upload_mb * 2**20:  # Gradio refuses these first; a direct call might not
        raise ValueError(f"The file is larger than {LIMITS.max_upload_mb:g} MB.")
    try:
        return SearchTree.load(p)
    except TreeFormatError as exc:
        raise ValueError(f"This file is not a valid reasoning tree: {exc}") from None
    except OSError:
        raise ValueError("The uploaded file could not be read; please upload it again.") from None


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
    for folder in MODEL_CARDS:
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


# ---- the scaling lab ----------------------------------------------------------------------------
def recorded_lab() -> dict:
    """The lab run shipped with the app (all six levels, 10 problems each, N up to 64)."""
    return json.loads(RECORDED_LAB.read_text(encoding="utf-8"))


def lab_settings(preset: Any, large_preset: Any, strategies: Any, budgets: Any, levels: Any, per_level: Any,
                 seed: Any) -> LabSettings:
    """A Lab run's settings from the form's raw values, checked against the host's caps."""
    def whole_list(raw: Any, name: str) -> tuple[int, ...]:
        if not isinstance(raw, list) or not raw:
            raise ValueError(f"Pick at least one {name}.")
        return tuple(sorted({int(number(x, name, whole=True)) for x in raw}))

    if not isinstance(strategies, list) or not strategies or not all(s in LAB_STRATEGIES for s in strategies):
        raise ValueError("Pick at least one of the lab's strategies.")
    for value in (preset, large_preset):
        if value not in (None, "") and (not isinstance(value, str) or value not in PRESETS):
            raise ValueError("Choose the models from the preset list.")
    settings = LabSettings(preset=preset or next(iter(PRESETS)), large_preset=large_preset or None,
                           strategies=tuple(s for s in LAB_STRATEGIES if s in strategies),
                           budgets=whole_list(budgets, "budget N"), levels=whole_list(levels, "level"),
                           per_level=int(number(per_level, "problems per level", whole=True)),
                           seed=int(number(seed or 0, "seed", whole=True)))
    settings.validate(max_n=LIMITS.lab_max_n, max_problems=LIMITS.lab_max_problems)
    return settings


def stream_lab(settings: LabSettings, session: str, run_id: str | None = None,
               min_interval: float = 2.0) -> Iterator[tuple[dict, int, int]]:
    """Run a lab (cells from the cache where they are there); ``cancel(session, run_id)`` stops it."""
    run_id = (run_id or "").strip() or new_run_id()
    cancel_event = _register(session, run_id)
    try:
        yield from run_lab(settings, get_models, CellCache(), cancel_event, min_interval,
                           slot=lambda: _model_slots)
    finally:
        cancel_event.set()
        _unregister(session, run_id)


def export_lab_training(settings: LabSettings, folder: ExportFolder = EXPORTS) -> list[Path]:
    """A lab run's searches (those in the cache) as training data: the verified paths as chat-format SFT
    JSONL (when best-of-N or a vote ran and found one), and every search's Stream-of-Search trace as JSONL."""
    traces = sos_records(settings, CellCache())
    if not traces:
        raise ValueError("Nothing of this lab run is cached yet: run the lab with these settings first.")
    files = [(".sft.jsonl", lab_sft_records(settings, CellCache())), (".sos.jsonl", traces)]
    paths = []
    for suffix, records in files:
        if records:
            path = folder.new_path(None, suffix, label="lab")
            path.write_text(jsonl(records), encoding="utf-8")
            paths.append(path)
    return paths
