"""Shared pytest fixtures.

Real data lives outside the repo (`../shared/data` in CI); tests that need it take the
`shared_data` fixture and skip, with the reason, when BERT_JAX_DATA is unset or missing.
"""

import os
import pathlib
import shutil
import tempfile

import pytest

# 8 host devices for the sharding tests. It has to be set before jax is first imported, and it is
# appended to XLA_FLAGS, not set by default: GPU hosts and the portability runs (e.g.
# XLA_FLAGS=--xla_cpu_multi_thread_eigen=false) already set XLA_FLAGS, and a setdefault would
# leave those runs with one device. A device count given in XLA_FLAGS already is replaced.
HOST_DEVICES_FLAG = "--xla_force_host_platform_device_count=8"


def with_host_devices(flags: str, flag: str = HOST_DEVICES_FLAG) -> str:
    kept = [f for f in flags.split() if not f.startswith("--xla_force_host_platform_device_count")]
    return " ".join([*kept, flag])


os.environ["XLA_FLAGS"] = with_host_devices(os.environ.get("XLA_FLAGS", ""))

# One XLA compilation cache for the whole run: many tests (and the trainer subprocesses they
# start) compile the same tiny-BERT programs, and a cache hit skips most of a compile. It lives for
# this run only, so every run is timed from cold; xdist workers and subprocesses inherit it from
# the controller's environment. A size limit turns on jax's file lock: two workers share the folder.
_OWN_COMPILATION_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_COMPILATION_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="bert_jax_test_xla_cache_")
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 << 30))


def pytest_unconfigure(config):
    if _OWN_COMPILATION_CACHE:
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    root = os.environ.get("BERT_JAX_DATA")
    if not root:
        pytest.skip("BERT_JAX_DATA is not set; it points at the real data (../shared/data in CI)")
    path = pathlib.Path(root)
    if not path.is_dir():
        pytest.skip(f"BERT_JAX_DATA={root} is not a directory")
    return path.resolve()


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def tiny_uncased_checkpoint(shared_data, tmp_path_factory):
    """(path, BertConfig): a random-init 2-layer BERT with BERT's uncased vocab (30522 ids) in
    bert_jax's checkpoint format, written once for every fine-tuning test that starts from one."""
    from bert_jax.config import BertConfig
    from tests.finetune_helpers import save_random_checkpoint

    config = BertConfig.preset("tiny", vocab_size=30522, max_position_embeddings=128)
    path = save_random_checkpoint(tmp_path_factory.mktemp("tiny_bert"), config,
                                  shared_data / "vocab" / "bert-base-uncased-vocab.txt")
    return path, config


def pytest_collection_modifyitems(config, items):
    """Modules holding a `slow` test run first (each module kept whole, so its fixtures are built
    once). Under `-n 2` the long runs then start early and the short tests fill the workers' ends,
    rather than one worker idling while the other finishes a 4-minute run."""
    has_slow = {item.module for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.module not in has_slow)  # a stable sort keeps each module's order
