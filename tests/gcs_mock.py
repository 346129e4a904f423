"""gs:// paths served by an in-memory fsspec filesystem through etils.epath: no local disk, no network.

    def test_x(monkeypatch):
        bucket = in_memory_gcs(monkeypatch)   # epath.Path("gs://b/x") now lives in bucket.store

Everything that goes through etils.epath (the data tools, the trainer's run records) then
reads and writes the bucket. TensorFlow's own gs:// filesystem and orbax's (tensorstore,
google-cloud-storage) do not go through epath, so they are not covered by this mock.
"""

import fnmatch


def in_memory_gcs(monkeypatch):
    from etils.epath import backend, gpath
    from fsspec.implementations.memory import MemoryFileSystem

    class Bucket(MemoryFileSystem):
        protocol = ("gs",)
        store, pseudo_dirs = {}, [""]  # this test's own, not MemoryFileSystem's shared ones

        @classmethod
        def _strip_protocol(cls, path):
            return "/" + (path[len("gs://"):] if path.startswith("gs://") else path).lstrip("/")

    bucket = Bucket(skip_instance_cache=True)

    class InMemoryGcs(backend._FileSystemSpecBackend):
        def fs(self, path):
            return bucket

        def glob(self, path):  # fsspec's memory glob does not see these keys; match them directly
            pattern = bucket._strip_protocol(path)
            return sorted("gs:/" + p for p in bucket.store if fnmatch.fnmatchcase(p, pattern))

    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)  # else epath sends gs:// to tf.io.gfile
    monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, "gs", InMemoryGcs())
    return bucket
