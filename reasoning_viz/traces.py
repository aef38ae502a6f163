"""Learning from search: a finished tree as training data, with no model call.

- ``sft_records``: the verified paths (right by the gold answer) or, with no gold, the chosen path, as
  chat-format records for supervised fine-tuning (imitation of the search's best answers).
- ``sos_actions`` / ``sos_text``: a **Stream-of-Search** trace (Gandhi et al. 2024, arXiv:2404.03683):
  the whole search linearised in the order it was explored (the event log): each expansion and its
  new steps, their scores, each prune with its reason, each move to a node the last expansion did not
  make (a backtrack, or a step sideways to another beam) with that node's score, and the final answer
  and path. The text is rendered from
  the actions, so the JSONL and the text say the same thing.
"""

from __future__ import annotations

import json
from typing import Any

from .tree import SearchTree


def sft_records(tree: SearchTree) -> list[dict[str, Any]]:
    """One chat record per verified path (``correct`` terminal nodes) or, if the run has no gold answer,
    for the chosen path alone; none when there is neither."""
    gold = tree.run.get("gold")
    if gold is not None:
        ends = [n for n in tree.nodes() if n.status == "terminal" and n.correct]
        source = "verified"
    else:
        chosen = (tree.run.get("selection") or {}).get("node_id")
        ends = [tree.node(chosen)] if chosen is not None else []
        source = "chosen"
    records = []
    for end in ends:
        records.append({"messages": [{"role": "user", "content": tree.question},
                                     {"role": "assistant", "content": "\n\n".join(tree.steps(end.id))}],
                        "answer": end.answer, "source": source, "node": end.id,
                        "score": end.path_score, "strategy": tree.run.get("strategy")})
    return records


def _score(value: float | None) -> str:
    return "unscored" if value is None else f"{value:.2f}"


def sos_actions(tree: SearchTree) -> list[dict[str, Any]]:
    """The search as a list of actions in the order it happened (see the module's docstring)."""
    actions: list[dict[str, Any]] = [{"action": "question", "text": tree.question}]
    last_children: set[int] = {0}  # the nodes the previous expansion made: going on from one is no move
    for event in tree.events:
        if event.kind == "created" and event.new_nodes and event.new_nodes[0]["parent"] is not None:
            parent = event.new_nodes[0]["parent"]
            if parent not in last_children:
                node = tree.node(parent)
                actions.append({"action": "move", "node": parent, "depth": node.depth,
                                "score": node.step_score})
            actions.append({"action": "expand", "node": parent,
                            "children": [{"node": n["id"], "text": n["text"], "answer": n["answer"]}
                                         for n in event.new_nodes]})
            last_children = {n["id"] for n in event.new_nodes}
        elif event.kind == "scored":
            scores = {i: c["step_score"] for i, c in event.updates.items() if "step_score" in c}
            if scores:
                actions.append({"action": "score", "scores": scores})
        elif event.kind == "pruned":
            for i, change in event.updates.items():
                actions.append({"action": "prune", "node": i, "score": tree.node(i).step_score,
                                "reason": change.get("reason")})
    selection = tree.run.get("selection") or {}
    if selection.get("node_id") is not None:
        path = [n.id for n in tree.path(selection["node_id"])]
        actions.append({"action": "answer", "answer": selection["answer"], "node": selection["node_id"],
                        "path": path, "rule": selection.get("rule")})
    else:
        actions.append({"action": "no-answer"})
    return actions


def sos_text(tree: SearchTree) -> str:
    """The Stream-of-Search trace as text, one line per action (children indented under their expansion)."""
    return actions_text(sos_actions(tree))


def actions_text(actions: list[dict[str, Any]]) -> str:
    """``sos_actions`` (as returned, or read back from JSON) as the trace's text."""
    lines = []
    for a in actions:
        kind = a["action"]
        if kind == "question":
            lines.append(f"Question: {a['text']}")
        elif kind == "move":
            lines.append(f"Move to node {a['node']} (depth {a['depth']}, score {_score(a['score'])})")
        elif kind == "expand":
            lines.append(f"Expand node {a['node']}:")
            for c in a["children"]:
                answer = f" [answer {c['answer']}]" if c["answer"] is not None else ""
                lines.append(f"  node {c['node']}: {c['text']}{answer}")
        elif kind == "score":
            lines.append("Scores: " + ", ".join(f"node {i} {_score(s)}" for i, s in a["scores"].items()))
        elif kind == "prune":
            lines.append(f"Prune node {a['node']} (score {_score(a['score'])}): {a['reason']}")
        elif kind == "answer":
            lines.append(f"Answer {a['answer']} at node {a['node']}: path {' -> '.join(map(str, a['path']))}")
        else:
            lines.append("No answer.")
    return "\n".join(lines) + "\n"


def jsonl(records: list[dict[str, Any]]) -> str:
    """Records as JSON Lines (keys of dicts with int keys become strings, as JSON requires)."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
