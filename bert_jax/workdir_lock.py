"""One run per workdir: an exclusive lock that process 0 of a job holds for the run's whole life.

Two runs in one workdir interleave metrics.jsonl, overwrite each other's config.json and crash
inside orbax; the lock refuses the second start with one line naming the holder.

Local workdirs: `fcntl.flock` on <workdir>/run.lock. The kernel drops a flock when its process
dies, however it dies, so a lock left by a killed run is never taken for a live one (it is taken
over with a warning naming the old holder). The file's JSON (host, pid, start time, heartbeat)
only names the holder; an empty file is a cleanly released lock. The file is never deleted:
unlinking a locked file lets a third process lock a new file of the same name.

gs:// workdirs (google-cloud-storage): the object <workdir>/run.lock created with
ifGenerationMatch=0, so exactly one creator wins; the heartbeat rewritten with
ifGenerationMatch=<our generation>; a stale lock (its pid dead on this host, or a heartbeat older
than `stale_after_s`) replaced with ifGenerationMatch=<the stale generation>, so of two runs that
both find it stale only one takes it.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import threading
import time

log = logging.getLogger("bert_jax.workdir_lock")

LOCK_FILE = "run.lock"
HEARTBEAT_S = 60.0  # how often the holder rewrites its heartbeat
STALE_AFTER_S = 600.0  # gs://: a heartbeat this old means the holder is gone (10 missed beats)


class WorkdirLocked(RuntimeError):
    """Another run holds the workdir: a user error, reported in one line."""


def _record(started: float) -> dict:
    now = time.time()
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": started,
            "started_utc": datetime.datetime.fromtimestamp(started, datetime.timezone.utc).isoformat(timespec="seconds"),
            "heartbeat": now}


def _describe(holder: dict) -> str:
    age = time.time() - float(holder.get("heartbeat") or 0)
    return (f"host {holder.get('host')!r} pid {holder.get('pid')}, started {holder.get('started_utc')}, "
            f"last heartbeat {age:.0f} s ago")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def is_stale(holder: dict, stale_after_s: float = STALE_AFTER_S) -> str | None:
    """Why a lock record no longer stands for a live run, or None if it may."""
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int) \
            and not _pid_alive(holder["pid"]):
        return f"pid {holder['pid']} is no longer running on this host"
    age = time.time() - float(holder.get("heartbeat") or 0)
    if age > stale_after_s:
        return f"its last heartbeat is {age:.0f} s old (> {stale_after_s:.0f} s)"
    return None


class _Heartbeat:
    """A daemon thread that calls `beat()` every `every_s` seconds until stopped."""

    def __init__(self, beat, every_s: float):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(beat, every_s), daemon=True,
                                        name="workdir-lock-heartbeat")
        self._thread.start()

    def _run(self, beat, every_s):
        while not self._stop.wait(every_s):
            try:
                beat()
            except Exception as e:  # a missed beat must not kill the run; a long gap shows in the record
                log.warning("workdir lock heartbeat failed: %s", e)

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=5)


class _LocalLock:
    def __init__(self, workdir: str, heartbeat_s: float):
        import fcntl
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, LOCK_FILE)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._read(fd)
            os.close(fd)
            raise WorkdirLocked(
                f"{workdir} is in use by another run ({_describe(holder) if holder else 'holder unknown'}; "
                f"lock {self.path}). Wait for it to end, stop it, or use another --workdir.") from None
        previous = self._read(fd)
        if previous:  # not released: its run was killed (the kernel dropped its flock)
            log.warning("%s: taking over the lock of a run that ended without releasing it (%s)",
                        self.path, _describe(previous))
        self.fd, self.started = fd, time.time()
        self._write()
        self._lock = threading.Lock()
        self._heartbeat = _Heartbeat(self._write, heartbeat_s)

    @staticmethod
    def _read(fd: int) -> dict:
        data = os.pread(fd, 1 << 16, 0)
        try:
            holder = json.loads(data) if data.strip() else {}
        except ValueError:
            holder = {"host": "?", "pid": "?", "started_utc": f"unreadable record {data[:40]!r}"}
        return holder if isinstance(holder, dict) else {}

    def _write(self):
        data = json.dumps(_record(self.started)).encode() + b"\n"
        os.pwrite(self.fd, data, 0)  # then cut: a reader never sees an empty file while we hold it
        os.ftruncate(self.fd, len(data))

    def release(self):
        self._heartbeat.stop()
        os.ftruncate(self.fd, 0)  # empty: released cleanly
        os.close(self.fd)  # drops the flock


def _is_precondition_failed(error: Exception) -> bool:
    # google.api_core.exceptions.PreconditionFailed carries HTTP 412 (not imported: optional dependency).
    return getattr(error, "code", None) == 412 or type(error).__name__ == "PreconditionFailed"


def _default_gcs_client():
    try:
        from google.cloud import storage
    except ImportError:
        return None
    try:
        return storage.Client()
    except Exception as e:  # no credentials or project here: TensorStore may still have its own
        log.warning("google-cloud-storage has no client here (%s)", e)
        return None


gcs_client_factory = _default_gcs_client  # tests swap in a fake with the same methods


class _GcsLock:
    def __init__(self, url: str, heartbeat_s: float, stale_after_s: float, client):
        bucket_name, _, prefix = url[len("gs://"):].partition("/")
        self.url = url.rstrip("/") + "/" + LOCK_FILE
        self.name = (prefix.rstrip("/") + "/" + LOCK_FILE).lstrip("/")
        self.bucket = client.bucket(bucket_name)
        self.started = time.time()
        try:
            self.generation = self._upload(0)
        except Exception as e:
            if not _is_precondition_failed(e):
                raise
            blob = self.bucket.get_blob(self.name)
            if blob is None:  # released between our create and our read: one more try
                self.generation = self._upload(0)
            else:
                holder = json.loads(blob.download_as_bytes() or b"{}")
                why = is_stale(holder, stale_after_s)
                if why is None:
                    raise WorkdirLocked(f"{url} is in use by another run ({_describe(holder)}; lock {self.url}). "
                                        f"Wait for it to end, stop it, or use another --workdir.") from None
                try:
                    self.generation = self._upload(blob.generation)
                except Exception as e2:
                    if _is_precondition_failed(e2):
                        raise WorkdirLocked(f"{url}: another run took over the stale lock {self.url} first") from None
                    raise
                log.warning("%s: took over a stale lock (%s): %s", self.url, why, _describe(holder))
        self._heartbeat = _Heartbeat(self._beat, heartbeat_s)

    def _upload(self, if_generation_match: int) -> int:
        blob = self.bucket.blob(self.name)
        blob.upload_from_string(json.dumps(_record(self.started)), content_type="application/json",
                                if_generation_match=if_generation_match)
        return blob.generation

    def _beat(self):
        try:
            self.generation = self._upload(self.generation)
        except Exception as e:
            if _is_precondition_failed(e):
                log.error("%s: the lock was taken over by another run; this run no longer holds its workdir",
                          self.url)
            raise

    def release(self):
        self._heartbeat.stop()
        try:
            self.bucket.blob(self.name).delete(if_generation_match=self.generation)
        except Exception as e:  # taken over already: not ours to delete
            log.warning("%s: not released (%s)", self.url, e)


class WorkdirLock:
    """`with WorkdirLock(workdir, enabled=is_main):` holds the workdir for the block's duration.

    `enabled=False` (processes other than 0 of a job) holds nothing."""

    def __init__(self, workdir, enabled: bool = True, heartbeat_s: float = HEARTBEAT_S,
                 stale_after_s: float = STALE_AFTER_S):
        self.workdir, self.enabled = os.fspath(workdir), enabled
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        self._held = None

    def acquire(self) -> "WorkdirLock":
        if not self.enabled:
            return self
        if self.workdir.startswith("gs://"):
            client = gcs_client_factory()
            if client is None:
                log.warning("%s: not locked against a second run (google-cloud-storage is not installed, "
                            "or has no client)", self.workdir)
                return self
            self._held = _GcsLock(self.workdir, self.heartbeat_s, self.stale_after_s, client)
        elif "://" in self.workdir:
            log.warning("%s: not locked against a second run (no lock for this filesystem)", self.workdir)
        else:
            self._held = _LocalLock(self.workdir, self.heartbeat_s)
        return self

    def release(self) -> None:
        if self._held is not None:
            self._held.release()
            self._held = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
