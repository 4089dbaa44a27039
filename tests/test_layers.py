"""The layers flow one way: no import cycle in rlexp/ or analysis/ (function-level imports
included), and analysis reads tracking output, not the training code."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imports() -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its body (a submodule implies its packages)."""
    mods = {}
    for pkg in ("rlexp", "analysis"):
        for f in (ROOT / pkg).rglob("*.py"):
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            mods[name] = f
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module
                           for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                parts = t.split(".")
                for i in range(1, len(parts) + 1):
                    p = ".".join(parts[:i])
                    if p in mods and p != m and not m.startswith(p + "."):
                        edges[m].add(p)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(u: str) -> None:
        state[u] = 1
        stack.append(u)
        for v in sorted(edges[u]):
            if state.get(v) == 1:
                found.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    return found


def test_no_import_cycles():
    edges = _imports()
    assert len(edges) > 30
    assert _cycles(edges) == []


def test_the_cycle_check_can_fail():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_analysis_reads_tracking_output_only():
    allowed = {"rlexp", "rlexp.completion", "rlexp.runs", "rlexp.tracking", "rlexp.metrics", "rlexp.config", "rlexp.survival"}
    for m, targets in _imports().items():
        if m.startswith("analysis"):
            assert {t for t in targets if t.startswith("rlexp")} <= allowed, m


# config -> envs / nets / buffers / maths -> algorithms -> loops -> train -> sweep / CLI
LOOP_AND_ABOVE = {"rlexp.loops", "rlexp.onpolicy", "rlexp.train", "rlexp.cli", "rlexp.sweep", "rlexp.runs"}


def test_algorithms_do_not_import_the_loops_or_anything_above():
    """An algorithm is a module the loops drive: it imports the layers below it (nets, optim, buffer,
    pg, metrics, envs, config), never the loops. ``sb3`` is the exception: SB3 runs its own loop, so its
    adapter is handed the members and reports through them."""
    edges = _imports()
    algos = [m for m in edges if m.startswith("rlexp.algos.") and m not in ("rlexp.algos.registry", "rlexp.algos.sb3")]
    assert len(algos) >= 5
    for m in algos:
        assert not {t for t in edges[m] if any(t == x or t.startswith(x + ".") for x in LOOP_AND_ABOVE)}, m
    below = {"rlexp.config", "rlexp.envs", "rlexp.nets", "rlexp.optim", "rlexp.buffer", "rlexp.pg", "rlexp.metrics",
             "rlexp.schedules"}
    for m in below:
        assert not {t for t in edges[m] if t.startswith("rlexp.algos") or t in LOOP_AND_ABOVE}, m
