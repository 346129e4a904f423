"""One command-line style for bert_jax's tools: Google's underscore flags (`--max_seq_length`).

A user error (a bad config value, a missing or malformed data file, a workdir in use) ends a tool
with one line naming the culprit and exit code 2 (`run_main`); BERT_JAX_DEBUG=1 shows the
traceback instead. A misspelled or misplaced `--config.` field gets its full flag suggested
(`suggest_config_flag`).

Old spellings (`--no-check-vocab`, `--print-commands`) keep working as deprecated aliases:
`rewrite_deprecated` maps them to the new name before argparse sees them and prints a warning
naming both. Help shows defaults through `HelpFormatter`.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import os
import sys
from typing import Callable, Iterable, Mapping, Sequence

DEBUG_ENV = "BERT_JAX_DEBUG"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help keeps the module docstring's layout and shows every flag's default, also of a flag
    with no help text (argparse prints no line for those, so their defaults went unseen)."""

    def _format_action(self, action):
        if not action.help and action.option_strings and not action.required \
                and action.default is not argparse.SUPPRESS:
            action = copy.copy(action)
            action.help = "default: %(default)s"
        return super()._format_action(action)


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


def user_error_types() -> tuple[type, ...]:
    """Errors a user can act on without reading code: bad values and data (ValueError, which
    CheckpointError and ConfigError are), files (OSError), a non-finite run (FloatingPointError),
    a workdir in use. A TypeError or AttributeError is a bug: its traceback stays."""
    from bert_jax.workdir_lock import WorkdirLocked
    return (ValueError, OSError, FloatingPointError, WorkdirLocked)


def one_line(error: BaseException) -> str:
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(text.split()) or type(error).__name__


def run_main(main: Callable[[], int | None], prog: str) -> int | None:
    """Runs a tool's main; a user error prints `prog: error: <message>` and exits 2."""
    try:
        return main()
    except user_error_types() as error:
        if os.environ.get(DEBUG_ENV) == "1":
            raise
        print(f"{prog}: error: {one_line(error)} ({DEBUG_ENV}=1 shows the traceback)", file=sys.stderr)
        sys.exit(2)


def config_paths(config, prefix: str = "") -> list[str]:
    """Every leaf field of a (nested) ConfigDict or dict, as dotted paths."""
    out = []
    for key in config.keys():
        value = config[key]
        path = f"{prefix}{key}"
        if hasattr(value, "keys") and callable(value.keys):
            out += config_paths(value, path + ".")
        else:
            out.append(path)
    return out


def suggest_config_flag(field: str, paths: Iterable[str]) -> str | None:
    """'did you mean --config.optimizer.learning_rate' for `--config.learning_rate` (a field under
    another section), or for a misspelling anywhere in the path (`--config.trian.batch_size`)."""
    paths = list(paths)
    if field in paths:
        return None
    leaf = field.rsplit(".", 1)[-1]
    typo = lambda: difflib.get_close_matches(field, paths, n=1, cutoff=0.8)
    elsewhere = lambda: sorted(p for p in paths if p.endswith("." + leaf))  # the right name, another section
    # A bare name is most likely a field given without its section; a dotted one, a typo.
    placed = (elsewhere() or typo()) if "." not in field else (typo() or elsewhere())
    if not placed:  # a misspelled leaf under a section elsewhere
        near = difflib.get_close_matches(leaf, {p.rsplit(".", 1)[-1] for p in paths}, n=1, cutoff=0.75)
        placed = [p for p in paths if near and p.rsplit(".", 1)[-1] == near[0]]
    if not placed:
        return None
    return "did you mean " + " or ".join(f"--config.{p}" for p in placed[:3]) + "?"
