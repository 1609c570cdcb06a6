"""What a config field says about itself: its --help line, its flag, which
programs take it, and the name it had in the flat config.json of format 1.

A field is declared with `option(...)`; the flags of every program and the
reading of old config.json files are built from these declarations alone, so
one concept has one flag name wherever it appears.
"""
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

# The programs that build their flags from the config.
TRAIN, EVALUATE, SAMPLE = "train", "evaluate", "sample"
PROGRAMS = (TRAIN, EVALUATE, SAMPLE)


@dataclass(frozen=True)
class Option:
    help: str
    flag: Optional[str]          # "--name"; None: not on the command line
    metavar: Optional[str]
    choices: Optional[tuple]
    programs: tuple
    legacy: Optional[str]        # the field's name in a format-1 (flat) config.json
    old_flags: tuple             # earlier spellings of the flag, still accepted (not in --help)


def option(default: Any, help: str = "", *, flag: Optional[str] = "", metavar=None, choices=None,
           programs=(TRAIN,), legacy=None, old_flags=()):
    """A dataclass field with its Option in the metadata. flag "": --field-name;
    None: no flag (set from code or a saved config only)."""
    meta = {"option": Option(help, flag, metavar, tuple(choices) if choices else None, tuple(programs), legacy,
                             tuple(old_flags))}
    return field(default=default, metadata=meta)


def option_of(f: dataclasses.Field, external: Optional[dict] = None) -> Optional[Option]:
    """The Option of a field: its metadata's, else the table `external` gives for
    classes declared elsewhere (the sampler's SamplerConfig), else None."""
    found = f.metadata.get("option") or (external or {}).get(f.name)
    if found is None:
        return None
    if found.flag == "":
        found = dataclasses.replace(found, flag="--" + f.name.replace("_", "-"))
    return found


def check_choice(section: str, name: str, value, choices) -> Optional[str]:
    """The problem with a value outside its choices, or None."""
    if value not in choices:
        return f"{section}.{name} must be one of {', '.join(map(str, choices))}, got {value!r}"
    return None
