"""Layers point down (DESIGN.md): bench -> flows -> registry -> hydraopt.formats; hydraopt alone.

Read statically from every import statement of the four packages (function-local ones included), and
checked again at run time for what importing a package actually loads.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hydraopt", "registry", "flows", "bench")
BENCH_ONLY = {"mlflow", "moto", "psutil", "matplotlib", "httpx"}
# package -> (what of ours it may import, outside modules it must not import)
RULES = {
    "hydraopt": ({"hydraopt"}, {"prefect", "sqlalchemy", "boto3", "fastapi"} | BENCH_ONLY),
    "registry": ({"registry", "hydraopt.formats"}, {"prefect", "torch", "safetensors"} | BENCH_ONLY),
    "flows": ({"flows", "registry", "hydraopt"}, BENCH_ONLY),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> every module it imports (ours by full name, others by their top-level name)."""
    modules = {module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module)
                imported |= {f"{node.module}.{a.name}" for a in node.names} & modules.keys()
        graph[name] = {m if m in modules else m.split(".")[0] for m in imported}
    return graph


def allowed(target: str, prefixes: set[str]) -> bool:
    return any(target == prefix or target.startswith(prefix + ".") for prefix in prefixes)


@pytest.mark.parametrize("package", sorted(RULES))
def test_a_package_imports_only_the_layers_below_it(package):
    ours, forbidden = RULES[package]
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        if module.split(".")[0] == package
        for target in targets
        if (target.split(".")[0] in PACKAGES and not allowed(target, ours)) or target in forbidden
    )
    assert wrong == []


def test_no_module_imports_itself_through_others():
    graph = import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:  # Tarjan's strongly connected components
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in graph[module] & graph.keys():
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while not component or component[-1] != module:
                component.append(stack.pop())
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    assert cycles == []


def loaded_roots(code: str) -> list[str]:
    probe = f"{code}\nimport sys\nprint(sorted({{m.split('.')[0] for m in sys.modules}}))"
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    return ast.literal_eval(run.stdout.strip())


def test_hydraopt_loads_no_orchestration_database_or_hub_code():
    roots = loaded_roots("import hydraopt, hydraopt.cli")
    assert sorted(set(roots) & {"prefect", "sqlalchemy", "registry", "flows", "bench", "peft", "transformers",
                                "boto3"}) == []  # fmt: skip


def test_the_bundle_layout_loads_no_torch():
    assert "torch" not in loaded_roots("import hydraopt.formats.layout")


def test_registry_loads_no_prefect_torch_or_flows():
    roots = loaded_roots("import registry, registry.api, registry.cli, registry.http, registry.store")
    assert sorted(set(roots) & {"prefect", "torch", "flows", "bench", "boto3"}) == []
