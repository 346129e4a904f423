"""GLUE: TFDS glue/sst2 and glue/stsb end to end through the task code, GLUE's TSV layouts for all
nine tasks, metrics per task and the server's submission files."""

import csv

import numpy as np
import pytest

from bert_jax.tasks import features as features_lib
from bert_jax.tasks import glue


@pytest.fixture(scope="module")
def tokenizer(shared_data):
    return features_lib.load_tokenizer(shared_data / "vocab" / "bert-base-uncased-vocab.txt", lowercase=True)


def _perfect_predictions(task, batches):
    """Logits (or scores) that reproduce the gold labels."""
    out = []
    for b in batches:
        if task.is_regression:
            out.append({"score": b["label"].astype(np.float32)})
        else:
            out.append({"logits": np.eye(task.num_labels, dtype=np.float32)[b["label"]]})
    return out


def _mock_glue(tfds, tf, rows_by_split):
    def as_dataset(self, split, **kwargs):
        rows = rows_by_split[str(split)]
        columns = {k: [r[k] for r in rows] for k in rows[0]}
        return tf.data.Dataset.from_tensor_slices(columns)

    return tfds.testing.mock_data(as_dataset_fn=as_dataset)


SST2_ROWS = [
    {"idx": 0, "sentence": "a gorgeous , witty , seductive movie .", "label": 1},
    {"idx": 1, "sentence": "the plot is nothing but boilerplate clichés .", "label": 0},
    {"idx": 2, "sentence": "an utterly charming and hilarious film .", "label": 1},
]


def test_tfds_sst2_end_to_end(tokenizer, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    tf = pytest.importorskip("tensorflow")
    test_rows = [dict(r, label=-1) for r in SST2_ROWS]
    with _mock_glue(tfds, tf, {"train": SST2_ROWS, "validation": SST2_ROWS, "test": test_rows}):
        task = glue.make_glue_task("sst2", tokenizer=tokenizer, max_seq_length=32)
    assert [e.label for e in task.train_examples] == ["1", "0", "1"]
    assert task.test_sets[""][0].label is None
    batch = next(task.train_iterator(batch_size=2, seed=0))
    assert batch["input_ids"].shape == (2, 32) and batch["label"].dtype == np.int32
    batches = task.eval_batches(2)  # 3 examples: the second batch is padded
    assert batches[-1]["example_weight"].tolist() == [1.0, 0.0]
    assert task.evaluate(_perfect_predictions(task, batches), batches) == {"accuracy": 1.0}
    # Test split -> SST-2.tsv with "index<TAB>prediction".
    test_task = task.test_task()
    test_batches = test_task.eval_batches(2)
    logits = [{"logits": np.tile([[0.0, 1.0]], (len(b["input_ids"]), 1))} for b in test_batches]
    (path,) = test_task.write_submission(logits, test_batches, tmp_path)
    assert path.name == "SST-2.tsv"
    assert path.read_text().splitlines() == ["index\tprediction", "0\t1", "1\t1", "2\t1"]


def test_tfds_stsb_regression_end_to_end(tokenizer, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    tf = pytest.importorskip("tensorflow")
    rows = [
        {"idx": i, "sentence1": f"A man is playing a {w}.", "sentence2": f"A man plays the {w}.", "label": float(s)}
        for i, (w, s) in enumerate([("guitar", 4.8), ("flute", 3.2), ("piano", 0.5), ("drum", 2.25)])
    ]
    with _mock_glue(tfds, tf, {"train": rows, "validation": rows, "test": rows}):
        task = glue.make_glue_task("stsb", tokenizer=tokenizer, max_seq_length=32)
    assert task.is_regression and task.num_labels == 1 and task.main_metric == "pearson"
    batches = task.eval_batches(4)
    assert batches[0]["label"].dtype == np.float32
    assert np.all(batches[0]["token_type_ids"].max(axis=1) == 1)  # pairs: segment B present
    result = task.evaluate(_perfect_predictions(task, batches), batches)
    assert result["pearson"] == pytest.approx(1.0) and result["spearman"] == pytest.approx(1.0)
    (path,) = task.test_task().write_submission(_perfect_predictions(task, batches), batches, tmp_path)
    assert path.name == "STS-B.tsv" and path.read_text().splitlines()[1] == "0\t4.800"


# GLUE's own file layouts (headers as the GLUE download script leaves them).
GLUE_FILES = {
    "cola": {
        "train.tsv": "gj04\t1\t\tOur friends won't buy this analysis, let alone the next one we propose.\n"
        "gj04\t0\t*\tThey drank the pub.\n",
        "dev.tsv": "gj04\t1\t\tThe sailors rode the breeze clear of the rocks.\n"
        "gj04\t0\t*\tThe more we study verbs, the crazier they get get.\n",
        "test.tsv": "index\tsentence\n0\tBill whistled past the house.\n1\tThe car honked down the road.\n",
    },
    "mrpc": {
        "train.tsv": "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        '1\t702876\t702977\tAmrozi accused his brother , whom he called " the witness " .\tReferring to him as only " the witness " , Amrozi accused his brother .\n'
        "0\t2108705\t2108831\tYucaipa owned Dominick 's before selling the chain .\tYucaipa bought Dominick 's in 1995 .\n",
        "dev.tsv": "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        "1\t1355540\t1355592\tHe said the foodservice pie business doesn 't fit .\tThe foodservice pie business does not fit .\n"
        "0\t2029631\t2029565\tMagnarelli said Racicot hated the Iraqi regime .\tHis wife said he was 100 percent behind George Bush .\n",
        "test.tsv": "index\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        "0\t1089874\t1089925\tPCCW 's chief operating officer will leave .\tThe chief operating officer will leave .\n",
    },
    "stsb": {
        "train.tsv": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
        "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane is taking off.\tAn air plane is taking off.\t5.000\n"
        "1\tmain-captions\tMSRvid\t2012test\t0004\tnone\tnone\tA man is playing a large flute.\tA man is playing a flute.\t3.800\n",
        "dev.tsv": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
        "0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man with a hard hat is dancing.\tA man wearing a hard hat is dancing.\t5.000\n"
        "1\tmain-captions\tMSRvid\t2012test\t0002\tnone\tnone\tA young child is riding a horse.\tA child is riding a horse.\t4.750\n",
        "test.tsv": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\n"
        "0\tmain-captions\tMSRvid\t2012test\t0024\tnone\tnone\tA girl is styling her hair.\tA girl is brushing her hair.\n",
    },
    "qqp": {
        "train.tsv": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
        "133273\t213221\t213222\tHow is the life of a math student?\tWhich level of prepration is enough?\t0\n"
        "402555\t536040\t536041\tHow do I control my horny emotions?\tHow do you control your horniness?\t1\n",
        "dev.tsv": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
        "201359\t303345\t303346\tWhy are African-Americans so beautiful?\tWhy are hispanics so beautiful?\t0\n"
        "263843\t69383\t380476\tI want to pursue PhD in Computer Science?\tI handle social media for a non-profit.\t1\n",
        "test.tsv": "id\tquestion1\tquestion2\n0\tWould the idea of Trump work?\tWhat is the reaction?\n",
    },
    "mnli": {
        "train.tsv": "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n"
        "0\t31193\t31193n\tgovernment\t( x )\t( y )\t(ROOT x)\t(ROOT y)\tConceptually cream skimming has two basic dimensions.\tProduct and geography are what make cream skimming work.\tneutral\tneutral\n"
        "1\t101457\t101457e\ttelephone\t( x )\t( y )\t(ROOT x)\t(ROOT y)\tyou know during the season.\tYou lose the things.\tentailment\tentailment\n",
        "dev_matched.tsv": "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n"
        "0\t63735\t63735n\tslate\t( x )\t( y )\t(ROOT x)\t(ROOT y)\tThe new rights are nice enough\tEveryone really likes the newest benefits\tneutral\tentailment\tneutral\tneutral\tneutral\tneutral\n"
        "1\t91383\t91383c\tgovernment\t( x )\t( y )\t(ROOT x)\t(ROOT y)\tThis site includes a list.\tThe Government Executive articles are not available.\tcontradiction\tcontradiction\tcontradiction\tcontradiction\tcontradiction\tcontradiction\n",
        "dev_mismatched.tsv": "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n"
        "0\t75290\t75290c\tletters\t( x )\t( y )\t(ROOT x)\t(ROOT y)\tYour contribution helped make it possible.\tYour contributions were of no help.\tcontradiction\tcontradiction\tcontradiction\tcontradiction\tcontradiction\tcontradiction\n",
        "test_matched.tsv": "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2\n"
        "0\t31493\t31493\tgovernment\t( x )\t( y )\t(ROOT x)\t(ROOT y)\tHierbas is a name.\tHierbas is a type of drink.\n",
        "test_mismatched.tsv": "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2\n"
        "0\t214571\t214571\tnineeleven\t( x )\t( y )\t(ROOT x)\t(ROOT y)\tWhat have you decided?\tWhat are you going to do?\n",
    },
    "qnli": {
        "train.tsv": "index\tquestion\tsentence\tlabel\n"
        "0\tWhen did the third Digimon series begin?\tUnlike the two seasons before it, it was darker.\tnot_entailment\n"
        "1\tWhich missile batteries often have individual launchers?\tThe missile batteries have launchers several kilometres apart.\tentailment\n",
        "dev.tsv": "index\tquestion\tsentence\tlabel\n0\tWhat came into force after the new constitution?\tThe Treaty came into force.\tentailment\n",
        "test.tsv": "index\tquestion\tsentence\n0\tWhat organization is devoted to Jihad?\tFor some, Jihad is defensive.\n",
    },
    "rte": {
        "train.tsv": "index\tsentence1\tsentence2\tlabel\n0\tNo Weapons of Mass Destruction Found in Iraq Yet.\tWeapons of Mass Destruction Found in Iraq.\tnot_entailment\n"
        "1\tA place of sorrow, after Pope John Paul II died.\tPope Benedict XVI is the new leader.\tentailment\n",
        "dev.tsv": "index\tsentence1\tsentence2\tlabel\n0\tDana Reeve died of lung cancer.\tChristopher Reeve had an accident.\tnot_entailment\n",
        "test.tsv": "index\tsentence1\tsentence2\n0\tMangla was a dam.\tMangla Dam is in Pakistan.\n",
    },
    "wnli": {
        "train.tsv": "index\tsentence1\tsentence2\tlabel\n0\tI stuck a pin through a carrot.\tThe carrot had a hole.\t1\n1\tJohn couldn't see the stage.\tJohn is so tall.\t0\n",
        "dev.tsv": "index\tsentence1\tsentence2\tlabel\n0\tThe drain is clogged with hair.\tThe hair has to be cleaned.\t0\n",
        "test.tsv": "index\tsentence1\tsentence2\n0\tMaude and Dora had seen the trains.\tHorses ran away.\n",
    },
    "sst2": {
        "train.tsv": "sentence\tlabel\nhide new secretions from the parental units \t0\nthat loves its characters \t1\n",
        "dev.tsv": "sentence\tlabel\nit 's a charming and often affecting journey . \t1\nunflinchingly bleak \t0\n",
        "test.tsv": "index\tsentence\n0\tuneasy mishmash of styles and genres .\n",
    },
}

EXPECTED_METRICS = {
    "cola": {"mcc", "accuracy"},
    "sst2": {"accuracy"},
    "mrpc": {"accuracy", "f1"},
    "stsb": {"pearson", "spearman", "mse"},
    "qqp": {"accuracy", "f1"},
    "mnli": {"accuracy_matched", "accuracy_mismatched"},
    "qnli": {"accuracy"},
    "rte": {"accuracy"},
    "wnli": {"accuracy"},
}


@pytest.mark.parametrize("name", sorted(GLUE_FILES))
def test_glue_tsv_layouts(tokenizer, tmp_path, name):
    for file_name, text in GLUE_FILES[name].items():
        (tmp_path / file_name).write_text(text, encoding="utf-8")
    task = glue.make_glue_task(name, tokenizer=tokenizer, max_seq_length=48, data_dir=str(tmp_path))
    spec = glue.get_spec(name)
    assert len(task.train_examples) == 2
    assert all(e.label is not None for e in task.train_examples)
    assert all((e.text_b is not None) == (spec.text_b is not None) for e in task.train_examples)
    batches = task.eval_batches(4)
    result = task.evaluate(_perfect_predictions(task, batches), batches)
    assert set(result) == EXPECTED_METRICS[name]
    assert result[task.main_metric] == pytest.approx(1.0)
    # Test files -> the server's file names, one row per test example, labels spelled as GLUE expects.
    test_task = task.test_task()
    test_batches = test_task.eval_batches(4)
    fake = [{"score": np.zeros(4, np.float32)} if task.is_regression else {"logits": np.zeros((4, task.num_labels), np.float32)}
            for _ in test_batches]
    paths = test_task.write_submission(fake, test_batches, tmp_path / "out")
    assert [p.name for p in paths] == list(spec.submission_files)
    for path in paths:
        rows = list(csv.reader(path.open(), delimiter="\t"))
        assert rows[0] == ["index", "prediction"] and rows[1][0] == "0"
        if spec.label_names:
            assert rows[1][1] == spec.label_names[0]


def test_glue_tsv_errors_name_file_and_line(tokenizer, tmp_path):
    (tmp_path / "train.tsv").write_text("sentence\tlabel\nfine\t1\nbroken line without label\n")
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\nok\t0\n")
    with pytest.raises(ValueError, match=r"train.tsv:3: expected 2 tab-separated fields"):
        glue.make_glue_task("sst2", tokenizer=tokenizer, max_seq_length=16, data_dir=str(tmp_path))
    (tmp_path / "train.tsv").write_text("sentence\tlabel\nfine\tpositive\n")
    task = glue.make_glue_task("sst2", tokenizer=tokenizer, max_seq_length=16, data_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"train.tsv:2 has label 'positive'; expected one of \['0', '1'\]"):
        task.train_features


def test_unknown_task_is_an_error():
    with pytest.raises(ValueError, match="unknown GLUE task 'sst3'"):
        glue.get_spec("sst3")


# ---- imperfect predictions: the written dev predictions, scored by sklearn/scipy ---------------

LABEL_COLUMN = {"cola": 1, "mrpc": "Quality", "qqp": "is_duplicate", "mnli": "gold_label", "stsb": "score"}


def _rows(text, headerless):
    rows = [r for r in csv.reader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE) if r]
    return (None, rows) if headerless else (rows[0], rows[1:])


def _write_dev_file(path, template, name, count, rng):
    """`count` rows in the layout of `template` (GLUE's own file), texts cycled, labels drawn;
    returns {guid as GLUE's reader names it: gold label}."""
    header, rows = _rows(template, headerless=name == "cola")
    spec = glue.get_spec(name)
    label_at = LABEL_COLUMN[name] if header is None else header.index(LABEL_COLUMN[name])
    id_at = next((header.index(c) for c in ("index", "id") if header and c in header), None)
    gold, lines = {}, ([header] if header else [])
    for i in range(count):
        row = list(rows[i % len(rows)])
        row[label_at] = f"{rng.uniform(0, 5):.3f}" if spec.label_names is None else str(rng.choice(spec.label_names))
        if id_at is not None:
            row[id_at] = str(i)
        lines.append(row)
        gold[str(i) if id_at is not None else f"{path.name}:{len(lines)}"] = row[label_at]
    path.write_text("".join("\t".join(r) + "\n" for r in lines), encoding="utf-8")
    return gold


@pytest.mark.parametrize("name", ["cola", "mrpc", "qqp", "mnli", "stsb"])
def test_written_dev_predictions_scored_by_sklearn_give_the_reported_metrics(tokenizer, tmp_path, name):
    import scipy.stats
    import sklearn.metrics

    rng = np.random.default_rng(len(name))
    files = GLUE_FILES[name]
    for file_name, text in files.items():
        (tmp_path / file_name).write_text(text, encoding="utf-8")
    template = files["dev_matched.tsv" if name == "mnli" else "dev.tsv"]
    # MNLI's two dev sets differ in size and labels, so routing one to the other shows.
    sizes = {"dev_matched.tsv": 23, "dev_mismatched.tsv": 17} if name == "mnli" else {"dev.tsv": 29}
    gold = {f: _write_dev_file(tmp_path / f, template, name, n, rng) for f, n in sizes.items()}
    task = glue.make_glue_task(name, tokenizer=tokenizer, max_seq_length=48, data_dir=str(tmp_path))
    batches = task.eval_batches(8)
    predictions = [{"score": rng.uniform(0, 5, len(b["input_ids"])).astype(np.float32)} if task.is_regression else
                   {"logits": rng.normal(size=(len(b["input_ids"]), task.num_labels)).astype(np.float32)}
                   for b in batches]
    reported = task.evaluate(predictions, batches)
    task.write_predictions(predictions, batches, tmp_path / "predictions")
    written = list(csv.DictReader((tmp_path / "predictions").open(encoding="utf-8"), delimiter="\t"))
    set_of_file = {"dev_matched.tsv": "matched", "dev_mismatched.tsv": "mismatched", "dev.tsv": ""}
    expected = {}
    for file_name, labels in gold.items():
        rows = [r for r in written if r["eval_set"] == set_of_file[file_name]]
        assert sorted(r["guid"] for r in rows) == sorted(labels)
        y_true = [labels[r["guid"]] for r in rows]
        y_pred = [r["prediction"] for r in rows]
        suffix = f"_{set_of_file[file_name]}" if name == "mnli" else ""
        if name == "stsb":
            t, p = np.asarray(y_true, float), np.asarray(y_pred, float)
            expected.update(pearson=scipy.stats.pearsonr(p, t)[0], spearman=scipy.stats.spearmanr(p, t)[0],
                            mse=float(np.mean((p - t) ** 2)))
            continue
        expected[f"accuracy{suffix}"] = sklearn.metrics.accuracy_score(y_true, y_pred)
        if name in ("mrpc", "qqp"):  # F1 of the paraphrase / duplicate class, "1"
            expected["f1"] = sklearn.metrics.f1_score(y_true, y_pred, pos_label="1")
        if name == "cola":
            expected["mcc"] = sklearn.metrics.matthews_corrcoef(y_true, y_pred)
    assert reported == pytest.approx(expected, rel=1e-5)  # STS-B predictions are float32 scores
    assert all(0.0 < abs(v) < 1.0 for k, v in expected.items() if k != "mse")  # imperfect, not degenerate


def test_mnli_submission_files_hold_their_own_test_set(tokenizer, tmp_path):
    """MNLI-m.tsv gets test_matched's rows and MNLI-mm.tsv test_mismatched's, each with the
    label of its own logits (sets of different sizes, so a swap shows)."""
    files = dict(GLUE_FILES["mnli"])
    for key, count in (("test_matched.tsv", 5), ("test_mismatched.tsv", 3)):
        header, rows = _rows(files[key], headerless=False)
        lines = [header] + [[str(100 * count + i), *rows[0][1:]] for i in range(count)]
        files[key] = "".join("\t".join(r) + "\n" for r in lines)
    for file_name, text in files.items():
        (tmp_path / file_name).write_text(text, encoding="utf-8")
    test_task = glue.make_glue_task("mnli", tokenizer=tokenizer, max_seq_length=48, data_dir=str(tmp_path)).test_task()
    batches = test_task.eval_batches(4)
    rng = np.random.default_rng(0)
    logits = [rng.normal(size=(len(b["input_ids"]), 3)).astype(np.float32) for b in batches]
    paths = test_task.write_submission([{"logits": x} for x in logits], batches, tmp_path / "out")
    assert [p.name for p in paths] == ["MNLI-m.tsv", "MNLI-mm.tsv"]
    # The expected rows straight from the batches: eval_set 0 = matched, then index order.
    names = ("entailment", "neutral", "contradiction")
    expected = {0: [], 1: []}
    for b, x in zip(batches, logits):
        for weight, set_id, i, row in zip(b["example_weight"], b["eval_set"], b["example_index"], x):
            if weight > 0:
                expected[int(set_id)].append([str(100 * (5 if set_id == 0 else 3) + int(i)), names[int(row.argmax())]])
    for set_id, path in enumerate(paths):
        rows = list(csv.reader(path.open(), delimiter="\t"))
        assert rows[0] == ["index", "prediction"] and rows[1:] == expected[set_id]
