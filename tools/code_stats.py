"""Size and house-rule figures of a source tree (the before/after table of the restructure).

    python tools/code_stats.py [SRC_DIR]        # default src/glocalk

Prints: modules, median and largest module (lines), longest function, functions over 60 lines
or 8 parameters, and imports inside functions (optional dependencies listed apart).
"""

from __future__ import annotations

import ast
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

MAX_LINES = 60
MAX_PARAMS = 8
# Optional dependencies may be imported where they are used, so the core works without them.
OPTIONAL = ("optuna", "matplotlib", "fastapi", "uvicorn", "pydantic")


@dataclass
class Function:
    where: str
    name: str
    lines: int
    params: int


def functions(path: Path, root: Path) -> list[Function]:
    """Every function and method of a module with its length (lines) and parameter count (self excluded)."""
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            a = node.args
            names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
            params = len([n for n in names if n not in ("self", "cls")])
            out.append(Function(f"{path.relative_to(root)}:{node.lineno}", node.name,
                                node.end_lineno - node.lineno + 1, params))
    return out


def inner_imports(path: Path, root: Path) -> list[tuple[str, str]]:
    """(location, module) of every import statement inside a function body."""
    tree = ast.parse(path.read_text())
    out = []
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.Import):
                out += [(f"{path.relative_to(root)}:{node.lineno}", a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                out.append((f"{path.relative_to(root)}:{node.lineno}", node.module or "."))
    return sorted(set(out))


def is_optional(module: str) -> bool:
    return module.split(".")[0] in OPTIONAL


def report(src: Path) -> str:
    root = src.parent
    mods = sorted(p for p in src.rglob("*.py"))
    sizes = {str(p.relative_to(root)): len(p.read_text().splitlines()) for p in mods}
    non_trivial = [n for n in sizes.values() if n > 20]
    fns = [f for p in mods for f in functions(p, root)]
    longest = max(fns, key=lambda f: f.lines)
    largest = max(sizes, key=sizes.get)
    long_fns = [f for f in fns if f.lines > MAX_LINES]
    many = [f for f in fns if f.params > MAX_PARAMS]
    imports = [i for p in mods for i in inner_imports(p, root)]
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
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(Path(sys.argv[1] if len(sys.argv) > 1 else "src/glocalk")))
