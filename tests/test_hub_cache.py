"""Hub ids as checkpoint paths, offline: a huggingface_hub cache built here from a local model in the
layout huggingface_hub itself uses (models--owner--name/{blobs,refs,snapshots}; checked with its
own scan_cache_dir), read with HF_HUB_OFFLINE=1 in a fresh process (huggingface_hub reads its
environment at import)."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO_ID = "bert-jax-test/tiny-bert"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(94)]


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    huggingface_hub = pytest.importorskip("huggingface_hub")
    root = tmp_path_factory.mktemp("hub")
    local = root / "local"
    torch.manual_seed(0)
    model = transformers.BertForPreTraining(transformers.BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=20))
    model.save_pretrained(local)
    (local / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    cache = root / "cache"
    repo = cache / ("models--" + REPO_ID.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for f in local.iterdir():
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    info = huggingface_hub.scan_cache_dir(cache)
    assert not info.warnings, info.warnings
    (cached,) = info.repos
    assert cached.repo_id == REPO_ID and {r.commit_hash for r in cached.revisions} == {COMMIT}
    assert {f.file_name for r in cached.revisions for f in r.files} == {p.name for p in local.iterdir()}
    return local, cache


def _offline(code, cache, repo_root):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo_root, env=env,
                          timeout=300)


def test_hub_id_loads_from_the_cache_offline(hub_cache, repo_root, tmp_path):
    local, cache = hub_cache
    code = (
        "import json, sys, numpy as np\n"
        "from bert_jax.checkpoints import load_pretrained, load_config, detect_format, resolve_path, flatten\n"
        "from bert_jax.tasks.features import resolve_vocab_file\n"
        f"config, params = load_pretrained({REPO_ID!r})\n"
        f"np.savez(sys.argv[1] if len(sys.argv) > 1 else {str(tmp_path / 'p.npz')!r}, **flatten(params))\n"
        f"print(json.dumps({{'format': detect_format({REPO_ID!r}), 'path': resolve_path({REPO_ID!r}),\n"
        f"  'layers': load_config({REPO_ID!r}).num_hidden_layers, 'vocab': str(resolve_vocab_file(None, {REPO_ID!r}))}}))\n"
    )
    result = _offline(code, cache, repo_root)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    snapshot = cache / ("models--" + REPO_ID.replace("/", "--")) / "snapshots" / COMMIT
    assert out == {"format": "hf", "path": str(snapshot), "layers": 2, "vocab": str(snapshot / "vocab.txt")}
    from bert_jax.checkpoints import flatten, load_pretrained

    _, expected = load_pretrained(str(local))
    got = np.load(tmp_path / "p.npz")
    assert sorted(got.files) == sorted(flatten(expected))
    for key, value in flatten(expected).items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_missing_hub_id_offline_names_the_id_and_the_cache(hub_cache, repo_root):
    _, cache = hub_cache
    result = _offline("from bert_jax.checkpoints import load_pretrained; load_pretrained('bert-jax-test/absent')",
                      cache, repo_root)
    assert result.returncode != 0
    assert "'bert-jax-test/absent'" in result.stderr and f"is not in the cache {cache}" in result.stderr
    assert "HF_HUB_OFFLINE is set" in result.stderr


def test_local_paths_are_not_taken_for_hub_ids(tmp_path):
    from bert_jax.checkpoints import CheckpointError, hub, load_pretrained

    assert hub.resolve(str(tmp_path)) == str(tmp_path)
    assert not hub.looks_like_hub_id("/abs/path") and not hub.looks_like_hub_id("../x")
    assert hub.looks_like_hub_id("google-bert/bert-base-uncased") and hub.looks_like_hub_id("bert-base-uncased")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pretrained(str(tmp_path / "missing" / "dir"))


def test_a_relative_path_that_does_not_exist_is_named_as_both_a_path_and_a_hub_id(tmp_path, monkeypatch):
    """`runs/pretrain` mistyped (or run from another folder) looks like a Hub id: one line names the
    local path it looked for and the Hub id it tried."""
    import pytest
    from huggingface_hub import constants

    from bert_jax.checkpoints import CheckpointError, hub

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError) as error:
        hub.resolve("runs/pretrain")
    message = str(error.value)
    assert f"nothing at {tmp_path / 'runs' / 'pretrain'}" in message
    assert "Hugging Face Hub id 'runs/pretrain'" in message and "\n" not in message
