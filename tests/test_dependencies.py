"""Every main dependency in pyproject.toml is imported by flint (nothing declared and unused)."""

import importlib.metadata
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Used without an import, and why.
NOT_IMPORTED = {"ninja": "torch.utils.cpp_extension runs it to build the native CPU kernels (flint.engine.kernels)"}


def test_every_declared_dependency_is_imported():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    modules_of: dict[str, set[str]] = {}
    for module, dists in importlib.metadata.packages_distributions().items():
        for dist in dists:
            modules_of.setdefault(re.sub(r"[-_.]+", "-", dist).lower(), set()).add(module)
    source = "\n".join(p.read_text() for p in (ROOT / "services" / "flint").rglob("*.py"))
    unused = []
    for dep in deps:
        name = re.sub(r"[-_.]+", "-", re.split(r"[\[<>=!~; ]", dep, maxsplit=1)[0]).lower()
        modules = modules_of.get(name, set()) - {"google"}        # protobuf: google.protobuf, not all of google
        if name == "protobuf":
            modules = {"google.protobuf"}
        if name == "opentelemetry-api":
            modules = {"opentelemetry"}
        if name in NOT_IMPORTED:
            continue
        assert modules, f"{dep} is not installed"
        if not any(re.search(rf"^\s*(?:import|from)\s+{re.escape(m)}\b", source, re.M) for m in modules):
            unused.append(dep)
    assert not unused, f"declared but never imported: {unused}"
