"""STYLE.md's layout rules that a file listing can check: small files, a short entry point."""

from __future__ import annotations

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "luminet_jax"


def _lines(path: pathlib.Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())  # sources are UTF-8 (report.py)


def test_main_is_at_most_80_lines():
    assert _lines(PACKAGE / "main.py") <= 80


def test_no_module_exceeds_400_lines_and_there_is_no_grab_bag():
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 20  # the package itself, not an empty folder
    too_long = {str(p.relative_to(ROOT)): _lines(p) for p in modules if _lines(p) > 400}
    assert not too_long
    assert not [p for p in modules if p.name in ("utils.py", "train_utils.py")]


def test_no_function_in_the_package_exceeds_80_lines():
    lengths = {
        f"{p.relative_to(ROOT)}:{node.name}": node.end_lineno - node.lineno + 1
        for p in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    assert max(lengths.values()) > 60  # the count sees whole functions, docstrings included
    assert not {name: n for name, n in lengths.items() if n > 80}


def test_benchmarks_and_experiments_follow_the_same_rules():
    files = sorted((ROOT / "benchmarks").rglob("*.py")) + sorted(
        (ROOT / "experiments").rglob("*.py")
    )
    assert len(files) > 20
    too_long = {str(p.relative_to(ROOT)): _lines(p) for p in files if _lines(p) > 400}
    assert not too_long
    assert not [p for p in files if p.name in ("utils.py", "train_utils.py")]


def _node(module: str) -> str | None:
    """The import graph's node of a `luminet_jax` module: a top-level module, or the
    subpackage folder holding it (`luminet_jax.detection.ops` -> "detection")."""
    parts = module.split(".")
    if parts[0] != "luminet_jax" or len(parts) < 2:
        return None
    return parts[1]


def _imports(path: pathlib.Path) -> set[str]:
    """Every luminet_jax module `path` imports, at the top or inside a function."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from its package
                base = ".".join(package.split(".")[: -node.level] + ([base] if base else []))
            found |= {f"{base}.{alias.name}" for alias in node.names} | {base}
    return found


def test_the_package_import_graph_has_no_cycle():
    """Nodes: each top-level module and each subpackage folder of luminet_jax/."""
    edges: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        source = _node(".".join(path.relative_to(ROOT).with_suffix("").parts))
        if source is None or source == "__init__":
            continue
        targets = {_node(m) for m in _imports(path)} - {None, source, "__init__"}
        edges.setdefault(source, set()).update(targets)
    done: set[str] = set()

    def visit(node: str, trail: list[str]) -> None:
        if node in trail:
            raise AssertionError(
                "import cycle: " + " -> ".join(trail[trail.index(node) :] + [node])
            )
        if node in done:
            return
        for target in sorted(edges.get(node, ())):
            visit(target, trail + [node])
        done.add(node)

    for node in sorted(edges):
        visit(node, [])
    assert {"tasks", "detection", "distillers", "models", "data", "train"} <= set(edges)


# "member" is DML's word (a cohort's peers: `models.cohort`, the `eval/member{k}_top1` keys);
# several seeds in one job are "runs" (`seed_runs.py`), an ensemble's parts "teachers" and
# an archive's files "files".
_COHORT_FILES = {
    "luminet_jax/models/cohort.py",
    "luminet_jax/models/__init__.py",  # builds the cohort
    "luminet_jax/distillers/dml.py",
    "luminet_jax/steps.py",  # the cohort's "member_correct*" sums
    "luminet_jax/evaluation.py",  # ... turned into "member{k}_top1"
    "luminet_jax/tasks/classification.py",  # ... passed on
    "luminet_jax/train.py",  # ... kept out of the progress line
}


def test_member_means_a_cohort_member_only():
    word = re.compile(r"(?<![A-Za-z])member", re.IGNORECASE)  # not tarfile's getmembers
    users = {
        str(p.relative_to(ROOT))
        for p in PACKAGE.rglob("*.py")
        if word.search(p.read_text(encoding="utf-8"))
    }
    assert "luminet_jax/models/cohort.py" in users  # the check sees the word where it is
    assert users <= _COHORT_FILES, sorted(users - _COHORT_FILES)
