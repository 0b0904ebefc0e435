"""House rules made executable (../shared/STYLE.md): function size, imports inside functions, private names
across modules, and a library that changes no global state when imported.

The figures come from tools/code_stats.py (the same code that prints the before/after table). Today's
offenders are listed in the ALLOWLISTs below with their current size: these lists may only shrink.
A new offender, or an allowlisted one that grows, fails; so does an entry that no longer offends
(delete it, so the room it held cannot be reused).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "glocalk"
ROOT = SRC.parent


def _load_code_stats():
    spec = importlib.util.spec_from_file_location("code_stats", REPO / "tools" / "code_stats.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


code_stats = _load_code_stats()

# ALLOWLISTS: may only shrink. Keys are path::qualified name (line numbers move; names do not).
# Functions over code_stats.MAX_LINES (60) lines: their current length.
LONG_FUNCTIONS = {
}
# Functions over code_stats.MAX_PARAMS (8) parameters, self/cls excluded: their current count.
MANY_PARAMETERS = {
    # Kept on purpose: scikit-learn's estimator contract (get_params / set_params / clone) needs every
    # constructor argument as a named keyword, and model.json's "estimator" entry stores them by name.
    "glocalk/estimator.py::GLocalKRecommender.__init__": 14,  # + fallback, budget (issue 10)
    # Kept on purpose: issue 11's contract mirrors SciPy's fmin_l_bfgs_b options by name (maxiter, m, factr,
    # pgtol, maxls, maxfun) so one can be checked against the other; issue 13's sharding adds `space`.
    "glocalk/optim/__init__.py::minimize_lbfgsb": 9,
}
# Imports inside functions of modules that are not optional dependencies (code_stats.OPTIONAL may be).
INNER_IMPORTS = set()
# Private names (_x) imported from another module: (importing file, module.name).
PRIVATE_IMPORTS = set()
# Global state that importing glocalk changes (none since sparse.py scopes its warnings filter).
GLOBAL_STATE_CHANGES: set[str] = set()


def _functions() -> list:
    return [f for p in code_stats.modules(SRC) for f in code_stats.functions(p, ROOT)]


def _check_sizes(measured: dict[str, int], allowlist: dict[str, int], limit: int, what: str) -> list[str]:
    problems = []
    for key, size in sorted(measured.items()):
        if size > limit and key not in allowlist:
            problems.append(f"{key}: {size} {what} (limit {limit}); split it (group options in a dataclass)")
        elif key in allowlist and size > allowlist[key]:
            problems.append(f"{key}: grew to {size} {what} (allowlisted at {allowlist[key]}, limit {limit})")
    for key in sorted(allowlist):
        if measured.get(key, 0) <= limit:
            problems.append(f"{key}: no longer over {limit} {what} (or gone): delete its ALLOWLIST entry")
    return problems


def test_the_measure_counts_lines_and_parameters(tmp_path):
    """code_stats on a module written here: known lengths and parameter counts, self excluded, nesting named."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "m.py").write_text("class A:\n    def f(self, a, b, *, c):\n        return 1\n\n\n"
                              "def g(a, b, c, d, e, f, g, h, i):\n    def inner():\n        import json\n"
                              "        return json\n    return inner\n")
    found = {f.key: (f.lines, f.params) for f in code_stats.functions(pkg / "m.py", tmp_path)}
    assert found == {"pkg/m.py::A.f": (2, 3), "pkg/m.py::g": (5, 9), "pkg/m.py::g.inner": (3, 0)}
    assert code_stats.inner_imports_by_function(pkg / "m.py", tmp_path) == [
        ("pkg/m.py:8", "pkg/m.py::g", "json"), ("pkg/m.py:8", "pkg/m.py::g.inner", "json")]


def test_no_function_over_60_lines():
    measured = {f.key: f.lines for f in _functions()}
    assert _check_sizes(measured, LONG_FUNCTIONS, code_stats.MAX_LINES, "lines") == []


def test_no_function_over_8_parameters():
    measured = {f.key: f.params for f in _functions()}
    assert _check_sizes(measured, MANY_PARAMETERS, code_stats.MAX_PARAMS, "parameters") == []


def test_no_imports_inside_functions_except_optional_dependencies():
    found = {(fn, module) for p in code_stats.modules(SRC)
             for _, fn, module in code_stats.inner_imports_by_function(p, ROOT) if not code_stats.is_optional(module)}
    assert sorted(found - INNER_IMPORTS) == [], "import these at the top of the module"
    assert sorted(INNER_IMPORTS - found) == [], "gone: delete their ALLOWLIST entries"


def test_no_private_names_across_modules():
    found = {(where.rsplit(":", 1)[0], name) for p in code_stats.modules(SRC)
             for where, name in code_stats.private_imports(p, ROOT)}
    assert sorted(found - PRIVATE_IMPORTS) == [], "make the name public (and documented) or keep it in its module"
    assert sorted(PRIVATE_IMPORTS - found) == [], "gone: delete their ALLOWLIST entries"


# Run in a fresh interpreter: which global state does importing glocalk and every submodule change?
# Third-party dependencies are imported first, so their own import-time changes are not counted.
PROBE = """
import importlib, json, pkgutil, random, warnings
import numpy as np, torch
for dep in ("scipy.sparse", "scipy.optimize", "pandas", "pyarrow", "h5py", "tqdm", "safetensors.torch"):
    importlib.import_module(dep)

def state():
    return {"warnings.filters": repr(warnings.filters), "torch.get_num_threads": torch.get_num_threads(),
            "torch.get_num_interop_threads": torch.get_num_interop_threads(),
            "torch RNG state": torch.random.get_rng_state().tolist(), "numpy RNG state": repr(np.random.get_state()),
            "random RNG state": repr(random.getstate()), "torch.get_default_dtype": str(torch.get_default_dtype()),
            "torch.is_grad_enabled": torch.is_grad_enabled()}

before = state()
filters = list(warnings.filters)
import glocalk
for m in pkgutil.walk_packages(glocalk.__path__, "glocalk."):
    if not m.name.endswith("__main__"):
        importlib.import_module(m.name)
after = state()
print(json.dumps({"changed": sorted(k for k in after if after[k] != before[k]),
                  "new filters": [repr(f) for f in warnings.filters if f not in filters]}))
"""


def test_importing_glocalk_changes_no_global_state():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=300)
    found = json.loads(out.stdout.strip().splitlines()[-1])
    changed = set(found["changed"])
    assert sorted(changed - GLOBAL_STATE_CHANGES) == [], f"a library changes no global state on import: {found}"
    assert sorted(GLOBAL_STATE_CHANGES - changed) == [], "no longer changed: delete its ALLOWLIST entry"


@pytest.mark.parametrize("measured, allowlist, expected", [
    ({"f": 60}, {}, []),
    ({"f": 61}, {}, ["f: 61 lines (limit 60); split it (group options in a dataclass)"]),
    ({"f": 70}, {"f": 70}, []),
    ({"f": 65}, {"f": 70}, []),
    ({"f": 71}, {"f": 70}, ["f: grew to 71 lines (allowlisted at 70, limit 60)"]),
    ({"f": 60}, {"f": 70}, ["f: no longer over 60 lines (or gone): delete its ALLOWLIST entry"]),
    ({}, {"f": 70}, ["f: no longer over 60 lines (or gone): delete its ALLOWLIST entry"]),
])
def test_the_allowlist_only_shrinks(measured, allowlist, expected):
    assert _check_sizes(measured, allowlist, 60, "lines") == expected
