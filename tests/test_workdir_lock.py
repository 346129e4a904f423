"""One run per workdir (bert_jax.workdir_lock): a live holder refuses a second start naming it;
a killed holder's lock is taken over with a warning; gs:// through generation preconditions
(against a fake of google-cloud-storage's Blob API: no real bucket is reachable here)."""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from bert_jax import workdir_lock
from bert_jax.workdir_lock import LOCK_FILE, WorkdirLock, WorkdirLocked

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_second_lock_refused_naming_holder_then_free_after_release(tmp_path, caplog):
    first = WorkdirLock(tmp_path / "run").acquire()
    record = json.loads((tmp_path / "run" / LOCK_FILE).read_text())
    assert record["pid"] == os.getpid() and record["host"] and record["started"] <= record["heartbeat"]
    with pytest.raises(WorkdirLocked, match=rf"in use by another run \(host .* pid {os.getpid()},"):
        WorkdirLock(tmp_path / "run").acquire()
    first.release()
    assert (tmp_path / "run" / LOCK_FILE).read_text() == ""  # released cleanly: empty, not deleted
    with caplog.at_level(logging.WARNING, "bert_jax.workdir_lock"):
        with WorkdirLock(tmp_path / "run"):
            pass
    assert not caplog.records  # nothing to take over


def test_disabled_lock_holds_nothing(tmp_path):
    with WorkdirLock(tmp_path, enabled=False):  # processes other than 0 of a job
        with WorkdirLock(tmp_path):
            pass


def test_heartbeat_is_rewritten(tmp_path):
    with WorkdirLock(tmp_path, heartbeat_s=0.05):
        first = json.loads((tmp_path / LOCK_FILE).read_text())["heartbeat"]
        time.sleep(0.3)
        later = json.loads((tmp_path / LOCK_FILE).read_text())["heartbeat"]
    assert later > first


def test_other_process_holds_then_killed_lock_taken_over(tmp_path, caplog):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from bert_jax.workdir_lock import WorkdirLock; "
         f"WorkdirLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WorkdirLocked, match=f"pid {holder.pid},"):
            WorkdirLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with caplog.at_level(logging.WARNING, "bert_jax.workdir_lock"):
        with WorkdirLock(tmp_path):
            assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert f"pid {holder.pid}" in caplog.text and "ended without releasing" in caplog.text


# ---------------------------------------------------------------- gs:// against a fake client

class PreconditionFailed(Exception):
    code = 412


class FakeBlob:
    def __init__(self, bucket, name):
        self.bucket, self.name, self.generation = bucket, name, None

    def upload_from_string(self, data, content_type=None, if_generation_match=None):
        self.bucket.before_write(self.name)
        current = self.bucket.objects.get(self.name)
        if if_generation_match is not None and (current[1] if current else 0) != if_generation_match:
            raise PreconditionFailed(f"412 {self.name}")
        self.bucket.next_generation += 1
        self.generation = self.bucket.next_generation
        self.bucket.objects[self.name] = (data.encode() if isinstance(data, str) else data, self.generation)

    def download_as_bytes(self):
        return self.bucket.objects[self.name][0]

    def delete(self, if_generation_match=None):
        if self.bucket.objects[self.name][1] != if_generation_match:
            raise PreconditionFailed(f"412 {self.name}")
        del self.bucket.objects[self.name]


class FakeBucket:
    def __init__(self):
        self.objects, self.next_generation = {}, 0
        self.before_write = lambda name: None

    def blob(self, name):
        return FakeBlob(self, name)

    def get_blob(self, name):
        if name not in self.objects:
            return None
        blob = FakeBlob(self, name)
        blob.generation = self.objects[name][1]
        return blob


class FakeClient:
    def __init__(self):
        self.buckets = {}

    def bucket(self, name):
        return self.buckets.setdefault(name, FakeBucket())


@pytest.fixture
def gcs(monkeypatch):
    client = FakeClient()
    monkeypatch.setattr(workdir_lock, "gcs_client_factory", lambda: client)
    return client.bucket("b")


def test_gcs_lock_create_refuse_release(gcs):
    lock = WorkdirLock("gs://b/runs/x").acquire()
    assert json.loads(gcs.objects["runs/x/run.lock"][0])["pid"] == os.getpid()
    with pytest.raises(WorkdirLocked, match=r"gs://b/runs/x is in use by another run"):
        WorkdirLock("gs://b/runs/x").acquire()
    lock.release()
    assert "runs/x/run.lock" not in gcs.objects
    WorkdirLock("gs://b/runs/x").acquire().release()


def _stale_record(**changes):
    record = {"host": "elsewhere", "pid": 1, "started": 0, "started_utc": "then", "heartbeat": time.time()}
    record.update(changes)
    return json.dumps(record).encode()


def test_gcs_stale_heartbeat_or_dead_pid_taken_over(gcs, caplog):
    gcs.objects["x/run.lock"] = (_stale_record(heartbeat=time.time() - 3600), 7)
    with caplog.at_level(logging.WARNING, "bert_jax.workdir_lock"):
        WorkdirLock("gs://b/x").acquire().release()
    assert "took over a stale lock (its last heartbeat is 3600 s old" in caplog.text
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket
    gcs.objects["x/run.lock"] = (_stale_record(host=socket.gethostname(), pid=dead.pid), 9)
    WorkdirLock("gs://b/x").acquire().release()
    # A live-looking holder on another host with a fresh heartbeat is not stale.
    gcs.objects["x/run.lock"] = (_stale_record(), 11)
    with pytest.raises(WorkdirLocked, match="host 'elsewhere' pid 1"):
        WorkdirLock("gs://b/x").acquire()


def test_gcs_two_takers_of_a_stale_lock_one_wins(gcs):
    gcs.objects["x/run.lock"] = (_stale_record(heartbeat=0), 7)

    writes = []

    def rival_takes_it_first(name):  # another run replaces the stale lock between our read and our takeover
        writes.append(name)
        if len(writes) == 2:  # ours: the create (refused), then the takeover
            FakeBlob(gcs, name).upload_from_string(_stale_record(host="rival"), if_generation_match=7)
    gcs.before_write = rival_takes_it_first
    with pytest.raises(WorkdirLocked, match="another run took over the stale lock"):
        WorkdirLock("gs://b/x").acquire()
    assert json.loads(gcs.objects["x/run.lock"][0])["host"] == "rival"


def test_gcs_without_client_library_warns(monkeypatch, caplog):
    monkeypatch.setattr(workdir_lock, "gcs_client_factory", lambda: None)
    with caplog.at_level(logging.WARNING, "bert_jax.workdir_lock"):
        WorkdirLock("gs://b/x").acquire().release()
    assert "not locked against a second run (google-cloud-storage is not installed, or has no client)" in caplog.text


# ---------------------------------------------------------------- gs:// against a real GCS API


def test_gcs_lock_against_the_emulator_refuses_a_second_run_and_is_released(tmp_path, monkeypatch):
    """The same lock through google-cloud-storage against fake-gcs-server (tests/gcs_emulator.py),
    which keeps object generations and honours ifGenerationMatch: the lock object exists in the
    bucket while held, a second start is refused naming the holder, and release deletes it."""
    from bert_jax.workdir_lock import WorkdirLock, WorkdirLocked
    from tests.gcs_emulator import GcsEmulator

    emulator = GcsEmulator(tmp_path).start()
    try:
        for key, value in emulator.env.items():
            monkeypatch.setenv(key, value)
        held = WorkdirLock("gs://bucket/run").acquire()
        try:
            assert "run/run.lock" in emulator.listing("run/")
            record = json.loads(emulator.read("run/run.lock"))
            assert record["pid"] == os.getpid()
            with pytest.raises(WorkdirLocked, match=f"pid {os.getpid()}"):
                WorkdirLock("gs://bucket/run").acquire()
        finally:
            held.release()
        assert "run/run.lock" not in emulator.listing("run/")
        WorkdirLock("gs://bucket/run").acquire().release()  # free again
        assert any("ifGenerationMatch=0" in r for r in emulator.requests())
    finally:
        emulator.stop()
