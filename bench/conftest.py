"""pytest options of the benchmarks. The `device` fixture is the repository's
(../conftest.py); the measuring helpers are in measure.py.

--bench-compile none|one|all chooses the torch.compile variants: each costs a
compile per shape (tens of seconds), so by default ("one") only the variants a
module names in COMPILE_REFERENCE run (the cells: one cell size, one mode), enough
for one fused-vs-compile comparison; "all" runs every one, "none" none.
"""

COMPILE_CHOICES = ("none", "one", "all")


def pytest_addoption(parser):
    parser.addoption("--bench-compile", choices=COMPILE_CHOICES, default="one",
                     help="torch.compile variants to run: none, one (each module's COMPILE_REFERENCE; "
                          "the default) or all")


def _is_compile_reference(item):
    """Whether item's parameters match its module's COMPILE_REFERENCE ({parameter: value})."""
    reference = getattr(item.module, "COMPILE_REFERENCE", None)
    params = item.callspec.params
    return reference is not None and all(params.get(k) == v for k, v in reference.items())


def pytest_collection_modifyitems(config, items):
    mode = config.getoption("--bench-compile")
    if mode == "all":
        return
    kept, dropped = [], []
    for item in items:
        compiled = hasattr(item, "callspec") and item.callspec.params.get("impl") == "torch.compile"
        if compiled and (mode == "none" or not _is_compile_reference(item)):
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
