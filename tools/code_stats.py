"""Size and house-rule figures of a source tree (the before/after table of the restructure).

    python tools/code_stats.py [SRC_DIR]        # default src/glocalk

Prints: modules, median and largest module (lines), longest function, functions over 60 lines
or 8 parameters, imports inside functions (optional dependencies listed apart) and private
names imported from another module. tests/test_house_rules.py enforces the same figures with
these functions.
"""

from __future__ import annotations

import ast
import statistics
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MAX_LINES = 60
MAX_PARAMS = 8
# Optional dependencies may be imported where they are used, so the core works without them.
OPTIONAL = ("optuna", "matplotlib", "fastapi", "uvicorn", "pydantic", "threadpoolctl")

FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef


@dataclass
class Function:
    where: str  # path:line
    name: str
    lines: int
    params: int
    qualname: str = ""  # Class.method, outer.inner: stable across edits, unlike the line

    @property
    def key(self) -> str:
        """``path::qualname``, e.g. ``glocalk/cli/fit.py::cmd_fit``."""
        return f"{self.where.rsplit(':', 1)[0]}::{self.qualname}"


def _walk_defs(node: ast.AST, prefix: str = "") -> Iterator[tuple[str, FunctionNode]]:
    """(qualified name, node) of every function and method below ``node``, nested ones included."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, FunctionNode):
            yield prefix + child.name, child
            yield from _walk_defs(child, f"{prefix}{child.name}.")
        elif isinstance(child, ast.ClassDef):
            yield from _walk_defs(child, f"{prefix}{child.name}.")
        else:
            yield from _walk_defs(child, prefix)


def functions(path: Path, root: Path) -> list[Function]:
    """Every function and method of a module with its length (lines) and parameter count (self excluded)."""
    tree = ast.parse(path.read_text())
    out = []
    for qualname, node in _walk_defs(tree):
        a = node.args
        names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
        params = len([n for n in names if n not in ("self", "cls")])
        out.append(Function(f"{path.relative_to(root)}:{node.lineno}", node.name,
                            node.end_lineno - node.lineno + 1, params, qualname))
    return out


def inner_imports(path: Path, root: Path) -> list[tuple[str, str]]:
    """(location, module) of every import statement inside a function body."""
    return sorted({(where, module) for where, _, module in inner_imports_by_function(path, root)})


def inner_imports_by_function(path: Path, root: Path) -> list[tuple[str, str, str]]:
    """(location, ``path::function qualname``, module) of every import statement inside a function body."""
    tree = ast.parse(path.read_text())
    rel = path.relative_to(root)
    out = set()
    for qualname, fn in _walk_defs(tree):
        for node in ast.walk(fn):
            if isinstance(node, ast.Import):
                out |= {(f"{rel}:{node.lineno}", f"{rel}::{qualname}", a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                out.add((f"{rel}:{node.lineno}", f"{rel}::{qualname}", node.module or "."))
    return sorted(out)


def module_name(path: Path, root: Path) -> str:
    """``glocalk/cli/app.py`` -> ``glocalk.cli.app`` (a package's ``__init__`` is the package)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def private_imports(path: Path, root: Path) -> list[tuple[str, str]]:
    """(location, ``module.name``) of every private name (``_x``) imported from ANOTHER module of the tree."""
    here = module_name(path, root)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    ours = {p.name for p in root.iterdir()}  # the top-level packages of the tree (glocalk)
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:  # relative: from .x import _y
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        if source.split(".")[0] not in ours or source == here:
            continue
        out += [(f"{path.relative_to(root)}:{node.lineno}", f"{source}.{a.name}") for a in node.names
                if a.name.startswith("_") and not a.name.startswith("__")]
    return out


def is_optional(module: str) -> bool:
    return module.split(".")[0] in OPTIONAL


def modules(src: Path) -> list[Path]:
    """The tree's Python files, sorted."""
    return sorted(src.rglob("*.py"))


def report(src: Path) -> str:
    root = src.parent
    mods = modules(src)
    sizes = {str(p.relative_to(root)): len(p.read_text().splitlines()) for p in mods}
    non_trivial = [n for n in sizes.values() if n > 20]
    fns = [f for p in mods for f in functions(p, root)]
    longest = max(fns, key=lambda f: f.lines)
    largest = max(sizes, key=sizes.get)
    long_fns = [f for f in fns if f.lines > MAX_LINES]
    many = [f for f in fns if f.params > MAX_PARAMS]
    imports = [i for p in mods for i in inner_imports(p, root)]
    private = [i for p in mods for i in private_imports(p, root)]
    lines = [
        f"modules: {len(mods)} ({len(non_trivial)} over 20 lines), {sum(sizes.values())} lines",
        f"median module: {statistics.median(non_trivial):.0f} lines (modules over 20 lines)",
        f"largest module: {largest} ({sizes[largest]} lines)",
        f"longest function: {longest.name} at {longest.where} ({longest.lines} lines)",
        f"functions over {MAX_LINES} lines: {len(long_fns)}"
        + "".join(f"\n  {f.where} {f.name} ({f.lines})" for f in long_fns),
        f"functions over {MAX_PARAMS} parameters: {len(many)}"
        + "".join(f"\n  {f.where} {f.name} ({f.params})" for f in many),
        f"imports inside functions: {len([i for i in imports if not is_optional(i[1])])} "
        f"(+ {len([i for i in imports if is_optional(i[1])])} of optional dependencies)"
        + "".join(f"\n  {w} {m}" for w, m in imports if not is_optional(m)),
        f"private names imported from another module: {len(private)}"
        + "".join(f"\n  {w} {name}" for w, name in private),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(Path(sys.argv[1] if len(sys.argv) > 1 else "src/glocalk")))
