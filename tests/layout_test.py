"""STYLE.md's layout rules that a file listing can check: small files, a short entry point."""

from __future__ import annotations

import pathlib

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
