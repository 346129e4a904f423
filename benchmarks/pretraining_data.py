"""Throughput and peak memory of create_pretraining_data on each engine. Prints numbers; asserts nothing.

    python benchmarks/pretraining_data.py --input ../shared/data/corpus/janeaustenr.txt \\
        --vocab ../shared/data/vocab/bert-base-uncased-vocab.txt --dupe_factor 5
    python benchmarks/pretraining_data.py --input '../shared/data/corpus/*.txt' --copies 10 \\
        --dupe_factor 10 --docs_per_partition 500 --engines local,beam

Each engine runs as a subprocess (local: --num_workers; beam: DirectRunner, multi_processing,
--direct_num_workers). Memory is sampled every 0.1 s over the whole process tree with psutil:
`peak_rss_max_process_mb` is the largest single process, `peak_rss_main_process_mb` the
command's own process (local: the reader; Beam DirectRunner: the runner, which holds every
shuffle in memory), `peak_rss_max_worker_mb` the largest of its child processes (the workers),
`peak_rss_sum_mb` the largest sum over all of them at one moment. `--copies K` builds a K-times-larger corpus from
the input files, each copy under its own file name (so its documents get their own keys and
partitions). Throughput is instances (and non-padding tokens) written per wall-clock second,
start-up and imports included. Alternate the engines and run on an idle machine.

`dask` runs Beam's DaskRunner on a dask.distributed cluster started for that run as on a real
cluster (tests/dask_cluster.py: a `dask scheduler` process and --workers `dask worker`
processes, one thread each, over TCP on 127.0.0.1). The workers are not children of the command,
so they are sampled by pid: `peak_rss_dask_workers_mb` is each worker's peak during the run and
`dask_workers_idle_mb` its RSS before it (the cluster's own start-up is not in the time).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(command: list[str], watch_pids: tuple[int, ...] = ()) -> dict:
    watched = [psutil.Process(pid) for pid in watch_pids]
    idle = [p.memory_info().rss for p in watched]
    peak_watched = list(idle)
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    root = psutil.Process(process.pid)
    peak_sum = peak_one = peak_root = peak_child = 0
    while process.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            rss = [p.memory_info().rss for p in tree]
        except psutil.NoSuchProcess:
            continue
        peak_sum, peak_one, peak_root = max(peak_sum, sum(rss)), max(peak_one, max(rss)), max(peak_root, rss[0])
        peak_child = max([peak_child, *rss[1:]])
        for i, p in enumerate(watched):
            try:
                peak_watched[i] = max(peak_watched[i], p.memory_info().rss)
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.1)
    out = process.stdout.read()
    seconds = time.perf_counter() - start
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} exited {process.returncode}:\n{out[-3000:]}")
    report = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line and not line.startswith("throughput"))
    instances, tokens = int(report["instances"]), int(report["instance_tokens"])
    return {"instances": instances, "wall_s": round(seconds, 2), "instances_per_s": round(instances / seconds),
            "tokens_per_s": round(tokens / seconds), "partitions": int(report["partitions"]),
            "shards": int(report["shards"]), "peak_rss_max_process_mb": round(peak_one / 2**20),
            "peak_rss_main_process_mb": round(peak_root / 2**20), "peak_rss_max_worker_mb": round(peak_child / 2**20),
            "peak_rss_sum_mb": round(peak_sum / 2**20),
            **({"peak_rss_dask_workers_mb": [round(r / 2**20) for r in peak_watched],
                "dask_workers_idle_mb": [round(r / 2**20) for r in idle]} if watched else {})}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="comma-separated globs of Google-format text files")
    p.add_argument("--vocab", default=os.path.join(REPO, "..", "shared", "data", "vocab", "bert-base-uncased-vocab.txt"))
    p.add_argument("--copies", type=int, default=1)
    p.add_argument("--max_seq_length", type=int, default=128)
    p.add_argument("--max_predictions_per_seq", type=int, default=20)
    p.add_argument("--dupe_factor", type=int, default=5)
    p.add_argument("--docs_per_partition", type=int, default=None)
    p.add_argument("--engines", default="local,beam", help="comma-separated, in order: local, beam (DirectRunner), "
                   "dask (DaskRunner on a local dask.distributed cluster)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--output_format", default="array_record")
    args = p.parse_args(argv)

    # Absolute paths: Dask's workers run in a directory of their own, as on a cluster.
    inputs = sorted(os.path.abspath(f) for pattern in args.input.split(",") for f in glob.glob(pattern))
    args.vocab = os.path.abspath(args.vocab)
    with tempfile.TemporaryDirectory(prefix="bert_jax_bench_") as tmp:
        if args.copies > 1:
            for k in range(args.copies):
                for f in inputs:
                    shutil.copyfile(f, os.path.join(tmp, f"copy{k:02d}_{os.path.basename(f)}"))
            inputs = sorted(glob.glob(os.path.join(tmp, "copy*")))
        size_mb = sum(os.path.getsize(f) for f in inputs) / 1e6
        common = [sys.executable, "-m", "data_pipelines.create_pretraining_data", "--input_file", ",".join(inputs),
                  "--vocab_file", args.vocab, "--max_seq_length", str(args.max_seq_length),
                  "--max_predictions_per_seq", str(args.max_predictions_per_seq), "--dupe_factor", str(args.dupe_factor),
                  "--output_format", args.output_format]
        if args.docs_per_partition:
            common += ["--docs_per_partition", str(args.docs_per_partition)]
        for engine in args.engines.split(","):
            out = os.path.join(tmp, f"out_{engine}")
            cluster = None
            if engine == "local":
                command = common + ["--output_dir", out, "--num_workers", str(args.workers)]
            elif engine == "dask":
                sys.path.insert(0, REPO)
                from tests.dask_cluster import DASK_RUNNER, DaskCluster
                cluster = DaskCluster(tempfile.mkdtemp(prefix="dask_", dir=tmp), workers=args.workers).start()
                command = common + ["--output_dir", out, "--engine", "beam", "--", f"--runner={DASK_RUNNER}",
                                    f"--dask_client_address={cluster.address}"]
            else:
                command = common + ["--output_dir", out, "--engine", "beam", "--", "--runner=DirectRunner",
                                    f"--direct_num_workers={args.workers}", "--direct_running_mode=multi_processing"]
            try:
                result = run(command, tuple(cluster.worker_pids) if cluster else ())
            finally:
                if cluster is not None:
                    cluster.stop()
            print(json.dumps({"engine": engine, "workers": args.workers, "input_mb": round(size_mb, 1),
                              "files": len(inputs), "dupe_factor": args.dupe_factor,
                              "docs_per_partition": args.docs_per_partition, **result}), flush=True)
            shutil.rmtree(out)


if __name__ == "__main__":
    main()
