"""The codebase's own rules, checked by reading the source (no Keras needed)."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _python_files(*folders):
    for folder in folders:
        yield from sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.backend_independent
def test_no_private_name_is_imported_across_modules():
    """A name with a leading underscore belongs to its module: another module importing it is
    an API that nobody declared (issue 29)."""
    found = []
    for path in _python_files("keras_music_ssl", "benchmarks"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("keras_music_ssl"):
                found += [f"{path.relative_to(ROOT)}:{node.lineno} {node.module}.{alias.name}" for alias in node.names
                          if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert not found, "private names imported across modules:\n" + "\n".join(found)
