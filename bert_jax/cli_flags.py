"""One command-line style for bert_jax's tools: Google's underscore flags (`--max_seq_length`).

Old spellings (`--no-check-vocab`, `--print-commands`) keep working as deprecated aliases:
`rewrite_deprecated` maps them to the new name before argparse sees them and prints a warning
naming both. Help shows defaults through `HelpFormatter`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Mapping, Sequence


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help keeps the module docstring's layout and shows every flag's default."""


def rewrite_deprecated(argv: Sequence[str] | None, aliases: Mapping[str, str], prog: str) -> list[str]:
    """argv with each deprecated `--old` / `--old=value` replaced by its `--new` name, warning on stderr."""
    argv = list(sys.argv[1:] if argv is None else argv)
    out = []
    for arg in argv:
        name, sep, value = arg.partition("=")
        if name in aliases:
            print(f"{prog}: warning: {name} is deprecated; use {aliases[name]}", file=sys.stderr)
            arg = aliases[name] + sep + value
        out.append(arg)
    return out


def parse_bool(text: str) -> bool:
    """true/false, 1/0, yes/no (Google's scripts take --do_lower_case=True)."""
    lowered = str(text).strip().lower()
    if lowered in ("true", "1", "yes", "t", "y"):
        return True
    if lowered in ("false", "0", "no", "f", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, found {text!r}")
