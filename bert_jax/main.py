"""Train or fine-tune from an experiment file.

    python -m bert_jax.main --config experiments/pretrain.py:base --workdir DIR [--config.key=value ...]
    python -m bert_jax.main --config experiments/finetune_tsv.py:sentiment --print_config   # and exit
    python -m bert_jax.main --config experiments/finetune_tsv.py --help   # the experiment's arguments

The config is locked before the overrides apply, so an unknown or misspelled key is an error
(a one-line message naming the flag and suggesting the full one). Any user error (config, data,
path, a workdir in use) prints one line and exits 2; BERT_JAX_DEBUG=1 shows the traceback.
Re-running the same command in the same workdir resumes from its newest checkpoint.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from bert_jax import cli_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "experiment file: path/to/file.py:arg (`--config FILE --help` lists its arguments)",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints, metrics and results")
_PRINT_CONFIG = flags.DEFINE_bool("print_config", False,
                                  "print the config (after the --config.* overrides, locked) as JSON and exit")
flags.mark_flag_as_required("config")


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        config = _CONFIG.value
        list(config.keys())  # a config file that failed to load raises on first use
    except (OSError, ImportError, SyntaxError, AttributeError, KeyError, TypeError, ValueError) as e:
        _fail(sys.argv, e)
    if _PRINT_CONFIG.value:
        print(config.to_json_best_effort(indent=2, sort_keys=True))
        return 0
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required (or --print_config to print the config and exit)")
    logging.getLogger("bert_jax").setLevel(logging.INFO)
    # orbax logs every file rename of every save at INFO through absl; keep its warnings only.
    absl_logging.set_verbosity(absl_logging.WARNING)

    def run_training():
        from bert_jax import train, train_utils  # after flag parsing: importing jax is slow
        train_utils.maybe_initialize_distributed(config.distributed)
        return train.train_and_evaluate(config, _WORKDIR.value)

    results = cli_flags.run_main(run_training, "bert_jax.main")
    if results["preempted"]:
        logging.warning("stopped at step %d (SIGTERM, Ctrl-C or train.stop_at_step); checkpoint saved; "
                        "rerun the same command to continue", results["step"])
    else:
        print(final_summary(results))
    return 0


def final_summary(results: dict) -> str:
    """The line a finished run ends with: its final metrics, and the best ones if they differ."""
    shown = lambda metrics: ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                      for k, v in sorted(metrics.items())) or "none (no eval data)"
    line = f"finished at step {results['step']}: final metrics {shown(results.get('final_metrics') or {})}"
    best_step = results.get("best_step")
    if best_step is not None and best_step != results["step"]:
        line += f"; best {results.get('main_metric')} at step {best_step}: {shown(results.get('best_metrics') or {})}"
    return line


def _config_file(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _experiment_fields(argv: list[str]) -> list[str]:
    """Every field path of the experiment's config, for suggestions; [] if it cannot be built."""
    spec = _config_file(argv[1:])
    path, _, arg = (spec or "").partition(":")
    if not os.path.isfile(path):
        return []
    try:
        module_spec = importlib.util.spec_from_file_location(f"_experiment_{os.path.basename(path)[:-3]}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return cli_flags.config_paths(module.get_config(arg) if arg else module.get_config())
    except Exception:  # the config's own error is the one reported
        return []


def experiment_help(spec: str) -> str:
    """The experiment file's docstring and its documented arguments (DOCUMENTED_ARGS)."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        return f"{path}: no such experiment file\n"
    module_spec = importlib.util.spec_from_file_location(f"_experiment_{os.path.basename(path)[:-3]}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    documented = getattr(module, "DOCUMENTED_ARGS", None)
    lines = [f"experiment {path}" + (f" (arg {arg!r})" if arg else ""), "", (module.__doc__ or "").strip(), ""]
    if documented is not None:
        lines.append("documented arguments (--config " + path + ":ARG): "
                     + ", ".join(repr(a) if a == "" else a for a in documented))
    lines.append(f"every field and its value: --config {spec or path} --print_config")
    return "\n".join(lines) + "\n"


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with a one-line error (no traceback) for a bad --config / override."""
    if any(a in ("--help", "-h", "-?") for a in argv[1:]):
        spec = _config_file(argv[1:])
        if spec:
            print(experiment_help(spec))
        app.usage(shorthelp=True, writeto_stdout=True, exitcode=0)  # absl's own --help exits 1
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _fail(argv, e)
    except (AttributeError, KeyError, TypeError, ValueError) as e:  # raised by config_flags for an override
        _fail(argv, e)
    return []


def _fail(argv: list[str], error: Exception) -> None:
    message = str(error.args[0] if isinstance(error, (AttributeError, KeyError)) and error.args else error)
    if "Traceback (most recent call last)" in message:  # config_flags quotes the experiment's traceback
        lines = [line.strip() for line in message.splitlines() if line.strip()]
        message = lines[0].split("Traceback")[0].strip() + " " + lines[-1]
    message = message.replace("\\'", "'").replace("\\n", " ").replace("\n", " ").strip()
    message = message[1:-1] if len(message) > 1 and message[0] == message[-1] and message[0] in "'\"" else message
    field = re.match(r"'?([A-Za-z0-9_]+)'?", message)
    # The override whose path holds the unknown name, at any depth (--config.trian.batch_size).
    culprit = next((a.split("=", 1)[0] for a in argv[1:] if field and a.startswith("--config.")
                    and field.group(1) in a.split("=", 1)[0].split(".")[1:]), None)
    where = f"{culprit}: " if culprit else ""
    if culprit and isinstance(error, (AttributeError, KeyError)):
        suggestion = cli_flags.suggest_config_flag(culprit[len("--config."):], _experiment_fields(argv))
        rest = re.sub(r"\s*Did you mean .*$", "", message[field.end():]).strip(" .")
        message = (f"no such config field {field.group(1)!r}" + (f" ({rest})" if rest else "")
                   + (f"; {suggestion}" if suggestion else "."))
    print(f"{os.path.basename(sys.argv[0]) or 'bert_jax.main'}: error: {where}{message}\n"
          f"(see every field: --config FILE:ARG --print_config)", file=sys.stderr)
    sys.exit(2)


def run() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
