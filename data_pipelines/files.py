"""Paths that may be local or remote (gs://, s3://, ...): globbing, reading and local copies.

Every input, output and vocab path of the data tools goes through `etils.epath`, which picks
the backend by the path's scheme (tf.io.gfile or fsspec for gs://, the os module for local
paths), so the same command runs on a laptop and on a cluster writing into a bucket.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import tempfile
from typing import Iterable

from etils import epath

_GLOB_CHARS = re.compile(r"[*?\[]")


def is_remote(path: str | os.PathLike) -> bool:
    return "://" in os.fspath(path)


def glob(pattern: str) -> list[str]:
    """Sorted paths matching one glob; the part before the first wildcard is a directory."""
    pattern = os.fspath(pattern)
    if not _GLOB_CHARS.search(pattern):
        return [pattern] if epath.Path(pattern).exists() else []
    head, _, _ = _GLOB_CHARS.split(pattern, maxsplit=1)[0].rpartition("/")
    root = epath.Path(head or ".")
    if not root.exists():
        return []
    rest = pattern[len(head) + 1:] if head else pattern
    return sorted(os.fspath(p) for p in root.glob(rest))


def expand_paths(patterns: str | Iterable[str], what: str = "input") -> list[str]:
    """Comma-separated globs (Google's --input_file style) or a list of them -> file list.

    Each glob's matches are sorted; globs keep their order. A glob with no match is an error
    naming it and `what` it was for.
    """
    if isinstance(patterns, (str, os.PathLike)):
        patterns = str(patterns).split(",")
    files = []
    for pattern in patterns:
        pattern = os.fspath(pattern).strip()
        if not pattern:
            continue
        matches = glob(pattern)
        if not matches:
            raise FileNotFoundError(f"{what}: no file matches {pattern!r}")
        files += matches
    return files


def size(path: str) -> int:
    return epath.Path(path).stat().length


@functools.lru_cache(maxsize=16)
def local_copy(path: str) -> str:
    """`path` itself when local; else a copy in a temp dir (for readers that need a local file)."""
    if not is_remote(path):
        return path
    source = epath.Path(path)
    if not source.exists():
        raise FileNotFoundError(f"{path} does not exist")
    target = os.path.join(tempfile.mkdtemp(prefix="bert_jax_copy_"), source.name)
    copy(path, target)
    return target


def copy(source: str, target: str) -> None:
    """Copies a file between any two filesystems (epath's own copy stays inside one backend)."""
    with epath.Path(source).open("rb") as src, epath.Path(target).open("wb") as dst:
        shutil.copyfileobj(src, dst, length=16 << 20)
