"""The suite's own rules, checked: its folders mirror the parts, the parts that never touch a model
collect without torch, and no test sleeps to synchronise (waiting is `tests/waiting.py`'s)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
# e2e: the real models, end to end; fleet: replicas of the server behind a load balancer
PARTS = {"engine", "guard", "audit", "gateway", "upstream", "dialog", "lsp", "e2e", "fleet"}

# The sleeps that are not synchronisation, each where it is and why: the poll itself, and pauses
# that stand for something slow or paced on the other side.
SLEEPS_ALLOWED = {
    ("waiting.py", "_ticks"): "the poll interval",
    ("waiting.py", "_ticks_async"): "the poll interval",
    ("scripted_engine.py", "stream"): "the scripted engine's time per piece",
    ("lsp/test_lsp_typing.py", "events"): "the scripted server's time per piece",
    ("gateway/test_server_protocol.py", "slow_tiny_model"): "a forward hook that makes each model step slow",
    ("upstream/scripted_upstream.py", "_events"): "the scripted upstream's time per piece",
    ("dialog/test_dialog_load.py", "visitor"): "a visitor told Retry-After waits that long before asking again, as the widget does",
}


def test_every_test_module_lives_in_the_folder_of_the_part_it_tests() -> None:
    loose = sorted(p.name for p in TESTS.glob("test_*.py") if p.name != Path(__file__).name)
    assert loose == [], f"test modules outside the parts' folders: {loose}"
    folders = {p.parent.name for p in TESTS.glob("*/test_*.py")}
    assert folders == PARTS
    for part in PARTS:
        assert (TESTS / part / "__init__.py").exists(), part  # packages: test modules of the same name never collide


def _sleeps(path: Path) -> list[tuple[str, int]]:
    """(enclosing function, line) of every time.sleep / asyncio.sleep call in a module."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            if isinstance(child, ast.Call):
                f = child.func
                name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
                if name == "sleep":
                    found.append((function, child.lineno))
            visit(child, inner)

    visit(ast.parse(path.read_text()), "<module>")
    return found


def test_no_test_sleeps_to_synchronise() -> None:
    found = {}
    for path in sorted(TESTS.rglob("*.py")):
        if "golden" in path.parts or "netguard" in path.parts:
            continue
        for function, line in _sleeps(path):
            found[(path.relative_to(TESTS).as_posix(), function)] = line
    unexplained = {key: line for key, line in found.items() if key not in SLEEPS_ALLOWED}
    assert unexplained == {}, f"sleeps that look like synchronisation (wait on a condition with tests/waiting.py): {unexplained}"
    assert set(SLEEPS_ALLOWED) <= set(found), f"allowed sleeps that are gone (drop them): {set(SLEEPS_ALLOWED) - set(found)}"


def test_the_parts_that_never_touch_a_model_collect_without_torch() -> None:
    """The guard's, the audit log's and the language server's tests (and the suite's own
    fixtures) import neither torch nor the app that holds the engine."""
    code = (
        "import sys, pytest\n"
        "rc = pytest.main(['--collect-only', '-q', '-p', 'no:randomly', '-p', 'no:cacheprovider', 'tests/guard', 'tests/audit', 'tests/lsp'])\n"
        "print('COLLECTED', rc, 'torch' in sys.modules, 'server.app' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    last = [line for line in out.stdout.splitlines() if line.startswith("COLLECTED")]
    assert last == ["COLLECTED 0 False False"], out.stdout[-3000:] + out.stderr[-3000:]
