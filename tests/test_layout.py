"""The architecture as the tree shows it (docs/ARCHITECTURE.md): one folder per stage, shared code in named
folders, stages that do not import each other, no import cycles, short modules, and nothing that points
outside the repository."""
import ast
import os
import re
import tomllib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPONENTS = os.path.join(ROOT, "components")
STAGES = ("ingest", "tokenize", "pretrain", "finetune", "evaluate", "export", "register")
SHARED = ("core", "io", "tasks", "training", "inference", "evaluation", "registry")
MAX_MODULE_LINES = 300


def modules() -> dict[str, str]:
    """{dotted module name: path} for the installed package's sources (components/ and pipelines/)."""
    out = {}
    for top, package in (("components", "domaintune.components"), ("pipelines", "domaintune.pipelines")):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if name.endswith(".py"):
                    rel = os.path.relpath(os.path.join(folder, name), os.path.join(ROOT, top))[:-3].replace(os.sep, ".")
                    rel = rel.removesuffix(".__init__").removesuffix("__init__")
                    out[f"{package}.{rel}".rstrip(".")] = os.path.join(folder, name)
    return out


def imports(path: str, module: str, top_level_only: bool) -> set[str]:
    """The domaintune modules PATH imports (module level only, or anywhere)."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {name for name in found if name.startswith("domaintune.")}


def test_one_folder_per_stage_with_its_logic_and_its_shell():
    for stage in STAGES:
        for name in ("stage.py", "op.py"):
            assert os.path.isfile(os.path.join(COMPONENTS, stage, name)), f"components/{stage}/{name}"
    for folder in SHARED:
        assert os.path.isfile(os.path.join(COMPONENTS, folder, "__init__.py")), f"components/{folder}/"
    loose = [n for n in os.listdir(COMPONENTS) if n.endswith(".py") and n != "__init__.py"]
    assert not loose, f"modules directly under components/ (put them in a folder named for what they hold): {loose}"


def test_stages_do_not_import_each_other():
    for module, path in modules().items():
        parts = module.split(".")
        if len(parts) < 3 or parts[1] != "components" or parts[2] not in STAGES:
            continue
        for name in imports(path, module, top_level_only=False):
            other = name.split(".")
            if len(other) > 2 and other[2] in STAGES and other[2] != parts[2]:
                pytest.fail(f"{module} imports {name}: stages share code through the shared folders only")


def test_no_import_cycles():
    mods = modules()
    graph = {m: {i for i in imports(p, m, top_level_only=True) if i in mods and i != m} for m, p in mods.items()}
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


@pytest.mark.parametrize("path", sorted(modules().values()), ids=lambda p: os.path.relpath(p, ROOT))
def test_modules_are_short(path):
    lines = sum(1 for _ in open(path, encoding="utf-8"))
    assert lines <= MAX_MODULE_LINES, f"{os.path.relpath(path, ROOT)} has {lines} lines (split it by what it holds)"


def test_pyproject_lists_every_package():
    config = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))
    listed = set(config["tool"]["setuptools"]["packages"])
    for folder, _, files in os.walk(COMPONENTS):
        if "__init__.py" in files:
            rel = os.path.relpath(folder, COMPONENTS)
            name = "domaintune.components" + ("" if rel == "." else "." + rel.replace(os.sep, "."))
            assert name in listed, f"{name} is missing from pyproject.toml's packages: a wheel would lack it"


def test_pyproject_ships_every_template():
    config = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))
    data = config["tool"]["setuptools"]["package-data"]
    for folder, _, files in os.walk(COMPONENTS):
        if os.path.basename(folder) == "templates" and any(n.endswith(".j2") for n in files):
            package = "domaintune.components." + os.path.relpath(os.path.dirname(folder), COMPONENTS).replace(os.sep, ".")
            assert "templates/*.j2" in data.get(package, []), f"{package}'s templates are not package data"


def test_nothing_points_outside_the_repository():
    """A user's clone has no ../shared: the design lives in docs/ARCHITECTURE.md."""
    pattern = re.compile(r"DESIGN\.md|STACK\.md|\.\./shared/(?!data)")
    offenders = []
    for top in ("components", "pipelines", "docker", "k8s", "docs", "examples", "README.md"):
        base = os.path.join(ROOT, top)
        paths = [base] if os.path.isfile(base) else [os.path.join(f, n) for f, _, ns in os.walk(base) for n in ns]
        for path in paths:
            if path.endswith((".py", ".md", ".yaml", ".yml", ".j2", ".txt")) or os.path.basename(path).startswith("Dockerfile"):
                for number, line in enumerate(open(path, encoding="utf-8", errors="replace"), 1):
                    if pattern.search(line):
                        offenders.append(f"{os.path.relpath(path, ROOT)}:{number}")
    assert not offenders, f"references to files outside the repository: {offenders}"
