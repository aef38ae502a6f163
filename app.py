"""Reasoning Tree Explorer: the Gradio UI (layout and event wiring only).

Every action calls into ``reasoning_viz.service`` (runs, files, limits), ``reasoning_viz.render``
(figures and text) or ``reasoning_viz.select``; nothing here searches or scores.
Run: ``python app.py`` (binds 127.0.0.1:7860; set GRADIO_SERVER_NAME=0.0.0.0 to serve a network).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect as pyinspect
import json
import logging
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
from types import SimpleNamespace  # noqa: E402

from reasoning_viz import service  # noqa: E402
from reasoning_viz.models.engine import EngineError  # noqa: E402
from reasoning_viz.models.generator import OutOfMemory  # noqa: E402
from reasoning_viz.models.loading import DEFAULT_PRESET, PRESETS  # noqa: E402
from reasoning_viz.models.presets import SCORER_KINDS  # noqa: E402
from reasoning_viz.render.figures import (DECLUTTER_JS, icicle_figure, standalone_html, tree_figure,  # noqa: E402
                                         vote_figure, waiting_figure)
from reasoning_viz.lab import LAB_STRATEGIES, STRATEGY_TITLES  # noqa: E402
from reasoning_viz.problems.tinygsm import LEVELS  # noqa: E402
from reasoning_viz.render.lab import (accuracy_figure, coverage_figure, envelope_rows, level_name,  # noqa: E402
                                      small_vs_large_figure)
from reasoning_viz.render.layout import tidy_layout  # noqa: E402
from reasoning_viz.render.text import (CANDIDATE_COLUMNS, NODE_COLUMNS, answer_markdown, candidate_table,  # noqa: E402
                                       event_markdown, explain_markdown, node_rows, path_markdown, progress_line)
from reasoning_viz.select import RULE_TITLES  # noqa: E402
from reasoning_viz.strategies import STRATEGIES  # noqa: E402
from reasoning_viz.tree import AGGREGATIONS, SearchTree, replay  # noqa: E402

log = logging.getLogger("reasoning_viz.app")
LATEX = [{"left": "$$", "right": "$$", "display": True}, {"left": "$", "right": "$", "display": False},
         {"left": "\\(", "right": "\\)", "display": False}, {"left": "\\[", "right": "\\]", "display": True}]

# Label and help text of every hyperparameter the strategies' dataclasses define.
FIELD_UI = {
    "temperature": ("Temperature", "Sampling randomness; 0 = greedy. Set from the model preset "
                                   f"({PRESETS[DEFAULT_PRESET].temperature:g} for the bundled and hub models)."),
    "max_depth": ("Max steps", "Longest path, in reasoning steps."),
    "max_step_tokens": ("Max tokens per step", "A step is cut here if no blank line comes first."),
    "greedy": ("Greedy", "Off: one sampled chain at the temperature above."),
    "n": ("N", "Samples (best-of-N, vote) or beams per depth (beam search, DVTS)."),
    "beam_width": ("Beam width M", "Children per kept beam; N/M beams survive each step."),
    "aggregation": ("Path score", "How step scores combine: last step, weakest step, product, mean."),
    "vote": ("Vote", "majority: count answers; weighted: sum their PRM path scores."),
    "k": ("Branches k", "Top-k first tokens to branch on."),
    "simulations": ("Simulations", "MCTS iterations (select, expand, evaluate, back up)."),
    "width": ("Expansion width", "Children sampled when MCTS expands a leaf."),
    "c_puct": ("c_puct", "Exploration weight in PUCT."),
    "fast_max_tokens": ("Fast budget (tokens)", "Token budget of the fast answer."),
    "threshold": ("Verify threshold", "The fast answer is kept if its path score reaches this."),
}
CHOICES = {"aggregation": list(AGGREGATIONS), "vote": ["majority", "weighted"]}

BRIDGE_JS = DECLUTTER_JS + """
// Bridge plotly's click on a tree node to Python: set this component's value, fire 'click'; keep the
// inspector in view (on a phone it sits below the tree); declutter answer labels after every redraw.
const bound = (gd, name) => gd._ev && gd._ev.listeners && gd._ev.listeners(name).some((f) => f.__rv);
const bind = () => {
  document.querySelectorAll('.js-plotly-plot').forEach((gd) => {
    if (typeof gd.on !== 'function') return;
    if (!bound(gd, 'plotly_afterplot')) {  // a plot Gradio redrew from scratch has lost its handlers
      const tidy = () => rvDeclutter(gd);
      tidy.__rv = true;
      gd.on('plotly_afterplot', tidy);
      rvDeclutter(gd);
    }
    if (!gd.closest('#tree-plot') || bound(gd, 'plotly_click')) return;
    const handler = (ev) => {
      const pt = ev && ev.points && ev.points[0];
      if (!pt || pt.customdata === undefined || pt.customdata === null) return;
      props.value = String(pt.customdata);
      trigger('click');
      setTimeout(() => {
        const box = document.querySelector('#inspector-box');
        if (!box) return;
        const r = box.getBoundingClientRect();
        if (r.top > window.innerHeight - 80 || r.bottom < 0) box.scrollIntoView({behavior: 'smooth', block: 'start'});
      }, 300);
    };
    handler.__rv = true;
    gd.on('plotly_click', handler);
  });
};
new MutationObserver(bind).observe(document.body, {childList: true, subtree: true});
bind();
"""

CSS = """
#tree-plot {min-height: 560px}
.rv-progress p {margin: 0}
#header h2 {margin: 0}
footer {display: none !important}
/* projector mode: large text and strong contrast, plot labels too */
body.rv-projector .prose, body.rv-projector label, body.rv-projector textarea, body.rv-projector input,
body.rv-projector button {font-size: 1.3rem !important}
body.rv-projector .prose {color: #000 !important}
body.rv-projector #tree-plot svg text {font-size: 15px !important; fill: #000 !important}
@media (max-width: 700px) {  /* a phone: question and Run, then the tree, then the folded settings */
  #tree-plot {min-height: 420px}
  #header p {display: none}
  #controls {display: contents}
  #controls-top {order: 0; flex: 1 1 100%}
  #tree-column {order: 1}
  #controls-more {order: 2; flex: 1 1 100%}
  #inspector-column {order: 3}
  .tab-wrapper .tab-container button {padding: 0 4px !important; font-size: 14px !important}  /* all five tabs fit: none behind "…" */
}
"""


def _error(exc: Exception) -> gr.Error:
    return gr.Error(str(exc), print_exception=False)


USER_ERRORS = (ValueError, OutOfMemory, EngineError)  # their message is a sentence for the user


def _failure(exc: Exception, what: str) -> gr.Error:
    if isinstance(exc, USER_ERRORS):
        return _error(exc)
    if isinstance(exc, RecursionError):
        return _error(ValueError("The input is nested too deeply."))
    log.error("unexpected error while %s", what, exc_info=exc)  # the trace stays in the server's log
    return _error(ValueError(f"Something went wrong while {what} ({type(exc).__name__}); the server logged it "
                             "and keeps serving. Try again, or with a smaller search."))


def user_errors(what: str):
    """Every endpoint's guard: whatever goes wrong, the caller gets one sentence, never a trace or an
    empty "Error", and the server keeps serving (generators too: a streamed run)."""
    def wrap(fn):
        if pyinspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def gen(*args, **kwargs):
                try:
                    yield from fn(*args, **kwargs)
                except gr.Error:
                    raise
                except Exception as exc:
                    raise _failure(exc, what) from None
            return gen

        @functools.wraps(fn)
        def call(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as exc:
                raise _failure(exc, what) from None
        return call
    return wrap


def _tree_json(tree_json) -> SearchTree:
    """The tree a session holds (or an API caller sent back), validated like an upload."""
    if not tree_json:
        raise ValueError("Run a search or load a tree first.")
    return SearchTree.from_json(tree_json)


def _tree_outputs(tree: SearchTree, done: bool):
    """What every view shows for a tree: figure, progress, answer, votes, table, replay, file, state, and
    the ranked candidates (last, so that the API's output positions stay as they were)."""
    sel = tree.run.get("selection")
    file = str(service.export_tree(tree)) if done else None
    last = len(tree.events) - 1
    caption, rows = candidate_table(tree) if done else ("_Searching…_", [])
    return (tree_figure(tree), progress_line(tree, done=done), answer_markdown(tree) if done else "_Searching…_",
            vote_figure(sel), gr.Dataframe(value=node_rows(tree), headers=NODE_COLUMNS),
            gr.Slider(minimum=0, maximum=max(1, last), value=last, step=1, interactive=done),
            event_markdown(tree, last), file, tree.to_json(),  # nodes can be inspected mid-search too
            caption, gr.Dataframe(value=rows, headers=CANDIDATE_COLUMNS), explain_markdown(tree),
            icicle_figure(tree) if done else gr.skip())  # the icicle once, not at every live snapshot


def _filled_inputs(tree: SearchTree):
    """A loaded tree's question, gold answer, strategy, seed and settings, back in the input widgets."""
    run = tree.run
    strategy = run.get("strategy") if run.get("strategy") in STRATEGIES else None
    params = run.get("params") or {}
    values = [params[field] if name == strategy and field in params else gr.skip() for name, field in PARAM_KEYS]
    seed = run.get("seed") if isinstance(run.get("seed"), int) else gr.skip()
    return (tree.question, run.get("gold") or "", strategy or gr.skip(), seed, *values)


@user_errors("reading the settings")
def collect_params(strategy: str, *values) -> str:
    """The chosen strategy's widget values as the JSON the run endpoint takes."""
    if not isinstance(strategy, str) or strategy not in STRATEGIES:
        raise ValueError(f"Unknown strategy {str(strategy)[:40]!r}.")
    out = {}
    for (name, field), value in zip(PARAM_KEYS, values):
        if name == strategy:
            out[field] = value
    return json.dumps(out)


@user_errors("running the search")
def run(question, gold, strategy, preset, seed, params_json, max_nodes, max_tokens, max_seconds,
        custom_policy="", scorer_kind="", custom_scorer="", run_name="", request: gr.Request = None):
    """Run a search and stream the growing tree; the final yield carries the answer and files.
    ``run_name`` (optional) names the run so that ``/stop`` can stop it alone."""
    if not isinstance(params_json, (str, type(None))):
        raise ValueError("params must be a JSON object of hyperparameters")
    values = json.loads(params_json or "{}")
    params = service.make_params(strategy, values)
    budget = service.make_budget(max_nodes, max_tokens, max_seconds)
    service.clean_question(question)
    seed = int(service.number(seed or 0, "seed", whole=True))
    if not isinstance(gold, (str, type(None))) or not isinstance(run_name, (str, type(None))):
        raise ValueError("The gold answer and the run name must be text.")
    models = service.get_models(preset, custom_policy, scorer_kind, custom_scorer)
    for tree, done in service.stream_search(question, strategy, models, params, seed, budget,
                                            (gold or "").strip()[:200] or None, _session(request), run_name):
        yield _tree_outputs(tree, done)


def _session(request: gr.Request | None) -> str:
    return request.session_hash if request is not None and request.session_hash else service.new_run_id()


@user_errors("stopping")
def stop(run_name: str = "", request: gr.Request = None) -> str:
    """Stop this session's run named ``run_name``, or all of its runs when it is empty."""
    if not isinstance(run_name, (str, type(None))):
        raise ValueError("The run name must be text.")
    stopped = service.cancel(request.session_hash if request is not None else None, run_name)
    return "Stopping… the partial tree will stay." if stopped else "Nothing is running."


@user_errors("inspecting the node")
def inspect(node_id, tree_json, fold=False):
    """The inspector for one node (from a click on the plot, the table, or the API); the tree is redrawn
    with that node ringed (pruned branches folded if ``fold``)."""
    tree = _tree_json(tree_json)
    try:
        node = int(service.number(node_id, "node id", whole=True))
        tree.node(node)
    except (ValueError, KeyError):
        raise ValueError(f"There is no node {str(node_id)[:20]!r} in this tree (ids run 0-{len(tree) - 1}).") from None
    return path_markdown(tree, node), node, tree_figure(tree, highlight=node, fold_pruned=fold is True)


@user_errors("drawing the tree")
def redraw(fold, tree_json):
    """The tree with its pruned branches folded or not (the checkbox above it)."""
    if not tree_json:
        return gr.skip()
    return tree_figure(_tree_json(tree_json), fold_pruned=fold is True)


@user_errors("inspecting the node")
def pick_row(tree_json, evt: gr.SelectData):
    row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
    return inspect(row, tree_json)


@user_errors("inspecting the node")
def pick_candidate(tree_json, evt: gr.SelectData):
    row = evt.row_value if isinstance(evt.row_value, list) else []
    node = row[CANDIDATE_COLUMNS.index("node")] if len(row) == len(CANDIDATE_COLUMNS) else None
    return inspect(node, tree_json)


@user_errors("replaying the search")
def replay_to(t, tree_json):
    """The tree after event ``t``, drawn where the finished tree has its nodes (frames never jump)."""
    tree = _tree_json(tree_json)
    t = max(0, min(int(service.number(t or 0, "event", whole=False)), len(tree.events) - 1))
    past = replay(tree.events, t, run=tree.run)
    return (tree_figure(past, title=f"after event {t} of {len(tree.events) - 1}", positions=tidy_layout(tree)),
            event_markdown(tree, t))


@user_errors("playing the search")
def toggle_play(playing, speed, t, tree_json):
    """Play from the current event (from the start if at the end), or pause."""
    tree = _tree_json(tree_json)
    last = len(tree.events) - 1
    if playing:
        return False, gr.Timer(active=False), "Play", gr.skip()
    start = 0 if int(service.number(t or 0, "event", whole=False)) >= last else gr.skip()
    seconds = speed if isinstance(speed, (int, float)) and 0.05 <= speed <= 5 else 0.5
    return True, gr.Timer(value=seconds, active=True), "Pause", start


@user_errors("playing the search")
def play_step(t, tree_json):
    """One tick of Play: the next event, until the last one."""
    tree = _tree_json(tree_json)
    last = len(tree.events) - 1
    t = min(int(service.number(t or 0, "event", whole=False)) + 1, last)
    figure, text = replay_to(t, tree_json)
    more = t < last
    return (gr.Slider(value=t, maximum=max(1, last)), figure, text, gr.Timer(active=more), more,
            "Pause" if more else "Play")


@user_errors("opening the file")
def load_file(path):
    tree = service.import_tree(path)
    return (*_tree_outputs(tree, True), *_filled_inputs(tree))


@user_errors("opening the recorded run")
def load_gallery(title):
    runs = service.gallery_runs()
    if not isinstance(title, str) or title not in runs:
        raise ValueError("Choose a recorded run from the list.")
    tree = SearchTree.load(runs[title])
    return (*_tree_outputs(tree, True), *_filled_inputs(tree))


@user_errors("opening the example")
def load_example(label):
    examples = {label: (q, g) for label, q, g in service.example_problems()}
    if not isinstance(label, str) or label not in examples:
        raise ValueError("Choose an example from the list.")
    return examples[label]


@user_errors("re-judging the tree")
def rejudge(rule, aggregation, tree_json):
    """What if another rule chose the answer? The same tree, its answer chosen again (no model call)."""
    return _tree_outputs(service.rejudge_tree(_tree_json(tree_json), rule, aggregation), True)


@user_errors("making the training data")
def make_training(tree_json):
    return [str(p) for p in service.export_training(_tree_json(tree_json))]


@user_errors("making the HTML page")
def make_html(tree_json):
    tree = _tree_json(tree_json)
    return str(service.export_html(tree, standalone_html(tree)))


@user_errors("comparing the strategies")
def compare(question, gold, strategies, preset, seed, n, max_nodes, max_tokens, max_seconds,
            request: gr.Request = None):
    """Run 2-4 strategies on one question with one seed and budget; stream each as it finishes."""
    question = service.clean_question(question)
    if not isinstance(strategies, list) or not 2 <= len(strategies) <= 4 or len(set(map(str, strategies))) < len(strategies):
        raise ValueError("Pick two to four different strategies to compare.")
    budget = service.make_budget(max_nodes, max_tokens, max_seconds)
    n = None if n in (None, "") else int(service.number(n, "N", whole=True))
    plans = [(s, service.make_params(s, service.shared_values(s, n=n))) for s in strategies]
    seed = int(service.number(seed or 0, "seed", whole=True))
    if not isinstance(gold, (str, type(None))):
        raise ValueError("The gold answer must be text.")
    models = service.get_models(preset)
    # every chosen plot is shown from the start (a placeholder until its run ends), so each is laid out at
    # its final width and draws its tree whole
    titles = [STRATEGIES[name].title for name, _ in plans]
    figures = [gr.Plot(value=waiting_figure(titles[i]), visible=True) if i < len(plans) else gr.Plot(visible=False)
               for i in range(4)]
    rows = [[title, "…", "", "", "", "", "", "waiting"] for title in titles]
    yield (*figures, rows, f"Running {titles[0]} (1 of {len(plans)})…")
    session = _session(request)
    for i, (name, params) in enumerate(plans):
        for tree, done in service.stream_search(question, name, models, params, seed, budget,
                                                (gold or "").strip()[:200] or None, session, min_interval=1.0):
            figures[i] = gr.Plot(value=tree_figure(tree, title=titles[i], height=420), visible=True)
            if not done:  # the growing tree and how far it has got, as in the Explore view
                t = tree.run.get("totals") or {}
                yield (*figures, rows, f"Running {titles[i]} ({i + 1} of {len(plans)}): {t.get('nodes', len(tree))} "
                                       f"nodes, {t.get('policy_tokens', 0)} policy tokens so far…")
        sel, t = tree.run["selection"], tree.run["totals"]
        node = tree.node(sel["node_id"]) if sel["node_id"] is not None else None
        correct = "" if node is None or node.correct is None else ("✓" if node.correct else "✗")
        rows[i] = [titles[i], sel["answer"] or "–", correct, t["nodes"], t["policy_tokens"], t["scorer_tokens"],
                   round(t["seconds_total"], 2), tree.run["stopped"] or ""]
        last = i + 1 == len(plans)
        yield (*figures, rows, compare_summary(rows) if last else f"Running {titles[i + 1]} ({i + 2} of {len(plans)})…")


def compare_summary(rows: list[list]) -> str:
    """One line over the finished comparison: correctness, and who spent least."""
    marked = [r for r in rows if r[2] in ("✓", "✗")]
    right = f"{sum(r[2] == '✓' for r in marked)} of {len(marked)} right · " if marked else ""
    cheapest = min(rows, key=lambda r: r[4])
    fastest = min(rows, key=lambda r: r[6])
    return (f"**Done.** {right}fewest policy tokens: {cheapest[0]} ({cheapest[4]}) · fastest: {fastest[0]} "
            f"({fastest[6]} s)")


def build_app() -> gr.Blocks:
    """The page: a header, then one function per view (each lays out its tab and wires its events)."""
    examples = service.example_problems()
    ttl = service.LIMITS.file_ttl_seconds  # Gradio's copies of downloads and uploads are deleted after this
    with gr.Blocks(title="Reasoning Tree Explorer", delete_cache=(ttl, ttl)) as demo:
        header()
        with gr.Tab("Explore"):
            explore = explore_layout(examples)
            wire_explore(explore)
        with gr.Tab("Compare"):
            compare_view(examples, explore.run_name)
        with gr.Tab("Lab"):
            lab_view(explore.run_name)
        with gr.Tab("Strategies"):
            strategies_view()
        with gr.Tab("Models"):
            models_view()
    return demo


def header() -> None:
    """The title and the projector switch (large text, strong contrast, for a classroom)."""
    with gr.Row(equal_height=True):
        gr.Markdown("## Reasoning Tree Explorer\nWatch a small model search for an answer step by step: every "
                    "step, its score from a process reward model (PRM), and every branch kept or pruned.",
                    elem_id="header")
        projector = gr.Checkbox(False, label="Projector mode", info="Large text, strong contrast",
                                elem_id="projector", scale=0, min_width=160)
    projector.change(None, projector, None, js="(on) => { document.body.classList.toggle('rv-projector', on); }")


def explore_layout(examples: list) -> SimpleNamespace:
    """The Explore view: controls at the top left, the tree beside them, the inspector next to it; below,
    how the answer was chosen, the icicle, replay, every node and the downloads. Returns every component
    by name, for ``wire_explore``."""
    tree_state = gr.State(None, time_to_live=service.LIMITS.file_ttl_seconds)
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300, elem_id="controls"):  # what to ask and how: the top
            with gr.Column(elem_id="controls-top"):  # on a phone: above the tree
                question = gr.Textbox(label="Question", lines=3, placeholder="Ask an arithmetic word problem…",
                                      elem_id="question")
                example = gr.Dropdown([label for label, _, _ in examples], value=None, elem_id="example",
                                      label="Example problems (level 1 easy … 6 hard, with gold answers)")
                with gr.Row():
                    strategy = gr.Dropdown([(s.title, s.name) for s in STRATEGIES.values()], value="beam_search",
                                           label="Strategy", elem_id="strategy", min_width=140)
                    preset = gr.Dropdown(list(PRESETS), value=DEFAULT_PRESET, label="Models", min_width=140)
                with gr.Row():
                    run_btn = gr.Button("Run", variant="primary", elem_id="run", min_width=80)
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="stop", min_width=80)
                stop_note = gr.Markdown()
            with gr.Column(elem_id="controls-more"):  # on a phone: below the tree
                about = gr.Markdown(STRATEGIES["beam_search"].summary, elem_id="strategy-about")
                with gr.Accordion("Settings (the strategy's hyperparameters, seed, gold answer)", open=False):
                    gold = gr.Textbox(label="Gold answer (optional)", placeholder="e.g. 42: marks answers ✓/✗",
                                      elem_id="gold")
                    groups, widgets, temperature_widgets = {}, [], []
                    for s in STRATEGIES.values():
                        with gr.Group(visible=s.name == "beam_search") as group:
                            for f in dataclasses.fields(s.params):
                                label, info = FIELD_UI[f.name]
                                if f.name in CHOICES:
                                    w = gr.Dropdown(CHOICES[f.name], value=f.default, label=label, info=info)
                                elif isinstance(f.default, bool):
                                    w = gr.Checkbox(value=f.default, label=label, info=info)
                                elif f.name == "temperature":  # follows the model preset (see below)
                                    w = gr.Number(value=PRESETS[DEFAULT_PRESET].temperature, label=label, info=info)
                                    temperature_widgets.append(w)
                                else:
                                    w = gr.Number(value=f.default, label=label, info=info,
                                                  precision=0 if isinstance(f.default, int) else None)
                                widgets.append(w)
                        groups[s.name] = group
                    seed = gr.Number(value=0, precision=0, label="Seed", info="The same seed gives the same tree.")
                with gr.Accordion("Budget", open=False):
                    max_nodes = gr.Number(value=service.LIMITS.max_nodes, precision=0, label="Max nodes")
                    max_tokens = gr.Number(value=service.LIMITS.max_tokens, precision=0, label="Max tokens")
                    max_seconds = gr.Number(value=service.LIMITS.max_seconds, label="Max seconds")
                with gr.Accordion("Custom models (ids the host allows)", open=False):
                    custom_policy = gr.Textbox(label="Policy: hub id or local path",
                                               placeholder="leave empty to use the preset")
                    scorer_kind = gr.Dropdown(list(SCORER_KINDS), value="llm-judge", label="Scorer format")
                    custom_scorer = gr.Textbox(label="Scorer: hub id or local path",
                                               placeholder="empty: the policy judges itself (llm-judge)")
                with gr.Accordion("Open a recorded run (no model needed)", open=False):
                    gallery = gr.Dropdown(list(service.gallery_runs()), label="Gallery", value=None, elem_id="gallery")
                    upload = gr.File(label="Upload a tree JSON", file_types=[".json"], type="filepath")
                params_json = gr.Textbox(visible=False)
                run_name = gr.Textbox("", visible=False)  # API callers name runs to stop one of several
        with gr.Column(scale=2, min_width=340, elem_id="tree-column"):  # the tree, beside the controls
            progress = gr.Markdown("Pick an example or type a question, then press Run.",
                                   elem_classes="rv-progress", elem_id="progress")
            plot = gr.Plot(label="Search tree", show_label=False, elem_id="tree-plot")
            fold = gr.Checkbox(False, label="Fold pruned branches (one '+12 pruned' marker each)", elem_id="fold")
            bridge = gr.HTML(value="", html_template="<span class='rv-clicked'>${value ? 'Clicked node ' + value : "
                             "'Click a node to read its path in the inspector.'}</span>",
                             js_on_load=BRIDGE_JS, elem_id="node-bridge")
        with gr.Column(scale=1, min_width=300, elem_id="inspector-column"):  # next to the tree
            answer = gr.Markdown(elem_id="answer")
            with gr.Accordion("What am I looking at?", open=False, elem_id="explain-box"):
                explain = gr.Markdown("Run a search or open a recorded run: this panel then explains "
                                      "the tree in front of you.", elem_id="explain")
            with gr.Accordion("Inspector: the path to a node", open=True, elem_id="inspector-box"):
                node_pick = gr.Number(label="Node id", precision=0, value=0, elem_id="node-id")
                inspector = gr.Markdown("_Click a node in the tree (or pick one in the tables)._",
                                        latex_delimiters=LATEX, elem_id="inspector")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            with gr.Accordion("How the answer was chosen: every finished path, ranked", open=True,
                              elem_id="candidates-box"):
                candidates_caption = gr.Markdown(elem_id="candidates-caption")
                candidates = gr.Dataframe(headers=CANDIDATE_COLUMNS, interactive=False, wrap=True,
                                          elem_id="candidates", max_height=320)
                with gr.Row(equal_height=True, elem_id="rejudge-row"):
                    judge_rule = gr.Dropdown([(title, key) for key, title in RULE_TITLES.items()],
                                             value="majority", label="What if another rule chose?",
                                             elem_id="judge-rule", min_width=160)
                    judge_aggregation = gr.Dropdown(list(AGGREGATIONS), value="last", min_width=120,
                                                    label="Path score (for scores)", elem_id="judge-aggregation")
                    judge_btn = gr.Button("Re-judge (no model call)", elem_id="rejudge", min_width=120)
        with gr.Column(scale=2):
            votes = gr.Plot(label="Votes (or confidence) per answer", elem_id="votes")
    with gr.Accordion("Icicle view, for big trees: each step a block under its parent; click one to zoom into "
                      "its subtree", open=False, elem_id="icicle-box"):
        icicle = gr.Plot(label="Icicle", show_label=False, elem_id="icicle")
    with gr.Accordion("Replay: play the search back, event by event", open=False, elem_id="replay-box"):
        with gr.Row():
            play_btn = gr.Button("Play", elem_id="play", min_width=80)
            speed = gr.Dropdown([("slow (1 s an event)", 1.0), ("normal (0.5 s)", 0.5), ("fast (0.2 s)", 0.2)],
                                value=0.5, label="Speed", min_width=160)
            event_slider = gr.Slider(0, 1, value=0, step=1, label="Event", interactive=False,
                                     elem_id="event-slider", scale=3)
        event_text = gr.Markdown(elem_id="event-text")
        replay_plot = gr.Plot(label="The tree after this event", show_label=False, elem_id="replay-plot")
        gr.Markdown("Each frame draws the nodes where the finished tree has them, so nothing jumps.")
        timer = gr.Timer(0.5, active=False)
        playing = gr.State(False)
    with gr.Accordion("All nodes", open=False):
        table = gr.Dataframe(headers=NODE_COLUMNS, interactive=False, wrap=True)
    with gr.Row():
        tree_file = gr.File(label="Tree JSON (download)", interactive=False)
        html_btn = gr.Button("Make standalone HTML")
        html_file = gr.File(label="Standalone HTML (opens offline)", interactive=False)
    with gr.Row():
        training_btn = gr.Button("Make training data: SFT paths + Stream-of-Search trace", elem_id="training")
        training_files = gr.File(label="SFT JSONL, trace text, trace JSONL", file_count="multiple",
                                 interactive=False, elem_id="training-files")
    return SimpleNamespace(**{name: value for name, value in locals().items() if name != "examples"})


def wire_explore(ui: SimpleNamespace) -> None:
    """The Explore view's events: run and stop, inspect a node, fold, replay, open and export runs, re-judge."""
    def show_strategy(name):
        known = isinstance(name, str) and name in STRATEGIES
        return [gr.Group(visible=n == name) for n in ui.groups] + [STRATEGIES[name].summary if known else ""]

    ui.strategy.change(show_strategy, ui.strategy, [*ui.groups.values(), ui.about], api_visibility="private",
                       queue=False)

    def preset_temperature(name):
        known = isinstance(name, str) and name in PRESETS
        return [PRESETS[name].temperature if known else gr.skip()] * len(ui.temperature_widgets)

    ui.preset.change(preset_temperature, ui.preset, ui.temperature_widgets, api_visibility="private", queue=False)
    tree_outputs = [ui.plot, ui.progress, ui.answer, ui.votes, ui.table, ui.event_slider, ui.event_text,
                    ui.tree_file, ui.tree_state, ui.candidates_caption, ui.candidates, ui.explain, ui.icicle]
    filled = [ui.question, ui.gold, ui.strategy, ui.seed, *ui.widgets]
    run_inputs = [ui.question, ui.gold, ui.strategy, ui.preset, ui.seed, ui.params_json, ui.max_nodes,
                  ui.max_tokens, ui.max_seconds, ui.custom_policy, ui.scorer_kind, ui.custom_scorer, ui.run_name]
    # preprocess=False: the functions validate raw values themselves, so that a hostile value gets
    # their sentence rather than Gradio's opaque "could not preprocess" (only the upload keeps it)
    raw = dict(preprocess=False)
    ui.example.input(load_example, ui.example, [ui.question, ui.gold], api_visibility="private", queue=False, **raw)
    run_event = ui.run_btn.click(collect_params, [ui.strategy, *ui.widgets], ui.params_json, api_visibility="private",
                                 queue=False, **raw).then(run, run_inputs, tree_outputs, api_name="run", **raw,
                                                          concurrency_id="model",
                                                          concurrency_limit=service.queue_concurrency())
    ui.question.submit(collect_params, [ui.strategy, *ui.widgets], ui.params_json, api_visibility="private",
                       queue=False, **raw).then(run, run_inputs, tree_outputs, api_visibility="private",
                                                concurrency_id="model", **raw)
    ui.stop_btn.click(stop, ui.run_name, ui.stop_note, api_name="stop", queue=False, **raw)
    run_event.then(lambda: "", None, ui.stop_note, api_visibility="private", queue=False)
    inspected = [ui.inspector, ui.node_pick, ui.plot]
    ui.node_pick.submit(inspect, [ui.node_pick, ui.tree_state, ui.fold], inspected, api_name="inspect", **raw)
    ui.bridge.click(inspect, [ui.bridge, ui.tree_state, ui.fold], inspected, api_name="inspect_click", **raw,
                    api_visibility="private")
    ui.fold.change(redraw, [ui.fold, ui.tree_state], ui.plot, api_visibility="private", **raw)
    run_event.then(redraw, [ui.fold, ui.tree_state], ui.plot, api_visibility="private", **raw)
    ui.table.select(pick_row, ui.tree_state, inspected, api_visibility="private", **raw)
    ui.candidates.select(pick_candidate, ui.tree_state, inspected, api_visibility="private", **raw)
    ui.event_slider.release(replay_to, [ui.event_slider, ui.tree_state], [ui.replay_plot, ui.event_text],
                            api_name="replay", **raw)
    ui.play_btn.click(toggle_play, [ui.playing, ui.speed, ui.event_slider, ui.tree_state],
                      [ui.playing, ui.timer, ui.play_btn, ui.event_slider], api_visibility="private", queue=False,
                      **raw)
    ui.timer.tick(play_step, [ui.event_slider, ui.tree_state],
                  [ui.event_slider, ui.replay_plot, ui.event_text, ui.timer, ui.playing, ui.play_btn],
                  api_visibility="private", show_progress="hidden", **raw)
    ui.upload.upload(load_file, ui.upload, tree_outputs + filled, api_name="import_tree")
    ui.gallery.input(load_gallery, ui.gallery, tree_outputs + filled, api_name="gallery", **raw)
    ui.html_btn.click(make_html, ui.tree_state, ui.html_file, api_name="export_html", **raw)
    ui.training_btn.click(make_training, ui.tree_state, ui.training_files, api_name="export_training", **raw)
    ui.judge_btn.click(rejudge, [ui.judge_rule, ui.judge_aggregation, ui.tree_state], tree_outputs,
                       api_name="rejudge", **raw)


def compare_view(examples: list, run_name: gr.Textbox) -> None:
    """The Compare view: one question, 2-4 strategies side by side, with their trees and a table."""
    with gr.Row():
        c_question = gr.Textbox(label="Question", lines=3, scale=3, elem_id="c-question")
        with gr.Column(scale=1):
            c_example = gr.Dropdown([label for label, _, _ in examples], value=None, label="Example problems",
                                    elem_id="c-example")
            c_gold = gr.Textbox(label="Gold answer (optional)")
    c_strategies = gr.CheckboxGroup([(s.title, s.name) for s in STRATEGIES.values()],
                                    value=["self_consistency", "beam_search"], label="Strategies (2-4)",
                                    elem_id="c-strategies")
    with gr.Row():
        c_preset = gr.Dropdown(list(PRESETS), value=DEFAULT_PRESET, label="Models")
        c_seed = gr.Number(value=0, precision=0, label="Seed")
        c_n = gr.Number(value=8, precision=0, label="N (where a strategy has one)")
        c_nodes = gr.Number(value=service.LIMITS.max_nodes, precision=0, label="Max nodes")
        c_tokens = gr.Number(value=service.LIMITS.max_tokens, precision=0, label="Max tokens")
        c_seconds = gr.Number(value=service.LIMITS.max_seconds, label="Max seconds")
    with gr.Row():
        c_btn = gr.Button("Compare", variant="primary", elem_id="c-run")
        c_stop = gr.Button("Stop", variant="stop")
    c_progress = gr.Markdown(elem_id="c-progress")
    c_table = gr.Dataframe(headers=["strategy", "answer", "correct", "nodes", "policy tokens", "PRM tokens",
                                    "seconds", "stopped"], interactive=False)
    with gr.Row():
        c_plots = [gr.Plot(visible=False, show_label=False, elem_id=f"c-plot-{i}") for i in range(2)]
    with gr.Row():
        c_plots += [gr.Plot(visible=False, show_label=False, elem_id=f"c-plot-{i}") for i in range(2, 4)]
    raw = dict(preprocess=False)  # as in the Explore view: the functions validate raw values themselves
    c_example.input(load_example, c_example, [c_question, c_gold], api_visibility="private", queue=False, **raw)
    c_btn.click(compare, [c_question, c_gold, c_strategies, c_preset, c_seed, c_n, c_nodes, c_tokens, c_seconds],
                [*c_plots, c_table, c_progress], api_name="compare", concurrency_id="model", **raw)
    c_stop.click(stop, run_name, c_progress, api_visibility="private", queue=False, **raw)


LAB_BUDGETS = [n for n in (1, 2, 4, 8, 16, 32, 64, 128, 256) if n <= service.LIMITS.lab_max_n]


def lab_outputs(summary: dict, level: str, note: str):
    """Everything the Lab view draws from a summary: four figures, the envelope table, a caption."""
    level = level if level in summary["levels"] else "all"
    return (accuracy_figure(summary, level), coverage_figure(summary, level), accuracy_figure(summary, level, "tokens"),
            small_vs_large_figure(summary),
            {"headers": ["level", *[f"N={n}" for n in summary["budgets"]]], "data": envelope_rows(summary)}, note, summary)


def lab_caption(summary: dict, done: int | None = None, total: int | None = None) -> str:
    s = summary["settings"]
    what = (f"{summary['problems']} problems (levels {', '.join(map(str, s['levels']))}), N up to "
            f"{max(summary['budgets'])}, seed {s['seed']}, models: {s['preset']}")
    if done is None:
        return f"**The recorded lab run** shipped with the app: {what}. Run your own below."
    if done < total:
        return f"Running: {done} of {total} searches done · {what}…"
    return f"**Done**: {total} searches (already-run ones came from the cache) · {what}."


@user_errors("running the lab")
def lab(preset, large_preset, strategies, budgets, levels, per_level, seed, level, run_name="",
        request: gr.Request = None):
    """A lab run: figures redrawn as its searches finish; searches already run come from the cache."""
    settings = service.lab_settings(preset, None if large_preset == "none" else large_preset, strategies, budgets,
                                    levels, per_level, seed)
    summary = None
    for summary, done, total in service.stream_lab(settings, _session(request), run_name):
        yield lab_outputs(summary, level, lab_caption(summary, done, total))
    if summary is not None and done < total:
        yield lab_outputs(summary, level, f"Stopped after {done} of {total} searches; run it again to go on "
                                          "(the finished ones are cached).")


@user_errors("making the lab's training data")
def lab_training(preset, large_preset, strategies, budgets, levels, per_level, seed):
    """The lab run these settings describe, from the cache: its verified paths (SFT JSONL) and its
    searches' Stream-of-Search traces (JSONL)."""
    settings = service.lab_settings(preset, None if large_preset == "none" else large_preset, strategies, budgets,
                                    levels, per_level, seed)
    return [str(p) for p in service.export_lab_training(settings)]


@user_errors("drawing the lab run")
def lab_level(level, summary):
    if not isinstance(summary, dict) or "levels" not in summary:
        summary = service.recorded_lab()
    return lab_outputs(summary, level, gr.update())[:5]


def lab_view(run_name: gr.Textbox) -> None:
    """The Lab view: accuracy against compute over many held-out problems, per strategy and level."""
    recorded = service.recorded_lab()
    first = lab_outputs(recorded, "all", lab_caption(recorded))
    gr.Markdown("How accuracy grows with compute, over many held-out problems: **N** is the samples (best-of-N, "
                "the votes) or beams (beam search, DVTS). Best-of-N and the votes at each N are *estimated* from "
                "one run of the largest N (the mean over all N-subsets of its samples); the beam searches run "
                "at every N. Coverage@N is how often *some* sample is right: what a perfect verifier could pick.")
    with gr.Row():
        level = gr.Dropdown([(level_name(lv), lv) for lv in recorded["levels"][::-1]], value="all",
                            label="Show", elem_id="lab-level", scale=1)
        note = gr.Markdown(first[5], elem_id="lab-note")
    with gr.Row():
        acc = gr.Plot(first[0], show_label=False, elem_id="lab-accuracy")
        cov = gr.Plot(first[1], show_label=False, elem_id="lab-coverage")
    with gr.Row():
        tok = gr.Plot(first[2], show_label=False, elem_id="lab-tokens")
        bars = gr.Plot(first[3], show_label=False, elem_id="lab-small-large")
    envelope = gr.Dataframe(first[4], interactive=False,
                            label="Best strategy per level and N (the compute-optimal envelope)", elem_id="lab-envelope")
    state = gr.State(recorded)
    with gr.Accordion("Run your own lab", open=False):
        with gr.Row():
            strategies = gr.CheckboxGroup([(STRATEGY_TITLES[s], s) for s in LAB_STRATEGIES],
                                          value=list(LAB_STRATEGIES), label="Strategies", elem_id="lab-strategies")
            budgets = gr.CheckboxGroup([str(n) for n in LAB_BUDGETS], value=[str(n) for n in LAB_BUDGETS if n <= 16],
                                       label=f"N (this host allows up to {service.LIMITS.lab_max_n})", elem_id="lab-budgets")
        with gr.Row():
            levels = gr.CheckboxGroup([str(lv) for lv in LEVELS], value=[str(lv) for lv in LEVELS], label="Levels",
                                      elem_id="lab-levels")
            per_level = gr.Number(value=2, precision=0, label="Problems per level", elem_id="lab-per-level")
            seed = gr.Number(value=0, precision=0, label="Seed")
        with gr.Row():
            preset = gr.Dropdown(list(PRESETS), value=DEFAULT_PRESET, label="Models (the policy that searches)")
            large = gr.Dropdown(["none", *PRESETS], value=recorded["settings"].get("large_preset") or "none",
                                label="Greedy baseline of a second policy")
        with gr.Row():
            run_btn = gr.Button("Run the lab", variant="primary", elem_id="lab-run")
            stop_btn = gr.Button("Stop", variant="stop", elem_id="lab-stop")
            sft_btn = gr.Button("Make training data: SFT paths + Stream-of-Search traces", elem_id="lab-sft")
        sft_file = gr.File(label="SFT JSONL (verified paths), trace JSONL (one per search)", file_count="multiple",
                           interactive=False, elem_id="lab-sft-file")
    outputs = [acc, cov, tok, bars, envelope, note, state]
    raw = dict(preprocess=False)
    level.change(lab_level, [level, state], outputs[:5], api_name="lab_level", **raw)
    run_btn.click(lab, [preset, large, strategies, budgets, levels, per_level, seed, level, run_name], outputs,
                  api_name="lab", concurrency_id="lab", concurrency_limit=1, **raw)  # not a model-queue slot for
    # minutes: each of its searches takes the model slot in turn (service.stream_lab), so others' runs go between
    stop_btn.click(stop, run_name, note, api_visibility="private", queue=False, **raw)
    sft_btn.click(lab_training, [preset, large, strategies, budgets, levels, per_level, seed], sft_file,
                  api_name="lab_training", **raw)


def strategies_view() -> None:
    """What each strategy does, when it helps, and its paper."""
    gr.Markdown("Every strategy spends more compute at answer time in its own way. What each does, when it "
                "helps, and where it comes from:\n\n" + "\n\n".join(
                    f"**{s.title}** — {s.summary} *When it helps:* {s.helps} [{s.paper}]({s.link})"
                    for s in STRATEGIES.values()), elem_id="about")


def models_view() -> None:
    """The bundled models' cards, readable inside the app."""
    gr.Markdown("Three small models trained for this app, the shape of real test-time search in miniature: "
                "a small **student** that errs (the default policy), a **larger model** of the same domain, "
                "and a **PRM** built on the larger model's layers that checks the student's steps. "
                "Each card says what the model was trained on, what it cannot do, and how it measures.")
    for name, card in service.model_cards():
        with gr.Accordion(name, open=False):
            gr.Markdown(card, latex_delimiters=LATEX)


PARAM_KEYS = [(s.name, f.name) for s in STRATEGIES.values() for f in dataclasses.fields(s.params)]
demo = build_app()



def launch(**kwargs):
    """Start the server (the queue limits model work to the host's concurrency)."""
    limits = service.LIMITS
    options = dict(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                   server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")), css=CSS,
                   theme=gr.themes.Soft(), max_file_size=int(limits.max_upload_mb * 2**20),
                   state_session_capacity=limits.sessions, show_error=True)
    options.update(kwargs)
    # api_open=False: direct calls to the routes go through the queue too, so its limits always hold
    return demo.queue(default_concurrency_limit=service.queue_concurrency(), api_open=False).launch(**options)


if __name__ == "__main__":
    launch()
