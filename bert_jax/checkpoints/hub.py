"""Hugging Face Hub ids as checkpoint paths: `init_from=google-bert/bert-base-uncased`.

`resolve(path)` returns `path` unchanged when it exists locally (or is a gs:// URL). Otherwise,
when it looks like a Hub id (`name` or `owner/name`, optionally `@revision`), it is resolved
through huggingface_hub as `from_pretrained` does: the local cache first (HF_HUB_CACHE /
HF_HOME, the layout `models--owner--name/{refs,snapshots,blobs}`), then a download of the
files a BERT checkpoint needs when there is a network and HF_HUB_OFFLINE is not set. The
snapshot directory is an ordinary Hugging Face directory that `load_pretrained` reads.

HF_ENDPOINT points the download at another Hub (a mirror, or the local one the tests start).
Every file of the snapshot is checked against the name of its blob, which is the Hub's ETag: the
sha256 of an LFS file (the weights), the git blob sha1 of any other. huggingface_hub downloads
to a temporary name and renames when complete, but a cache filled by another tool (or copied
while a download ran) can hold a partial file under the final name: offline that is an error
naming the file; online the bad blob is deleted and downloaded again. The snapshot must hold a
config and weights, else an error names the repo, the revision and what is missing.
"""

from __future__ import annotations

import hashlib
import os
import re

from bert_jax.checkpoints.validation import CheckpointError

# The files of a BERT checkpoint directory (weights, config, tokenizer); nothing else is fetched.
ALLOW_PATTERNS = ["config.json", "model.safetensors", "model.safetensors.index.json", "model-*.safetensors",
                  "pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*.bin", "vocab.txt",
                  "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*(?:@[A-Za-z0-9._/-]+)?$")


def looks_like_hub_id(path: str) -> bool:
    return bool(_HUB_ID.match(path)) and ".." not in path and not path.endswith((".json", ".txt", ".model"))


def resolve(path: str | os.PathLike) -> str:
    """A local path for `path`: itself when it exists, else the Hub snapshot of the id."""
    path = os.fspath(path)
    if "://" in path or os.path.exists(path) or os.path.exists(path + ".index") or not looks_like_hub_id(path):
        return path
    try:
        import huggingface_hub
        from huggingface_hub import constants
    except ImportError:
        raise CheckpointError(
            f"{path} is not a local path (nothing at {os.path.abspath(path)}), and resolving it as a Hugging Face Hub id needs huggingface_hub "
            f"(pip install huggingface_hub)") from None
    repo_id, _, revision = path.partition("@")
    cache_dir = constants.HF_HUB_CACHE
    where = f"the Hugging Face Hub id {repo_id!r}{f' (revision {revision})' if revision else ''}"
    try:  # the cache first: no network call at all when the snapshot is there
        snapshot = huggingface_hub.snapshot_download(repo_id, revision=revision or None,
                                                     allow_patterns=ALLOW_PATTERNS, local_files_only=True)
    except Exception as cached_error:  # LocalEntryNotFoundError, or an id the cache lacks
        snapshot = None
        if constants.HF_HUB_OFFLINE:
            raise CheckpointError(
                f"{path} is not a local path (nothing at {os.path.abspath(path)}), and {where} is not in the cache {cache_dir} "
                f"(HF_HUB_OFFLINE is set, so nothing is downloaded): {type(cached_error).__name__}. "
                f"Download it on a machine with a network (huggingface-cli download {repo_id}) into that "
                f"cache, set HF_HUB_CACHE / HF_HOME to a cache that has it, or pass a local directory") from None
    if snapshot is not None:
        damaged = damaged_files(snapshot)
        if not damaged:
            return _complete(snapshot, path, where)
        if constants.HF_HUB_OFFLINE:
            raise CheckpointError(
                f"{path}: the cached snapshot {snapshot} of {where} holds files that are not the ones the Hub "
                f"sent (a partial or damaged download): {'; '.join(damaged)}. Delete them and download again "
                f"without HF_HUB_OFFLINE")
        for name in damaged:  # online: drop the bad blobs, and the download below fetches them again
            _remove_blob(os.path.join(snapshot, name.split(":", 1)[0]))
    try:
        snapshot = huggingface_hub.snapshot_download(repo_id, revision=revision or None,
                                                     allow_patterns=ALLOW_PATTERNS)
    except Exception as e:  # RepositoryNotFoundError, RevisionNotFoundError, connection errors, ...
        raise CheckpointError(
            f"{path} is not a local path (nothing at {os.path.abspath(path)}), and {where} is neither in the cache {cache_dir} nor downloadable "
            f"from {constants.ENDPOINT}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    damaged = damaged_files(snapshot)
    if damaged:
        raise CheckpointError(f"{path}: the download of {where} into {snapshot} gave files that are not the ones "
                              f"the Hub announced: {'; '.join(damaged)}")
    return _complete(snapshot, path, where)


def _blob_hash(name: str, data_path: str) -> str | None:
    """The hash the blob's name claims, computed over the file: sha256 for a 64-hex name (an LFS
    file), git's blob sha1 for a 40-hex one; None for any other name (nothing to check)."""
    if re.fullmatch(r"[0-9a-f]{64}", name):
        digest = hashlib.sha256()
    elif re.fullmatch(r"[0-9a-f]{40}", name):
        digest = hashlib.sha1(b"blob %d\0" % os.path.getsize(data_path))
    else:
        return None
    with open(data_path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_VERIFIED: set[tuple[str, int, int]] = set()  # (blob, size, mtime_ns) already hashed right in this process


def damaged_files(snapshot: str) -> list[str]:
    """'name: why' for every file of a cache snapshot whose content does not hash to its blob's name
    (each blob hashed once per process while unchanged: a trainer resolves its init_from several times)."""
    damaged = []
    for root, _, files in os.walk(snapshot):
        for file in sorted(files):
            link = os.path.join(root, file)
            name = os.path.relpath(link, snapshot)
            if not os.path.exists(link):
                damaged.append(f"{name}: its blob is missing")
                continue
            real = os.path.realpath(link)
            blob, st = os.path.basename(real), os.stat(real)
            key = (real, st.st_size, st.st_mtime_ns)
            if key in _VERIFIED:
                continue
            found = _blob_hash(blob, link)
            if found is None or found == blob:
                _VERIFIED.add(key)
            else:
                damaged.append(f"{name}: {os.path.getsize(link)} bytes hashing to {found}, not to its blob's name {blob}")
    return damaged


def _remove_blob(link: str) -> None:
    blob = os.path.realpath(link)
    for p in (blob, link):
        try:
            os.remove(p)
        except FileNotFoundError:
            pass


_CONFIGS = ("config.json", "bert_config.json")
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def _complete(snapshot: str, path: str, where: str) -> str:
    """The snapshot, when it holds a config and weights; else a CheckpointError naming what is missing."""
    present = set(os.listdir(snapshot))
    missing = [what for what, names in (("a config (config.json)", _CONFIGS), (
        "weights (model.safetensors or pytorch_model.bin)", _WEIGHTS)) if not present & set(names)]
    if missing:
        raise CheckpointError(f"{path}: {where} has no {' and no '.join(missing)} (the snapshot {snapshot} "
                              f"holds {sorted(present)}); it is not a BERT checkpoint bert_jax can load")
    return snapshot
