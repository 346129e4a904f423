"""Exports written whole or not at all: into a temp dir beside the target, then moved into place."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from typing import Iterable, Iterator

from bert_jax.checkpoints.validation import CheckpointError


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def _follow_umask(staging: str) -> None:
    """mkdtemp makes a 0700 directory (and a temp file is 0600): give the export the modes any
    other file of the user gets, or it stays private whatever the umask."""
    mask = _umask()
    for root, dirs, files in os.walk(staging):
        os.chmod(root, 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


@contextlib.contextmanager
def staged_directory(directory: str, stale: Iterable[str] = ()) -> Iterator[str]:
    """Yields a staging dir; when the block succeeds its files replace those of `directory`.

    `stale`: names or globs of an earlier export's files to remove from `directory` when this
    export does not rewrite them. If the block raises, `directory` is left as it was.
    """
    directory = os.path.abspath(directory)
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.tmp-", dir=parent)
    try:
        yield staging
        _follow_umask(staging)
        if not os.path.exists(directory):
            os.replace(staging, directory)
            return
        if not os.path.isdir(directory):
            raise CheckpointError(f"cannot export to {directory}: it exists and is not a directory")
        written = set(os.listdir(staging))
        for pattern in stale:
            for old in glob.glob(os.path.join(directory, pattern)):
                if os.path.basename(old) not in written and os.path.isfile(old):
                    os.remove(old)
        for name in written:
            os.replace(os.path.join(staging, name), os.path.join(directory, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
