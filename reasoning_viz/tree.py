"""The search-tree record: every node a strategy ever generated, and the event log that built it.

A ``SearchTree`` wraps a ``networkx.DiGraph`` behind a small typed API. Every change goes through
a method that appends one event to an append-only log, each event carrying the new nodes and the
field updates it made, so ``replay(events, t)`` rebuilds the tree exactly as it was after event t.
Trees save to and load from versioned JSON (``SCHEMA``, ``SCHEMA_VERSION``) with validation.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import networkx as nx

SCHEMA = "reasoning-viz/search-tree"
SCHEMA_VERSION = 1
STATUSES = ("open", "expanded", "pruned", "terminal")
AGGREGATIONS = ("last", "min", "prod", "mean")


class TreeFormatError(ValueError):
    """A tree file that is not a valid search-tree record (bad JSON, wrong schema, future version)."""


@dataclass
class Node:
    """One reasoning step (the root holds the question)."""

    id: int
    parent: int | None
    depth: int
    text: str
    num_tokens: int = 0
    step_score: float | None = None
    path_score: dict[str, float] | None = None  # aggregation name -> score of the path to here
    visits: int | None = None  # MCTS
    value: float | None = None  # MCTS mean backed-up value
    prior: float | None = None  # MCTS prior among siblings
    mean_logprob: float | None = None
    confidence: float | None = None  # CoT-decoding answer confidence
    status: str = "open"
    reason: str | None = None  # why a node was pruned
    answer: str | None = None
    correct: bool | None = None
    selected: bool = False
    stage: str | None = None  # fast/slow pipeline stage
    finish: str | None = None  # "step", "eos" or "length"
    event: int = 0  # index of the event that created it


NODE_FIELDS = {f.name for f in fields(Node)}


def aggregate(scores: list[float], how: str) -> float:
    """Combine a path's step scores: ``last``, ``min``, ``prod`` (product) or ``mean``."""
    if not scores:
        return 0.0
    if how == "last":
        return scores[-1]
    if how == "min":
        return min(scores)
    if how == "prod":
        out = 1.0
        for s in scores:
            out *= s
        return out
    if how == "mean":
        return sum(scores) / len(scores)
    raise ValueError(f"unknown aggregation {how!r}; choose one of {AGGREGATIONS}")


@dataclass
class Event:
    """One entry of the event log: a kind, a sentence for people, and what it changed."""

    index: int
    kind: str  # created, scored, pruned, expanded, backed-up, selected, stage, stopped
    message: str
    new_nodes: list[dict] = field(default_factory=list)
    updates: dict[int, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"index": self.index, "kind": self.kind, "message": self.message,
                "new_nodes": self.new_nodes, "updates": {str(k): v for k, v in self.updates.items()}}

    @classmethod
    def from_json(cls, d: dict) -> "Event":
        return cls(int(d["index"]), str(d["kind"]), str(d["message"]), list(d.get("new_nodes", [])),
                   {int(k): dict(v) for k, v in d.get("updates", {}).items()})


class SearchTree:
    """The record of one search run: nodes, the event log, and the run's metadata (``run``)."""

    def __init__(self, question: str, run: dict[str, Any] | None = None):
        self.graph = nx.DiGraph()
        self.events: list[Event] = []
        self.run: dict[str, Any] = dict(run or {})
        self.run.setdefault("question", question)
        self.token_ids: dict[int, list[int]] = {}  # runtime only: each node's own new tokens
        root = Node(id=0, parent=None, depth=0, text=question, status="open")
        self._emit("created", "Question posed", new_nodes=[root])

    # ---- reading ------------------------------------------------------------------------
    @property
    def question(self) -> str:
        return self.node(0).text

    def node(self, node_id: int) -> Node:
        return self.graph.nodes[node_id]["node"]

    def nodes(self) -> list[Node]:
        return [self.graph.nodes[i]["node"] for i in sorted(self.graph.nodes)]

    def children(self, node_id: int) -> list[Node]:
        return [self.node(c) for c in sorted(self.graph.successors(node_id))]

    def path(self, node_id: int) -> list[Node]:
        """Nodes from the root to ``node_id``, both included."""
        out = []
        current: int | None = node_id
        while current is not None:
            n = self.node(current)
            out.append(n)
            current = n.parent
        return out[::-1]

    def steps(self, node_id: int) -> list[str]:
        """The step texts from the root's first child down to ``node_id``."""
        return [n.text for n in self.path(node_id)[1:]]

    def path_token_ids(self, node_id: int) -> list[int]:
        return [t for n in self.path(node_id) for t in self.token_ids.get(n.id, [])]

    def terminals(self) -> list[Node]:
        return [n for n in self.nodes() if n.status == "terminal"]

    def path_score(self, node_id: int, how: str = "last") -> float:
        """The aggregated step score of the path from the root to ``node_id``, as ``set_scores``
        recorded it on the node: the one source every strategy, selection rule and view reads. A node
        not scored yet ranks as its nearest scored ancestor (0 for the root)."""
        if how not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {how!r}; choose one of {AGGREGATIONS}")
        for node in reversed(self.path(node_id)):
            if node.path_score is not None:
                return node.path_score[how]
        return 0.0

    def _path_scores_with(self, node_id: int, score: float) -> dict[str, float]:
        """Every aggregation of the path to ``node_id`` if its own step scores ``score``."""
        scores = [n.step_score for n in self.path(node_id)[1:-1] if n.step_score is not None] + [score]
        return {how: aggregate(scores, how) for how in AGGREGATIONS}

    def __len__(self) -> int:
        return self.graph.number_of_nodes()

    # ---- changing (each method is one event) ---------------------------------------------
    def _emit(self, kind: str, message: str, new_nodes: list[Node] = (),
              updates: dict[int, dict[str, Any]] | None = None) -> Event:
        event = Event(len(self.events), kind, message, [], {})
        for n in new_nodes:
            n.event = event.index
            event.new_nodes.append(asdict(n))
        event.updates = {node_id: dict(changes) for node_id, changes in (updates or {}).items()}
        self._apply(event)
        return event

    def _apply(self, event: Event) -> None:
        """Add an event's new nodes and apply its updates: the one place a tree changes, live (``_emit``)
        and when a record is rebuilt from its event log (``replay``)."""
        for d in event.new_nodes:
            node = Node(**d)
            if node.parent is not None and node.parent not in self.graph:
                raise TreeFormatError(f"node {node.id} names a parent {node.parent} that does not exist")
            if node.id in self.graph:
                raise TreeFormatError(f"node {node.id} is created twice")
            expected = 0 if node.parent is None else self.node(node.parent).depth + 1
            if node.depth != expected or (node.parent is None and self.graph):
                raise TreeFormatError(f"node {node.id} has depth {node.depth}, but its place in the tree says {expected}")
            self.graph.add_node(node.id, node=node)
            if node.parent is not None:
                self.graph.add_edge(node.parent, node.id)
        for node_id, changes in event.updates.items():
            if node_id not in self.graph:
                raise TreeFormatError(f"event {event.index} updates node {node_id}, which does not exist")
            node = self.node(node_id)
            for key, value in changes.items():
                setattr(node, key, value)
        self.events.append(event)

    def add_children(self, parent: int, children: list[dict[str, Any]], message: str,
                     token_ids: list[list[int]] | None = None, stage: str | None = None) -> list[int]:
        """Add generated children under ``parent``; each dict holds Node fields (text, num_tokens, ...)."""
        start = max(self.graph.nodes) + 1
        depth = self.node(parent).depth + 1
        nodes = [Node(id=start + i, parent=parent, depth=depth, stage=stage, **c) for i, c in enumerate(children)]
        for node, ids in zip(nodes, token_ids or []):
            self.token_ids[node.id] = list(ids)
        updates = {parent: {"status": "expanded"}} if self.node(parent).status == "open" else {}
        self._emit("created", message, new_nodes=nodes, updates=updates)
        return [n.id for n in nodes]

    def set_scores(self, step_scores: dict[int, float], message: str) -> None:
        """Record step scores; each node's path scores are aggregated from its ancestors' scores."""
        updates = {node_id: {"step_score": float(score), "path_score": self._path_scores_with(node_id, score)}
                   for node_id, score in step_scores.items()}
        self._emit("scored", message, updates=updates)

    def prune(self, reasons: dict[int, str], message: str) -> None:
        self._emit("pruned", message, updates={i: {"status": "pruned", "reason": r} for i, r in reasons.items()})

    def update(self, changes: dict[int, dict[str, Any]], kind: str, message: str) -> None:
        """Any other field changes (MCTS backup, confidences, ...), validated against Node's fields."""
        for node_id, c in changes.items():
            unknown = set(c) - NODE_FIELDS
            if unknown:
                raise KeyError(f"unknown node fields {sorted(unknown)}")
        self._emit(kind, message, updates=changes)

    def note(self, kind: str, message: str) -> None:
        """An event that changes no node (a stage begins, the search stops at a cap)."""
        self._emit(kind, message)

    def select_path(self, node_id: int | None, message: str) -> None:
        """Mark the path from the root to ``node_id`` as the chosen answer's path (None: no path)."""
        previous = {n.id: {"selected": False} for n in self.nodes() if n.selected}
        chosen = {n.id: {"selected": True} for n in self.path(node_id)} if node_id is not None else {}
        self._emit("selected", message, updates={**previous, **chosen})

    # ---- JSON ---------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"schema": SCHEMA, "version": SCHEMA_VERSION, "run": self.run,
                "nodes": [asdict(n) for n in self.nodes()], "events": [e.to_json() for e in self.events]}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), ensure_ascii=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.dumps(), encoding="utf-8")

    @classmethod
    def from_json(cls, data: Any, trusted: bool = False) -> "SearchTree":
        """Rebuild a tree from its JSON record, validating it; raises ``TreeFormatError``. ``trusted``
        skips the checks, for a record this process wrote itself a moment ago (a live snapshot)."""
        if trusted:
            events = [Event.from_json(e) for e in data["events"]]
            return replay(events, len(events) - 1, run=data["run"])
        validate(data)
        events = [Event.from_json(e) for e in data["events"]]
        tree = replay(events, len(events) - 1, run=data["run"])
        saved = {n["id"]: n for n in data["nodes"]}
        rebuilt = {n.id: asdict(n) for n in tree.nodes()}
        if saved != rebuilt:
            raise TreeFormatError("the node list does not match what the event log builds")
        for n in tree.nodes():  # recorded path scores are read as they are: they must follow from the steps'
            if n.step_score is not None and n.path_score is not None:
                derived = tree._path_scores_with(n.id, n.step_score)
                if any(abs(n.path_score[how] - derived[how]) > 1e-9 for how in AGGREGATIONS):
                    raise TreeFormatError(f"node {n.id}'s path scores do not follow from its path's step scores")
        chosen = (tree.run.get("selection") or {}).get("node_id")
        if chosen is not None and chosen not in tree.graph:
            raise TreeFormatError(f"the selection names node {chosen}, which is not in the tree")
        return tree

    @classmethod
    def loads(cls, text: str | bytes) -> "SearchTree":
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise TreeFormatError(f"not a JSON file: {exc}") from None
        except RecursionError:
            raise TreeFormatError("the JSON is nested too deeply to be a tree") from None
        return cls.from_json(data)

    @classmethod
    def load(cls, path: str | Path) -> "SearchTree":
        return cls.loads(Path(path).read_bytes())


MAX_TEXT = 20_000  # characters of one step, message or run field
# What each node field may hold in a file (``None`` where the field is optional); numbers must be finite.
_NODE_TYPES: dict[str, tuple[type, ...]] = {
    "id": (int,), "parent": (int, type(None)), "depth": (int,), "text": (str,), "num_tokens": (int,),
    "step_score": (float, type(None)), "path_score": (dict, type(None)), "visits": (int, type(None)),
    "value": (float, type(None)), "prior": (float, type(None)), "mean_logprob": (float, type(None)),
    "confidence": (float, type(None)), "status": (str,), "reason": (str, type(None)), "answer": (str, type(None)),
    "correct": (bool, type(None)), "selected": (bool,), "stage": (str, type(None)), "finish": (str, type(None)),
    "event": (int,),
}
FINISHES = ("step", "eos", "length")


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x - x == 0  # NaN and inf fail


def _check_field(name: str, value: Any, where: str) -> None:
    kinds = _NODE_TYPES[name]
    ok = any(isinstance(value, k) and not (k is int and isinstance(value, bool)) for k in kinds)
    if float in kinds and _finite(value):
        ok = True  # JSON writes 1.0 as 1
    if not ok or (isinstance(value, float) and not _finite(value)):
        raise TreeFormatError(f"{where}: field {name!r} has a wrong value")
    if isinstance(value, str) and len(value) > MAX_TEXT:
        raise TreeFormatError(f"{where}: field {name!r} is longer than {MAX_TEXT} characters")
    if name == "status" and value not in STATUSES:
        raise TreeFormatError(f"{where}: unknown status {value[:40]!r}")
    if name == "finish" and value is not None and value not in FINISHES:
        raise TreeFormatError(f"{where}: unknown finish {value[:40]!r}")
    if name == "path_score" and value is not None and not all(
            k in AGGREGATIONS and _finite(v) for k, v in value.items()):
        raise TreeFormatError(f"{where}: path_score must map {', '.join(AGGREGATIONS)} to numbers")


def _check_run(run: dict) -> None:
    """The run fields the app reads, typed; unknown extra fields are kept as they are."""
    text = {"question": True, "strategy": True, "gold": False, "stopped": False, "system_prompt": False}
    for key, required in text.items():
        value = run.get(key)
        if (value is None and required) or (value is not None and (not isinstance(value, str) or len(value) > MAX_TEXT)):
            raise TreeFormatError(f"the run's {key!r} is missing or not text")
    warnings = run.get("warnings", [])
    if not isinstance(warnings, list) or not all(isinstance(w, str) and len(w) < MAX_TEXT for w in warnings):
        raise TreeFormatError("the run's 'warnings' must be a list of sentences")
    for key in ("budget", "totals", "params", "models", "versions", "engine", "scorer_engine"):
        engine = key in ("engine", "scorer_engine")  # None when in-process
        value = (run.get(key) or {}) if engine else run.get(key, {})
        if not isinstance(value, dict) or not all(
                isinstance(v, (str, bool, type(None))) or _finite(v) for v in value.values()):
            raise TreeFormatError(f"the run's {key!r} must be an object of plain values")
    budget = run.get("budget") or {}
    if budget and not all(_finite(budget.get(k)) and budget[k] > 0 for k in ("max_nodes", "max_tokens", "max_seconds")):
        raise TreeFormatError("the run's budget needs positive max_nodes, max_tokens and max_seconds")
    totals = run.get("totals") or {}
    needed = ("nodes", "policy_tokens", "scorer_tokens", "seconds_total", "seconds_generating",
              "seconds_scoring", "seconds_other")
    if totals and not all(_finite(totals.get(k)) for k in needed):
        raise TreeFormatError("the run's totals are incomplete")
    selection = run.get("selection")
    if selection is not None:
        if not isinstance(selection, dict) or set(selection) != {"rule", "answer", "node_id", "score", "votes", "detail"}:
            raise TreeFormatError("the run's selection is malformed")
        ok = (isinstance(selection["rule"], str) and isinstance(selection["detail"], str)
              and isinstance(selection["answer"], (str, type(None)))
              and (selection["node_id"] is None or (isinstance(selection["node_id"], int)
                                                    and not isinstance(selection["node_id"], bool)))
              and (selection["score"] is None or _finite(selection["score"]))
              and isinstance(selection["votes"], dict) and all(_finite(v) for v in selection["votes"].values()))
        if not ok or len(selection["detail"]) > MAX_TEXT or len(selection["votes"]) > 10_000:
            raise TreeFormatError("the run's selection is malformed")


def validate(data: Any) -> None:
    """Check a tree record completely before trusting it (types, ids, sizes); clear messages for people."""
    if not isinstance(data, dict):
        raise TreeFormatError("a tree file must hold a JSON object")
    if data.get("schema") != SCHEMA:
        raise TreeFormatError(f"not a search-tree file (schema {str(data.get('schema'))[:60]!r}, expected {SCHEMA!r})")
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise TreeFormatError("the file has no integer 'version'")
    if version > SCHEMA_VERSION:
        raise TreeFormatError(f"this file is format version {version}, newer than this app understands "
                              f"({SCHEMA_VERSION}); please upgrade reasoning-viz")
    for key, kind in (("run", dict), ("nodes", list), ("events", list)):
        if not isinstance(data.get(key), kind):
            raise TreeFormatError(f"'{key}' is missing or not a {kind.__name__}")
    if not data["events"]:
        raise TreeFormatError("the event log is empty")
    _check_run(data["run"])
    for i, e in enumerate(data["events"]):
        if (not isinstance(e, dict) or e.get("index") != i or not isinstance(e.get("kind"), str)
                or not isinstance(e.get("message"), str) or not isinstance(e.get("new_nodes", []), list)
                or not isinstance(e.get("updates", {}), dict) or set(e) - {"index", "kind", "message", "new_nodes", "updates"}):
            raise TreeFormatError(f"event {i} is malformed")
        if len(e["kind"]) > 40 or len(e["message"]) > MAX_TEXT:
            raise TreeFormatError(f"event {i}: its kind or message is too long")
        for n in e.get("new_nodes", []):
            if not isinstance(n, dict) or set(n) != NODE_FIELDS:
                raise TreeFormatError(f"event {i} creates a node with wrong fields")
            for name, value in n.items():
                _check_field(name, value, f"event {i}")
        for node_id, changes in e.get("updates", {}).items():
            if not str(node_id).lstrip("-").isdigit() or len(str(node_id)) > 12 or not isinstance(changes, dict) \
                    or set(changes) - NODE_FIELDS:
                raise TreeFormatError(f"event {i} updates unknown fields")
            if {"id", "parent", "depth"} & set(changes):  # set once at creation, so the tree stays a tree
                raise TreeFormatError(f"event {i} changes a node's id, parent or depth, which never change")
            for name, value in changes.items():
                _check_field(name, value, f"event {i}")
    for n in data["nodes"]:
        if not isinstance(n, dict) or set(n) != NODE_FIELDS:
            raise TreeFormatError("the node list has a node with wrong fields")
        for name, value in n.items():
            _check_field(name, value, "the node list")


def replay(events: list[Event], upto: int, run: dict[str, Any] | None = None) -> SearchTree:
    """The tree exactly as it was after event ``upto`` (0-based, inclusive)."""
    if not events:
        raise TreeFormatError("the event log is empty")
    first = events[0].new_nodes
    if not first or first[0]["parent"] is not None:
        raise TreeFormatError("the first event must create the root")
    tree = SearchTree.__new__(SearchTree)
    tree.graph, tree.events, tree.token_ids, tree.run = nx.DiGraph(), [], {}, dict(run or {})
    for event in events[: max(0, upto) + 1]:
        tree._apply(event)
    return tree
