"""Generic classification or regression on local TSV files, with no code to write.

A file has a header naming its columns: `sentence` (single sentence) or `sentence_a` and
`sentence_b` (pairs), and `label`. Other names can be configured (`text_a_column`, ...), and a
headerless file gets its names from `column_names` (e.g. "label,sentence_a,sentence_b,id" for
the Quora sample). Columns may come in any order; extra columns are ignored.

- String labels are mapped automatically: the sorted set of training labels (numerically
  sorted when all are integers) is the label list, saved in results.
- A label column of non-integer numbers ("3.8") means regression (Pearson/Spearman/MSE).
- Quoting is off (as in GLUE's own files): a `"` is an ordinary character.
"""

from __future__ import annotations

import csv
import logging
import pathlib
import sys
import unicodedata
from typing import Sequence

from bert_jax.tasks import classification

log = logging.getLogger(__name__)

csv.field_size_limit(sys.maxsize)


def read_rows(path: str | pathlib.Path, column_names: Sequence[str] | None = None) -> list[tuple[int, dict]]:
    """(line number, {column: value}) for each data row of a tab-separated file.

    The header gives the names unless `column_names` is given (then the file has no header).
    A row with another number of fields than the header is an error naming the line.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TSV file {path} does not exist")
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        names = list(column_names) if column_names else None
        for line_number, fields in enumerate(_decoded(reader, path), start=1):
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue  # blank line
            if names is None:
                names = [name.strip() for name in fields]
                continue
            if len(fields) != len(names):
                raise ValueError(
                    f"{path}:{line_number}: expected {len(names)} tab-separated fields {names}, found {len(fields)}: {fields!r}"
                )
            rows.append((line_number, dict(zip(names, fields))))
    if names is None:
        raise ValueError(f"{path} is empty")
    return rows


def _decoded(reader, path):
    """The reader's rows, a decoding error named by file and line (a binary file is not a TSV)."""
    line = 0
    try:
        for fields in reader:
            line = reader.line_num
            yield fields
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}:{line + 1}: not UTF-8 text ({e.reason} at byte {e.start} of the chunk read); "
                         f"a TSV file must be UTF-8") from None


def check_label_text(label: str, where: str) -> None:
    """A NUL or other control character in a label would silently become a class of its own."""
    bad = next((c for c in label if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn")), None)
    if bad is not None:
        raise ValueError(f"{where}: label {label!r} holds the control character U+{ord(bad):04X}; "
                         f"a label must be printable text")


def _pick_column(path, available, configured: str, defaults: Sequence[str], what: str, required=True):
    if configured:
        if configured not in available:
            raise ValueError(f"{path}: no column {configured!r} ({what}); the columns are {sorted(available)}")
        return configured
    for name in defaults:
        if name in available:
            return name
    if required:
        raise ValueError(f"{path}: no {what} column; expected one of {list(defaults)}, found {sorted(available)}")
    return None


def read_examples(
    path,
    *,
    text_a_column: str = "",
    text_b_column: str = "",
    label_column: str = "label",
    column_names: Sequence[str] | None = None,
    labelled: bool = True,
) -> list[classification.TextExample]:
    rows = read_rows(path, column_names)
    if not rows:
        raise ValueError(f"{path} has a header but no data rows")
    available = set(rows[0][1])
    column_a = _pick_column(path, available, text_a_column, ("sentence", "sentence_a", "sentence1"), "first text")
    b_defaults = ("sentence_b", "sentence2") if column_a != "sentence" else ()
    column_b = _pick_column(path, available, text_b_column, b_defaults, "second text", required=False)
    if labelled and label_column not in available:
        raise ValueError(f"{path}: no label column {label_column!r}; the columns are {sorted(available)}")
    examples = []
    for line_number, row in rows:
        label = row[label_column].strip() if labelled else None
        if labelled and not label:
            raise ValueError(f"{path}:{line_number}: empty {label_column!r} field")
        if labelled:
            check_label_text(label, f"{path}:{line_number}: column {label_column!r}")
        examples.append(
            classification.TextExample(
                guid=f"{pathlib.Path(path).name}:{line_number}",
                text_a=row[column_a],
                text_b=row[column_b] if column_b else None,
                label=label,
            )
        )
    return examples


def _is_int(text: str) -> bool:
    try:
        int(text)
        return True
    except ValueError:
        return False


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def infer_labels(labels: Sequence[str], task_type: str = "auto") -> list[str] | None:
    """Label names for classification, or None for regression.

    auto: regression when every label is a number and some are not integers.
    """
    if task_type not in ("auto", "classification", "regression"):
        raise ValueError(f"task_type must be auto, classification or regression, got {task_type!r}")
    distinct = sorted(set(labels))
    all_numbers = all(_is_float(label) for label in distinct)
    if task_type == "regression" or (task_type == "auto" and all_numbers and not all(_is_int(x) for x in distinct)):
        if not all_numbers:
            bad = next(label for label in distinct if not _is_float(label))
            raise ValueError(f"regression needs numeric labels, found {bad!r}")
        return None
    if all(_is_int(label) for label in distinct):
        distinct = sorted(distinct, key=int)
    if len(distinct) < 2:
        raise ValueError(f"classification needs at least two labels in the training data, found {distinct}")
    return distinct


def check_eval_labels(examples, label_names: Sequence[str] | None, eval_file, train_file) -> None:
    """Every held-out label is one the model can output, checked before step 1 (else the run
    trains and then fails at its final evaluation)."""
    for e in examples:
        if e.label is None:
            continue
        line = e.guid.rsplit(":", 1)[-1]
        if label_names is None and not _is_float(e.label):
            raise ValueError(f"{eval_file}:{line}: label {e.label!r} is not a number (the task is regression)")
        if label_names is not None and e.label not in label_names:
            raise ValueError(f"{eval_file}:{line}: label {e.label!r} is not one of the labels {list(label_names)} "
                             f"(from {train_file} or config.task.labels)")


def make_tsv_task(
    *,
    tokenizer,
    train_file: str,
    eval_file: str,
    max_seq_length: int,
    text_a_column: str = "",
    text_b_column: str = "",
    label_column: str = "label",
    column_names: str = "",
    task_type: str = "auto",
    label_names: Sequence[str] | None = None,
    name: str = "tsv",
    head=None,
) -> classification.SequenceClassificationTask:
    """`label_names` fixes the label order (else the sorted training labels are used); `head`
    (features.HeadOptions) the head on the encoder (default BERT's linear one)."""
    names = [n.strip() for n in column_names.split(",")] if column_names else None
    read = dict(text_a_column=text_a_column, text_b_column=text_b_column, label_column=label_column, column_names=names)
    train = read_examples(train_file, **read)
    evaluation = read_examples(eval_file, **read)
    if label_names is None or task_type == "regression":
        label_names = infer_labels([e.label for e in train], task_type)
    check_eval_labels(evaluation, label_names, eval_file, train_file)
    if label_names is None:
        metric_fn, main_metric = classification.correlation_metrics, "pearson"
    elif len(label_names) == 2:
        metric_fn, main_metric = classification.accuracy_and_f1_metrics, "accuracy"
    else:
        metric_fn, main_metric = classification.accuracy_metrics, "accuracy"
    log.info("%s: %s with labels %s", name, "regression" if label_names is None else "classification", label_names)
    return classification.SequenceClassificationTask(
        name=name,
        tokenizer=tokenizer,
        train_examples=train,
        eval_sets={"": evaluation},
        label_names=label_names,
        max_seq_length=max_seq_length,
        metric_fn=metric_fn,
        main_metric=main_metric,
        head=head,
    )


def from_config(config) -> classification.SequenceClassificationTask:
    """The task of experiments/finetune_tsv.py (registry name "tsv")."""
    from bert_jax.tasks import finetuning

    head = finetuning.head_options(config)  # bad head fields fail before any file is read
    tokenizer = finetuning.load_tokenizer(config)
    t = config.task
    task = make_tsv_task(
        tokenizer=tokenizer,
        train_file=finetuning.data_path(config.train_file, "train_file"),
        eval_file=finetuning.data_path(config.eval_file, "eval_file"),
        max_seq_length=int(config.max_seq_length),
        text_a_column=t.text_a_column,
        text_b_column=t.text_b_column,
        label_column=t.label_column,
        column_names=t.column_names,
        task_type=t.task_type,
        label_names=[x.strip() for x in t.labels.split(",")] if t.labels else None,
        head=head,
    )
    # Record the label order (or "regression") in the config, so results.json carries it.
    t.labels = "" if task.label_names is None else ",".join(task.label_names)
    t.task_type = "regression" if task.is_regression else "classification"
    finetuning.resolve(config, tokenizer, task.num_train_examples)
    return task
