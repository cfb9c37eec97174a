"""The package's module boundaries: no module reaches into another's underscored names."""

from __future__ import annotations

import ast
import pathlib

SRC = pathlib.Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "thunkscope"

# (module, private name of another thunkscope module) read on purpose, with the reason.
ALLOWED = {
    # The instrumentor convention of opentelemetry-instrumentation: `package._instruments`.
    ("thunkscope/instrumentation/_mellea.py", "thunkscope.instrumentation.package._instruments"),
}


def _module_of(dotted: str) -> bool:
    path = SRC / dotted.replace(".", "/")
    return path.with_suffix(".py").exists() or path.is_dir()


def private_reads() -> set[tuple[str, str]]:
    """Every (module, other module's underscored name) the package's source reads."""
    found = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        where = str(path.relative_to(SRC))
        tree = ast.parse(path.read_text())
        aliases: dict[str, str] = {}
        for node in ast.walk(tree):
            if not (
                isinstance(node, ast.ImportFrom) and (node.module or "").startswith("thunkscope")
            ):
                continue
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if _module_of(full):
                    aliases[alias.asname or alias.name] = full
                elif alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.add((where, full))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                found.add((where, f"{aliases[node.value.id]}.{node.attr}"))
    return found


class TestBoundaries:
    def test_no_private_reach_ins(self) -> None:
        """Only the listed, explained reads of another module's private names exist."""
        assert private_reads() == ALLOWED

    def test_stream_privates_stay_in_stream(self) -> None:
        """No module outside _stream.py uses an underscored name of _stream.py."""
        assert not any(name.startswith("thunkscope._stream._") for _, name in private_reads())
