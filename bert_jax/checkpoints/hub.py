"""Hugging Face Hub ids as checkpoint paths: `init_from=google-bert/bert-base-uncased`.

`resolve(path)` returns `path` unchanged when it exists locally (or is a gs:// URL). Otherwise,
when it looks like a Hub id (`name` or `owner/name`, optionally `@revision`), it is resolved
through huggingface_hub as `from_pretrained` does: the local cache first (HF_HUB_CACHE /
HF_HOME, the layout `models--owner--name/{refs,snapshots,blobs}`), then a download of the
files a BERT checkpoint needs when there is a network and HF_HUB_OFFLINE is not set. The
snapshot directory is an ordinary Hugging Face directory that `load_pretrained` reads.
"""

from __future__ import annotations

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
            f"{path} is not a local path, and resolving it as a Hugging Face Hub id needs huggingface_hub "
            f"(pip install huggingface_hub)") from None
    repo_id, _, revision = path.partition("@")
    cache_dir = constants.HF_HUB_CACHE
    try:  # the cache first: no network call at all when the snapshot is there
        return huggingface_hub.snapshot_download(repo_id, revision=revision or None, allow_patterns=ALLOW_PATTERNS,
                                                 local_files_only=True)
    except Exception as cached_error:  # LocalEntryNotFoundError, or an id the cache lacks
        offline = bool(constants.HF_HUB_OFFLINE)
        if offline:
            raise CheckpointError(
                f"{path} is not a local path, and the Hugging Face Hub id {repo_id!r}"
                f"{f' (revision {revision})' if revision else ''} is not in the cache {cache_dir} "
                f"(HF_HUB_OFFLINE is set, so nothing is downloaded): {type(cached_error).__name__}. "
                f"Download it on a machine with a network (huggingface-cli download {repo_id}) into that "
                f"cache, set HF_HUB_CACHE / HF_HOME to a cache that has it, or pass a local directory") from None
    try:
        return huggingface_hub.snapshot_download(repo_id, revision=revision or None, allow_patterns=ALLOW_PATTERNS)
    except Exception as e:  # RepositoryNotFoundError, connection errors, ...
        raise CheckpointError(
            f"{path} is not a local path, and the Hugging Face Hub id {repo_id!r} is neither in the cache "
            f"{cache_dir} nor downloadable: {type(e).__name__}: {e}") from None
