"""Task registry: `config.task.name` -> the function that builds the task from the whole config.

Entries are "module:function" strings, imported only when used (a fine-tuning task's imports
cost nothing to a pretraining run). Add a task by adding one line.
"""

from __future__ import annotations

import importlib

TASKS = {
    "pretraining": "bert_jax.tasks.pretraining:make_pretraining_task",
    "tsv": "bert_jax.tasks.tsv:from_config",
    "glue": "bert_jax.tasks.glue:from_config",
    "squad": "bert_jax.tasks.squad:from_config",
    "ner": "bert_jax.tasks.ner:from_config",
    "summarization": "bert_jax.tasks.summarization:from_config",
}


def make_task(config):
    """The Task named by `config.task.name`, built from the whole experiment config."""
    name = config.task.name
    if name not in TASKS:
        raise ValueError(f"config.task.name: unknown task {name!r}; expected one of {sorted(TASKS)}")
    module_name, function_name = TASKS[name].split(":")
    return getattr(importlib.import_module(module_name), function_name)(config)
