"""Every semiseg.networks module can ship in a bundle zip: torch/monai/stdlib imports, relative module files."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

NETWORKS = Path(__file__).resolve().parents[2] / "shared" / "semiseg" / "networks"
ALLOWED = {"torch", "monai"}


def _imports(path: Path) -> list[tuple[int, int, str]]:
    """``(line, level, module)`` of every import in ``path`` (one row per ``import a, b`` name)."""
    rows = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            rows += [(node.lineno, 0, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            rows.append((node.lineno, node.level, node.module or ""))
    return rows


@pytest.mark.parametrize("path", sorted(NETWORKS.glob("*.py")), ids=lambda p: p.name)
def test_imports_only_torch_monai_stdlib_and_relative_siblings(path: Path) -> None:
    for line, level, module in _imports(path):
        root = module.split(".")[0]
        if level == 0:
            assert root in ALLOWED or root in sys.stdlib_module_names, f"{path.name}:{line} imports {module!r}"
        else:
            # a sibling, or a plain module of semiseg itself (settings, checkpoint_files), which the packager ships
            # beside it; never a package __init__ or a module deeper in another subpackage
            assert level in (1, 2), f"{path.name}:{line} imports {'.' * level}{module} from outside semiseg"
            folder = NETWORKS if level == 1 else NETWORKS.parent
            assert module == "" or ("." not in module and (folder / f"{module}.py").is_file()), (
                f"{path.name}:{line}: {'.' * level}{module} is not a module file the packager can ship")


def test_the_checker_catches_an_absolute_semiseg_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from semiseg.losses import entropy_map\n")
    assert [(1, 0, "semiseg.losses")] == _imports(bad)
    assert "semiseg" not in ALLOWED and "semiseg" not in sys.stdlib_module_names
