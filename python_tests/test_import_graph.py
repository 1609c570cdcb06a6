"""Imports inside ncpfast point one way: no module imports itself through others.

The graph is read from the source with `ast`, so it covers every import
statement, function-local ones included (they run on first call, and a cycle
through them is a cycle all the same). Edges:
    import ncpfast.a.b             -> ncpfast.a.b
    from .a import b               -> ncpfast.a.b where b is a module, else ncpfast.a
    from . import b                -> the submodule b where it is one, else the package
                                      when its __init__ binds b (else b is a compiled
                                      module, e.g. the extension: no edge)
Only modules of ncpfast's source tree count.
"""
import ast
import pathlib

PACKAGE_ROOT = pathlib.Path(__file__).resolve().parent.parent / "ncpfast"


def module_names(root: pathlib.Path = PACKAGE_ROOT) -> dict:
    """{dotted module name: path} of every .py file under root (packages by their __init__.py)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _resolve_relative(module: str, is_package: bool, level: int, target) -> str:
    """The absolute name of `from <level dots><target> import ...` written in `module`."""
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[:len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def top_level_names(tree: ast.Module) -> set:
    """The names a module binds at its top level (definitions, assignments, imports)."""
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names


def imports_of(module: str, path: pathlib.Path, modules: dict, bound: dict) -> list:
    """[(imported module, line)] for every import statement in the file, wherever it sits.
    bound: {package: the names its __init__ binds}."""
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = (_resolve_relative(module, is_package, node.level, node.module) if node.level
                      else node.module)
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in modules:
                    found.append((submodule, node.lineno))
                elif source not in bound or alias.name in bound[source] or alias.name == "*":
                    found.append((source, node.lineno))
    return [(name, line) for name, line in found if name in modules and name != module]


def import_graph(root: pathlib.Path = PACKAGE_ROOT):
    """({module: {imported module: first line}}, {module: path})."""
    modules = module_names(root)
    bound = {name: top_level_names(ast.parse(path.read_text(), str(path)))
             for name, path in modules.items() if path.name == "__init__.py"}
    graph = {}
    for module, path in modules.items():
        edges = graph.setdefault(module, {})
        for target, line in imports_of(module, path, modules, bound):
            edges.setdefault(target, line)
    return graph, modules


def strongly_connected_components(graph: dict) -> list:
    """Tarjan's algorithm, iterative; components as sorted lists."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            advanced = False
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = counter
                    counter += 1
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph[successor]))))
                    advanced = True
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def cycles(graph: dict) -> list:
    """The components of two or more modules that import one another."""
    return [c for c in strongly_connected_components(graph) if len(c) > 1]


def a_cycle_through(component, graph: dict) -> list:
    """One closed import path inside the component: [m0, m1, ..., m0]."""
    members = set(component)
    start = component[0]
    parents, frontier = {start: None}, [start]
    while frontier:  # breadth first from start until an edge leads back to it
        following = []
        for node in frontier:
            for successor in sorted(graph[node]):
                if successor == start:
                    path = [node]  # back from node to start, then reversed
                    while parents[path[-1]] is not None:
                        path.append(parents[path[-1]])
                    return path[::-1] + [start]
                if successor in members and successor not in parents:
                    parents[successor] = node
                    following.append(successor)
        frontier = following
    raise AssertionError(f"no cycle through {component}")


def describe(cycle, graph: dict, modules: dict) -> str:
    steps = []
    for importer, imported in zip(cycle, cycle[1:]):
        path = modules[importer].relative_to(PACKAGE_ROOT.parent)
        steps.append(f"  {importer} imports {imported} ({path}:{graph[importer][imported]})")
    return " -> ".join(cycle) + "\n" + "\n".join(steps)


def test_no_import_cycles():
    graph, modules = import_graph()
    found = cycles(graph)
    assert not found, "import cycles inside ncpfast:\n" + "\n".join(
        describe(a_cycle_through(c, graph), graph, modules) for c in found)


def test_the_graph_sees_every_kind_of_import(tmp_path):
    """A made-up package whose only cycle runs through a function-local
    `from . import b`, next to imports that must not count as edges."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from .b import helper\n")
    (package / "sub" / "__init__.py").write_text("e = 1\n")
    (package / "a.py").write_text("import os\nfrom .sub import c\nfrom . import _compiled\n")
    (package / "b.py").write_text("from .sub.c import helper\n")
    (package / "sub" / "c.py").write_text("def helper():\n    from .. import b\n    return b\n")
    (package / "sub" / "d.py").write_text("from ..a import something\nfrom . import e\nfrom .. import helper\n")
    graph, _ = import_graph(package)
    assert graph["pkg.a"] == {"pkg.sub.c": 2}  # _compiled: not bound by pkg's __init__, no source
    assert graph["pkg.sub.c"] == {"pkg.b": 2} and graph["pkg.b"] == {"pkg.sub.c": 1}
    assert graph["pkg.sub.d"] == {"pkg.a": 1, "pkg.sub": 2, "pkg": 3}  # e, helper: bound by the __init__s
    assert graph["pkg"] == {"pkg.b": 1}
    assert cycles(graph) == [["pkg.b", "pkg.sub.c"]]
    assert a_cycle_through(["pkg.b", "pkg.sub.c"], graph) == ["pkg.b", "pkg.sub.c", "pkg.b"]


# Layers: a package may not import from the packages or modules named for it.
# ncp/ is NCP's mathematics and models/ the networks: no config, run directories,
# training loop, command lines, experiments or pipeline (which orchestrates them).
# The config sits above them (its sampler section is ncp's SamplerConfig) and
# below the steps on run directories (training, stage2, evaluation,
# trained_run); above those the pipeline, and on top the programs (cli, experiments).
_PROGRAMS = ("ncpfast.cli", "ncpfast.experiments")
_STEPS_ABOVE = (*_PROGRAMS, "ncpfast.pipeline")
FORBIDDEN_IMPORTS = {
    "ncpfast.ncp": ("ncpfast.config", "ncpfast.training", "ncpfast.cli", "ncpfast.experiments", "ncpfast.pipeline",
                    "ncpfast.evaluation", "ncpfast.run_dir", "ncpfast.stage2", "ncpfast.trained_run"),
    "ncpfast.models": ("ncpfast.config", "ncpfast.training", "ncpfast.cli", "ncpfast.experiments",
                       "ncpfast.pipeline", "ncpfast.evaluation", "ncpfast.run_dir", "ncpfast.stage2",
                       "ncpfast.trained_run"),
    "ncpfast.config": (*_STEPS_ABOVE, "ncpfast.training", "ncpfast.evaluation", "ncpfast.stage2",
                       "ncpfast.trained_run", "ncpfast.run_dir"),
    "ncpfast.training": (*_STEPS_ABOVE, "ncpfast.evaluation", "ncpfast.stage2"),
    "ncpfast.trained_run": _STEPS_ABOVE,
    "ncpfast.stage2": (*_STEPS_ABOVE, "ncpfast.evaluation"),
    "ncpfast.evaluation": _STEPS_ABOVE,
    "ncpfast.pipeline": _PROGRAMS,
    "ncpfast.ops": ("ncpfast.ncp", "ncpfast.training", "ncpfast.cli", "ncpfast.experiments", "ncpfast.pipeline"),
    "ncpfast.nn": ("ncpfast.ncp", "ncpfast.training", "ncpfast.cli", "ncpfast.experiments", "ncpfast.pipeline"),
}


def layer_violations(graph: dict, rules: dict = FORBIDDEN_IMPORTS) -> list:
    """(importer, imported, line) for every import a rule forbids."""
    found = []
    for importer, edges in graph.items():
        for layer, forbidden in rules.items():
            if importer != layer and not importer.startswith(layer + "."):
                continue
            for target, line in edges.items():
                if any(target == f or target.startswith(f + ".") for f in forbidden):
                    found.append((importer, target, line))
    return sorted(found)


def test_layers_import_downwards_only():
    graph, _ = import_graph()
    found = layer_violations(graph)
    assert not found, "imports against the layering:\n" + "\n".join(
        f"{importer} imports {target} (line {line})" for importer, target, line in found)


def test_layer_check_finds_a_forbidden_import():
    graph = {"ncpfast.ncp.flat": {"ncpfast.training.config": 3, "ncpfast.runtime": 4}, "ncpfast.cli.train": {
        "ncpfast.ncp.flat": 1}}
    assert layer_violations(graph) == [("ncpfast.ncp.flat", "ncpfast.training.config", 3)]
