"""The nine GLUE tasks, from TFDS `glue/<name>` or from GLUE's own TSV files, with GLUE's metrics
and test-set predictions in the GLUE server's submission format.

Label lists are in TFDS's order (so TFDS's integer labels index them) and spelled as the
GLUE files and the submission server spell them.

Local files: a directory as GLUE's download script leaves it (`train.tsv`, `dev.tsv`,
`test.tsv`; MNLI has `dev_matched.tsv`, `dev_mismatched.tsv`, `test_matched.tsv`,
`test_mismatched.tsv`). Columns are found by their header names, except CoLA's
train/dev files, which have no header (source, label, original label, sentence).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import pathlib
from typing import Sequence


from bert_jax.tasks import classification, tsv

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class GlueSpec:
    tfds_name: str
    text_a: str  # TFDS feature name
    text_b: str | None
    tsv_a: str  # column names in GLUE's TSV headers
    tsv_b: str | None
    tsv_label: str
    label_names: tuple[str, ...] | None  # None: regression (STS-B)
    metric: str  # "accuracy", "accuracy_and_f1", "mcc", "correlation"
    main_metric: str
    submission_files: tuple[str, ...]  # one per test split
    eval_splits: tuple[str, ...] = ("validation",)
    test_splits: tuple[str, ...] = ("test",)
    tsv_eval_files: tuple[str, ...] = ("dev.tsv",)
    tsv_test_files: tuple[str, ...] = ("test.tsv",)
    headerless_columns: tuple[str, ...] | None = None  # train/dev files without a header


_ENTAILMENT2 = ("entailment", "not_entailment")

GLUE_TASKS: dict[str, GlueSpec] = {
    "cola": GlueSpec("cola", "sentence", None, "sentence", None, "label", ("0", "1"), "mcc", "mcc", ("CoLA.tsv",),
                     headerless_columns=("source", "label", "original_label", "sentence")),
    "sst2": GlueSpec("sst2", "sentence", None, "sentence", None, "label", ("0", "1"), "accuracy", "accuracy", ("SST-2.tsv",)),
    "mrpc": GlueSpec("mrpc", "sentence1", "sentence2", "#1 String", "#2 String", "Quality", ("0", "1"),
                     "accuracy_and_f1", "f1", ("MRPC.tsv",)),
    "stsb": GlueSpec("stsb", "sentence1", "sentence2", "sentence1", "sentence2", "score", None,
                     "correlation", "pearson", ("STS-B.tsv",)),
    "qqp": GlueSpec("qqp", "question1", "question2", "question1", "question2", "is_duplicate", ("0", "1"),
                    "accuracy_and_f1", "accuracy", ("QQP.tsv",)),
    "mnli": GlueSpec("mnli", "premise", "hypothesis", "sentence1", "sentence2", "gold_label",
                     ("entailment", "neutral", "contradiction"), "accuracy", "accuracy_matched",
                     ("MNLI-m.tsv", "MNLI-mm.tsv"),
                     eval_splits=("validation_matched", "validation_mismatched"),
                     test_splits=("test_matched", "test_mismatched"),
                     tsv_eval_files=("dev_matched.tsv", "dev_mismatched.tsv"),
                     tsv_test_files=("test_matched.tsv", "test_mismatched.tsv")),
    "qnli": GlueSpec("qnli", "question", "sentence", "question", "sentence", "label", _ENTAILMENT2,
                     "accuracy", "accuracy", ("QNLI.tsv",)),
    "rte": GlueSpec("rte", "sentence1", "sentence2", "sentence1", "sentence2", "label", _ENTAILMENT2,
                    "accuracy", "accuracy", ("RTE.tsv",)),
    "wnli": GlueSpec("wnli", "sentence1", "sentence2", "sentence1", "sentence2", "label", ("0", "1"),
                     "accuracy", "accuracy", ("WNLI.tsv",)),
}

_METRICS = {
    "accuracy": classification.accuracy_metrics,
    "accuracy_and_f1": classification.accuracy_and_f1_metrics,
    "mcc": classification.mcc_metrics,
    "correlation": classification.correlation_metrics,
}

_SET_NAMES = {"validation_matched": "matched", "validation_mismatched": "mismatched",
              "test_matched": "matched", "test_mismatched": "mismatched"}


def get_spec(name: str) -> GlueSpec:
    key = name.lower().replace("-", "").replace("glue/", "")
    if key not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {name!r}; expected one of {sorted(GLUE_TASKS)}")
    return GLUE_TASKS[key]


# ---- reading ----------------------------------------------------------------------------------


def read_tfds(spec: GlueSpec, split: str, data_dir: str | None = None) -> list[classification.TextExample]:
    """Examples of one TFDS split; test splits (label -1) come back unlabelled."""
    import tensorflow_datasets as tfds

    dataset = tfds.load(f"glue/{spec.tfds_name}", split=split, data_dir=data_dir)
    examples = []
    for row in tfds.as_numpy(dataset):
        raw_label = row["label"]
        if spec.label_names is None:
            label = float(raw_label) if split.startswith(("train", "validation")) else None
        else:
            label = spec.label_names[int(raw_label)] if int(raw_label) >= 0 else None
        examples.append(
            classification.TextExample(
                guid=str(int(row["idx"])),
                text_a=row[spec.text_a].decode("utf-8"),
                text_b=row[spec.text_b].decode("utf-8") if spec.text_b else None,
                label=label,
            )
        )
    return examples


def read_tsv(spec: GlueSpec, path: pathlib.Path, labelled: bool) -> list[classification.TextExample]:
    """One GLUE TSV file. Test files have an `index` column and no label; guids are that index."""
    path = pathlib.Path(path)
    if spec.headerless_columns and labelled:
        rows = tsv.read_rows(path, spec.headerless_columns)
    else:
        rows = tsv.read_rows(path)
    examples = []
    for line_number, row in rows:
        missing = [c for c in (spec.tsv_a, spec.tsv_b, spec.tsv_label if labelled else None) if c and c not in row]
        if missing:
            raise ValueError(f"{path}:{line_number}: no column {missing[0]!r} in a GLUE {spec.tfds_name} file; found {sorted(row)}")
        guid = row.get("index", row.get("id", f"{path.name}:{line_number}"))
        examples.append(
            classification.TextExample(
                guid=guid,
                text_a=row[spec.tsv_a],
                text_b=row[spec.tsv_b] if spec.tsv_b else None,
                label=row[spec.tsv_label].strip() if labelled else None,
            )
        )
    return examples


class GlueTask(classification.SequenceClassificationTask):
    """A GLUE task; `test_sets` hold the unlabelled test splits for `write_submission`."""

    def __init__(self, spec: GlueSpec, *, test_sets: dict[str, list], **kwargs):
        super().__init__(
            name=f"glue/{spec.tfds_name}",
            label_names=spec.label_names,
            metric_fn=_METRICS[spec.metric],
            main_metric=spec.main_metric,
            **kwargs,
        )
        self.spec = spec
        self.test_sets = test_sets

    def test_task(self) -> "GlueTask":
        """The same task with the test splits as its eval sets (for `write_submission`)."""
        return GlueTask(
            self.spec,
            test_sets=self.test_sets,
            tokenizer=self.tokenizer,
            train_examples=[],
            eval_sets=self.test_sets,
            max_seq_length=self.max_seq_length,
            head=self.head,
        )

    def _features(self, examples, what, labelled=True):
        # Test splits have no labels: features without the label column.
        labelled = labelled and all(e.label is not None for e in examples)
        return super()._features(examples, what, labelled)

    def write_submission(self, predictions, batches, directory) -> list[pathlib.Path]:
        """GLUE server files (`SST-2.tsv`, `MNLI-m.tsv`, ...): header `index\\tprediction`.

        `predictions`/`batches` come from running `predict` over `test_task().eval_batches`.
        """
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        rows_by_set: dict[str, list] = {name: [] for name in self.test_sets}
        for set_name, example, shown in self.prediction_rows(predictions, batches):
            rows_by_set[set_name].append((example.guid, shown))
        paths = []
        for (set_name, rows), file_name in zip(rows_by_set.items(), self.spec.submission_files):
            path = directory / file_name
            with open(path, "w", encoding="utf-8", newline="") as f:
                writer = csv.writer(f, delimiter="\t", lineterminator="\n")
                writer.writerow(["index", "prediction"])
                for guid, shown in sorted(rows, key=lambda r: int(r[0]) if str(r[0]).isdigit() else r[0]):
                    writer.writerow([guid, f"{shown:.3f}" if isinstance(shown, float) else shown])
            paths.append(path)
        return paths


def make_glue_task(
    name: str,
    *,
    tokenizer,
    max_seq_length: int,
    data_dir: str = "",
    tfds_data_dir: str | None = None,
    train_split: str = "train",
    head=None,
) -> GlueTask:
    """GLUE task `name`, from GLUE's TSV files in `data_dir` if given, else from TFDS; `head`
    (features.HeadOptions) is the head on the encoder (default BERT's linear one)."""
    spec = get_spec(name)
    set_name = lambda split: _SET_NAMES.get(split, "")  # noqa: E731
    if data_dir:
        root = pathlib.Path(data_dir)
        train = read_tsv(spec, root / "train.tsv", labelled=True)
        eval_sets = {set_name(s): read_tsv(spec, root / f, labelled=True) for s, f in zip(spec.eval_splits, spec.tsv_eval_files)}
        test_sets = {
            set_name(s): read_tsv(spec, root / f, labelled=False)
            for s, f in zip(spec.test_splits, spec.tsv_test_files)
            if (root / f).exists()
        }
    else:
        train = read_tfds(spec, train_split, tfds_data_dir)
        eval_sets = {set_name(s): read_tfds(spec, s, tfds_data_dir) for s in spec.eval_splits}
        test_sets = {set_name(s): read_tfds(spec, s, tfds_data_dir) for s in spec.test_splits}
    return GlueTask(spec, test_sets=test_sets, tokenizer=tokenizer, train_examples=train, eval_sets=eval_sets,
                    max_seq_length=max_seq_length, head=head)


def submission_file_names(names: Sequence[str] = tuple(GLUE_TASKS)) -> list[str]:
    return [f for n in names for f in get_spec(n).submission_files]


def from_config(config) -> GlueTask:
    """The task of experiments/finetune_glue.py (registry name "glue")."""
    from bert_jax.tasks import finetuning

    head = finetuning.head_options(config)  # bad head fields fail before any file is read
    tokenizer = finetuning.load_tokenizer(config)
    t = config.task
    task = make_glue_task(
        t.glue_task,
        tokenizer=tokenizer,
        max_seq_length=int(config.max_seq_length),
        data_dir=finetuning.data_path(t.data_dir, "task.data_dir") if t.data_dir else "",
        tfds_data_dir=t.tfds_data_dir or None,
        head=head,
    )
    finetuning.resolve(config, tokenizer, task.num_train_examples)
    return task


def write_test_predictions(workdir: str | pathlib.Path, output_dir: str | pathlib.Path | None = None, step: int | None = None):
    """Runs a finished GLUE run's best checkpoint (or `step`) on the test split(s) and writes the
    GLUE server's files into `output_dir` (default: <workdir>/glue_submission).

    The predictions come from the trainer's own prediction loop (`bert_jax.predict.Predictor`) on the run's
    mesh config and eval batch size."""
    import ml_collections

    from bert_jax import predict, run_checkpoints
    from bert_jax import run_files
    from bert_jax.config import BertConfig

    workdir = pathlib.Path(workdir)
    results = run_files.read_results(workdir)
    config = ml_collections.ConfigDict(results["config"])
    task = from_config(config)
    test_task = task.test_task()
    if not test_task.eval_sets or not any(test_task.eval_sets.values()):
        raise ValueError(f"{task.name}: no test split to predict (GLUE TSV directories need test.tsv)")
    params, used_step = run_checkpoints.restore_params(workdir, step if step is not None else results.get("best_step"))
    predictor, params = predict.pretrained_predictor(
        test_task, BertConfig(**config.model.to_dict()), params, f"{workdir} (checkpoint of step {used_step})",
        mesh_config=config.mesh)
    predictions, batches = predictor(params, test_task.eval_batches(int(config.train.eval_batch_size)),
                                     f"the test split(s) of {task.name}")
    paths = test_task.write_submission(predictions, batches, output_dir or workdir / "glue_submission")
    log.info("GLUE test predictions of step %d: %s", used_step, ", ".join(str(p) for p in paths))
    return paths


if __name__ == "__main__":
    import argparse

    logging.basicConfig(level=logging.INFO)
    parser = argparse.ArgumentParser(description="GLUE test-set predictions of a finished fine-tuning run")
    parser.add_argument("--workdir", required=True, help="the run's workdir (holds results.json and checkpoints/)")
    parser.add_argument("--output_dir", default=None, help="default: <workdir>/glue_submission")
    parser.add_argument("--step", type=int, default=None, help="default: the best checkpoint")
    arguments = parser.parse_args()
    write_test_predictions(arguments.workdir, arguments.output_dir, arguments.step)
