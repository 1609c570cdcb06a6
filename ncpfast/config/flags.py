"""The command-line flags of a program, built from the config's declarations
(config.options): one argument group per section, one flag per field the
program takes, its dest the field's dotted path. Flags default to "not given"
(None), so that a preset or a saved config decides, and the values given are
read back as dotted overrides."""
import argparse
import functools
import re
from typing import Optional

from .options import PROGRAMS
from .sections import SECTION_TITLES
from .tree import leaves

_NUMBER_METAVARS = {int: "N", float: "X"}


def add_config_flags(parser: argparse.ArgumentParser, program: str, groups: Optional[dict] = None,
                     types: Optional[dict] = None, more_help: Optional[dict] = None) -> dict:
    """Adds the flags of `program` to parser, in argument groups by section (those
    in `groups`, {section path: group}, are used as they are). types: {dotted
    path: argparse type} where a program parses a value its own way; more_help:
    {dotted path: text} added to a flag's help there. Returns {section path: group}."""
    if program not in PROGRAMS:
        raise ValueError(f"unknown program {program!r}; expected one of {PROGRAMS}")
    groups = dict(groups or {})
    for leaf in leaves():
        option = leaf.option
        if option is None or option.flag is None or program not in option.programs:
            continue
        section = leaf.path.rsplit(".", 1)[0]
        if section not in groups:
            groups[section] = parser.add_argument_group(SECTION_TITLES[section])
        group = groups[section]
        default = leaf.field.default
        shown = "" if default in (None, "") or not isinstance(default, (int, float, str)) else f" (default: {default})"
        help_text = option.help + shown + (more_help or {}).get(leaf.path, "")
        if leaf.kind is bool:
            group.add_argument(option.flag, dest=leaf.path, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
            continue
        kind = (types or {}).get(leaf.path) or (leaf.kind if leaf.kind in (int, float) else str)
        metavar = option.metavar or _NUMBER_METAVARS.get(kind, "VALUE")
        extra = {"choices": option.choices} if option.choices and kind is str else {}
        group.add_argument(option.flag, dest=leaf.path, type=kind, default=None, metavar=metavar,
                           help=help_text + (f"; one of {', '.join(option.choices)}" if extra else ""), **extra)
        for old in option.old_flags:
            group.add_argument(old, dest=leaf.path, type=kind, default=None, help=argparse.SUPPRESS, **extra)
    return groups


@functools.cache
def _flag_pattern() -> tuple:
    flags = {leaf.path: leaf.option.flag for leaf in leaves() if leaf.option is not None and leaf.option.flag}
    paths = sorted(flags, key=len, reverse=True)
    return re.compile(r"(?<![\w.-])(" + "|".join(re.escape(p) for p in paths) + r")(?![\w])"), flags


def in_flag_terms(message: str) -> str:
    """A message about config settings (by dotted path) as a command-line user reads
    it: each setting that has a flag named by its flag."""
    pattern, flags = _flag_pattern()
    return pattern.sub(lambda m: flags[m.group(1)], message)


def given_values(args: argparse.Namespace) -> dict:
    """{dotted path: value} of the config flags given on the command line."""
    return {k: v for k, v in vars(args).items() if "." in k and v is not None}


def section_values(args: argparse.Namespace, section: str) -> dict:
    """{field: value} of one section's flags given on the command line."""
    prefix = section + "."
    return {k[len(prefix):]: v for k, v in vars(args).items()
            if k.startswith(prefix) and "." not in k[len(prefix):] and v is not None}
