"""A Config as a tree of sections: its leaves by dotted path ("stage2.epochs"),
a Config made from nested or dotted values (every section checked as it is
made), and config.json written and read, format-1 (flat) files included."""
import dataclasses
import json
import typing
from collections.abc import Iterator
from typing import NamedTuple, Optional

from ..atomic_files import atomic_write
from .options import Option, option_of
from .sections import EXTERNAL_OPTIONS, Config

# config.json's format: 2 is nested by section; 1 (no "config_format" key) was one
# flat object whose names SECTION fields keep as Option.legacy.
CONFIG_FORMAT = 2


class Leaf(NamedTuple):
    path: str                  # "stage2.epochs"
    field: dataclasses.Field
    kind: type                 # the declared type (Optional[X] as X)
    option: Optional[Option]   # None: no flag and no legacy name


def _section_types(cls) -> dict:
    return typing.get_type_hints(cls)


def _plain(kind):
    """X of Optional[X]."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    return args[0] if typing.get_origin(kind) is typing.Union and len(args) == 1 else kind


def sections(cls=Config, prefix: str = "") -> Iterator[tuple[str, type]]:
    """(dotted path, class) of every section under cls, depth first, cls's own first."""
    yield prefix, cls
    hints = _section_types(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from sections(hints[f.name], f"{prefix}.{f.name}" if prefix else f.name)


def leaves(cls=Config, prefix: str = "") -> Iterator[Leaf]:
    """Every value field under cls, by dotted path, in declaration order."""
    hints = _section_types(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(hints[f.name]):
            yield from leaves(hints[f.name], path)
        else:
            yield Leaf(path, f, _plain(hints[f.name]), option_of(f, EXTERNAL_OPTIONS.get(cls)))


def to_dotted(config) -> dict:
    """{dotted path: value} of every leaf."""
    out = {}
    for leaf in leaves(type(config)):
        value = config
        for part in leaf.path.split("."):
            value = getattr(value, part)
        out[leaf.path] = value
    return out


def build(cls, values: dict, where: str = ""):
    """An instance of section cls from nested values (missing: the defaults);
    unknown names are an error that names them."""
    if not isinstance(values, dict):
        raise ValueError(f"config section {where or 'top'}: expected an object, got {type(values).__name__}")
    hints = _section_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"config section {where or 'top'}: unknown setting(s) {unknown}; it has {sorted(names)}")
    kwargs = {}
    for name, value in values.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            kwargs[name] = build(kind, value, f"{where}.{name}" if where else name)
        else:
            kwargs[name] = _coerce(value, kind)
    return cls(**kwargs)


def _coerce(value, kind):
    """JSON's numbers as the declared type (1 for a float field stays exact)."""
    plain = _plain(kind)
    if value is None or plain not in (int, float):
        return value
    if plain is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def nest(dotted: dict) -> dict:
    """{"a.b": 1} -> {"a": {"b": 1}}."""
    tree = {}
    for path, value in dotted.items():
        *parents, name = path.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[name] = value
    return tree


def from_dotted(dotted: dict, base: Optional[Config] = None) -> Config:
    """base (default: the defaults) with the dotted values replaced, checked anew."""
    known = {leaf.path for leaf in leaves()}
    unknown = sorted(set(dotted) - known)
    if unknown:
        raise ValueError(f"unknown config setting(s) {unknown}")
    values = to_dotted(base) if base is not None else {}
    values.update(dotted)
    return build(Config, nest(values))


def with_changes(config: Config, **dotted) -> Config:
    """config with some settings changed, by dotted path with "__" for "."
    (with_changes(c, stage2__epochs=3)), checked anew."""
    return from_dotted({k.replace("__", "."): v for k, v in dotted.items()}, config)


def legacy_names() -> dict:
    """{format-1 name: dotted path}."""
    names = {}
    for leaf in leaves():
        legacy = leaf.option.legacy if leaf.option and leaf.option.legacy else leaf.path.rsplit(".", 1)[-1]
        names.setdefault(legacy, leaf.path)
    return names


def from_json_values(values: dict) -> Config:
    """A Config from config.json's object, either format."""
    if values.get("config_format") == CONFIG_FORMAT:
        return build(Config, {k: v for k, v in values.items() if k != "config_format"})
    if "config_format" in values:
        raise ValueError(f"config.json has config_format {values['config_format']!r}; this ncpfast reads "
                         f"{CONFIG_FORMAT} and the flat format 1")
    names = legacy_names()
    # Format 1 kept no sampler method (SIR) and no sections: every known name maps
    # to its path; names it had that no longer mean anything are dropped, as its
    # own loader dropped unknown names.
    return from_dotted({names[k]: v for k, v in values.items() if k in names})


def save_config(config: Config, path: str) -> None:
    with atomic_write(path) as f:
        json.dump({"config_format": CONFIG_FORMAT, **dataclasses.asdict(config)}, f, indent=2)


def load_config(path: str) -> Config:
    with open(path) as f:
        values = json.load(f)
    try:
        return from_json_values(values)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{path}: {error}") from None
