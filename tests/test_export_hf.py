"""Models that leave bert_jax work unchanged in transformers.

Three real runs through the trainer (a cased pretraining run on create_pretraining_data output,
an uncased string-label TSV classifier, a cased WNUT-16 NER tagger warm-started from the
pretraining run), each exported with `python -m bert_jax.convert --to hf` from its workdir, then
loaded with transformers' AutoModelFor* + AutoTokenizer alone. On real text tokenised by
transformers itself, the ids are bert_jax's and the logits equal our Flax model's within 1e-5;
id2label holds the run's label names.
"""

import json
import pathlib

import jax
import numpy as np
import pytest

from bert_jax import convert, train
from bert_jax.checkpoints import TokenizerExportError, load_pretrained, save_pretrained
from bert_jax.config import BertConfig

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

LOGITS_ATOL = 1e-5


def _corpus_lines(shared_data, name, n, skip=0):
    lines = [l.strip() for l in (shared_data / "corpus" / name).read_text(encoding="utf-8").splitlines()]
    return [l for l in lines if l][skip:skip + n]


@pytest.fixture(scope="module")
def runs(shared_data, tmp_path_factory):
    """Workdirs of three short real runs: pretraining (cased), TSV classification (uncased), NER (cased)."""
    from data_pipelines import create_pretraining_data
    from experiments import finetune_ner, finetune_tsv, pretrain
    from bert_jax.modeling.models import BertModel

    root = tmp_path_factory.mktemp("export_runs")
    cased_vocab = shared_data / "vocab" / "bert-base-cased-vocab.reconstructed.txt"
    uncased_vocab = shared_data / "vocab" / "bert-base-uncased-vocab.txt"

    # 1. Pretraining on create_pretraining_data output (cased): the vocab and do_lower_case are
    #    recorded only in the data's metadata.json.
    text = root / "austen.txt"
    raw = (shared_data / "corpus" / "janeaustenr.txt").read_text(encoding="utf-8").split("\n\n")[:6]
    text.write_text("\n\n".join(doc[:6000] for doc in raw) + "\n", encoding="utf-8")  # 6 documents (chapters)
    create_pretraining_data.main([
        "--input_file", str(text), "--output_dir", str(root / "instances"), "--vocab_file", str(cased_vocab),
        "--do_lower_case", "false", "--max_seq_length", "32", "--max_predictions_per_seq", "5",
        "--dupe_factor", "1", "--num_workers", "1"])
    config = pretrain.get_config("tiny")
    config.model.vocab_size = 28996
    config.model.max_position_embeddings = 64
    config.data.update(input_files=str(root / "instances" / "*.array_record"), max_seq_length=32,
                       max_predictions_per_seq=5, prefetch_batches=0)
    config.task.eval_input_files = ""
    config.train.update(batch_size=8, num_steps=2, log_every=1, eval_every=0, eval_batch_size=8)
    config.optimizer.warmup_steps = 1
    config.checkpoint.update(every_steps=1000, async_save=False)
    config.logging.update(tensorboard=False, progress_bar=False, peak_flops_per_device=1e12)
    devices = jax.devices()[:1]
    train.train_and_evaluate(config, root / "pretrain", devices=devices)

    # 2. String-label classification from an uncased random-init checkpoint, on real reviews.
    uncased = BertConfig.preset("tiny", vocab_size=30522, max_position_embeddings=64)
    params = BertModel(uncased).init(jax.random.PRNGKey(0), np.zeros((1, 8), np.int32))["params"]
    save_pretrained({"bert": jax.device_get(params)}, uncased, root / "uncased_init", format="bert_jax",
                    vocab_file=uncased_vocab)
    rows = (shared_data / "sentiment" / "rotten_tomatoes" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:41]
    names = {"0": "rotten", "1": "fresh"}
    tsv = "sentence\tlabel\n" + "".join(f"{r.split(chr(9))[0]}\t{names[r.split(chr(9))[1]]}\n" for r in rows)
    (root / "reviews.tsv").write_text(tsv, encoding="utf-8")
    config = finetune_tsv.get_config("")
    config.train_file = config.eval_file = str(root / "reviews.tsv")
    config.init_from = str(root / "uncased_init")
    _short_finetune(config)
    train.train_and_evaluate(config, root / "classify", devices=devices)

    # 3. NER, cased, warm-started from the pretraining run's workdir (its vocab comes from there).
    config = finetune_ner.get_config("")
    conll = (shared_data / "ner" / "wnut16" / "train.conll").read_text(encoding="utf-8").split("\n\n")[:40]
    (root / "ner.conll").write_text("\n\n".join(conll) + "\n", encoding="utf-8")
    config.train_file = config.eval_file = str(root / "ner.conll")
    config.init_from = str(root / "pretrain")
    config.lowercase = False
    _short_finetune(config)
    train.train_and_evaluate(config, root / "ner", devices=devices)
    return root


def _short_finetune(config):
    config.max_seq_length = 48
    config.num_epochs = 0
    config.warmup_proportion = -1
    config.train.num_steps = 2
    config.optimizer.warmup_steps = 0
    config.train.batch_size = config.train.eval_batch_size = 8
    config.logging.tensorboard = False
    config.logging.peak_flops_per_device = 1e11


def _export(workdir, out):
    assert convert.main(["--input", str(workdir), "--output", str(out), "--to", "hf"]) == 0
    return out


def _our_logits(workdir, model, hf_batch):
    """Our Flax model on transformers' ids, with our params from the run workdir."""
    _, params = load_pretrained(str(workdir))
    out = model.apply({"params": params}, input_ids=np.asarray(hf_batch["input_ids"], np.int32),
                      token_type_ids=np.asarray(hf_batch["token_type_ids"], np.int32),
                      attention_mask=np.asarray(hf_batch["attention_mask"], np.int32), deterministic=True)
    return jax.tree_util.tree_map(np.asarray, out)


def _check_ids_are_ours(hf_tokenizer, texts, vocab, lowercase):
    from data_pipelines.tokenization import load_tokenizer

    ours = load_tokenizer(vocab, lowercase=lowercase)
    for text in texts:
        expected = ours.encode(text, max_length=100_000)
        n = int(expected["attention_mask"].sum())
        got = hf_tokenizer(text)
        assert got["input_ids"] == expected["input_ids"][:n].tolist(), text
        assert got["token_type_ids"] == [0] * n


@pytest.mark.slow
def test_pretraining_run_round_trips_through_transformers(runs, shared_data, tmp_path):
    from bert_jax.modeling.models import BertForPreTraining

    out = _export(runs / "pretrain", tmp_path / "hf")
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"} <= {
        p.name for p in out.iterdir()}
    assert json.loads((out / "tokenizer_config.json").read_text())["do_lower_case"] is False  # from metadata.json
    tok = transformers.AutoTokenizer.from_pretrained(out)
    texts = _corpus_lines(shared_data, "enwiki_sample.txt", 300, skip=1000)
    _check_ids_are_ours(tok, texts, shared_data / "vocab" / "bert-base-cased-vocab.reconstructed.txt", False)
    assert tok.tokenize("Paris") == ["Paris"]  # cased: not lowercased by transformers' default

    model = transformers.AutoModelForPreTraining.from_pretrained(out).eval()
    batch = tok(texts[:4], texts[4:8], padding=True, truncation=True, max_length=64, return_tensors="np")
    assert batch["token_type_ids"].max() == 1
    with torch.no_grad():
        theirs = model(**{k: torch.from_numpy(v) for k, v in batch.items()})
    ours = _our_logits(runs / "pretrain", BertForPreTraining(load_pretrained(str(runs / "pretrain"))[0]), batch)
    np.testing.assert_allclose(theirs.prediction_logits.numpy(), ours["mlm_logits"], atol=LOGITS_ATOL, rtol=0)
    np.testing.assert_allclose(theirs.seq_relationship_logits.numpy(), ours["nsp_logits"], atol=LOGITS_ATOL, rtol=0)


@pytest.mark.slow
def test_classifier_round_trips_with_its_label_names(runs, shared_data, tmp_path):
    from bert_jax.modeling.models import BertForSequenceClassification

    out = _export(runs / "classify", tmp_path / "hf")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert model.config.id2label == {0: "fresh", 1: "rotten"}  # the TSV's sorted string labels
    assert model.config.label2id == {"fresh": 0, "rotten": 1}
    tok = transformers.AutoTokenizer.from_pretrained(out)
    texts = [r.split("\t")[0] for r in (shared_data / "sentiment" / "rotten_tomatoes" / "test.tsv")
             .read_text(encoding="utf-8").splitlines()[1:201]]
    _check_ids_are_ours(tok, texts, shared_data / "vocab" / "bert-base-uncased-vocab.txt", True)
    assert tok.tokenize("Hello world, free entry!") == ["hello", "world", ",", "free", "entry", "!"]
    batch = tok(texts[:8], padding=True, truncation=True, max_length=64, return_tensors="np")
    with torch.no_grad():
        theirs = model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.numpy()
    ours = _our_logits(runs / "classify", BertForSequenceClassification(
        load_pretrained(str(runs / "classify"))[0], num_labels=2), batch)
    np.testing.assert_allclose(theirs, ours["logits"], atol=LOGITS_ATOL, rtol=0)


@pytest.mark.slow
def test_ner_tagger_round_trips_with_its_tags(runs, shared_data, tmp_path):
    from bert_jax.modeling.models import BertForTokenClassification

    out = _export(runs / "ner", tmp_path / "hf")
    head = json.loads((runs / "ner" / "head.json").read_text())
    model = transformers.AutoModelForTokenClassification.from_pretrained(out).eval()
    assert type(model).__name__ == "BertForTokenClassification"
    assert [model.config.id2label[i] for i in range(len(head["label_names"]))] == head["label_names"]
    assert "B-person" in head["label_names"] and "O" in head["label_names"]
    tok = transformers.AutoTokenizer.from_pretrained(out)
    tweets = [" ".join(line.split("\t")[0] for line in block.splitlines() if line.strip())
              for block in (shared_data / "ner" / "wnut16" / "dev.conll").read_text(encoding="utf-8").split("\n\n")]
    tweets = [t for t in tweets if t][:100]
    _check_ids_are_ours(tok, tweets, shared_data / "vocab" / "bert-base-cased-vocab.reconstructed.txt", False)
    batch = tok(tweets[:8], padding=True, truncation=True, max_length=64, return_tensors="np")
    with torch.no_grad():
        theirs = model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.numpy()
    config = load_pretrained(str(runs / "ner"))[0]
    ours = _our_logits(runs / "ner", BertForTokenClassification(config, num_labels=len(head["label_names"])), batch)
    np.testing.assert_allclose(theirs, ours["logits"], atol=LOGITS_ATOL, rtol=0)


# ------------------------------------------------------------------ exports that cannot work fail whole
def _tiny_params(vocab_size):
    from bert_jax.modeling.models import BertModel

    config = BertConfig.preset("tiny", vocab_size=vocab_size, max_position_embeddings=64)
    params = BertModel(config).init(jax.random.PRNGKey(0), np.zeros((1, 8), np.int32))["params"]
    return config, {"bert": jax.device_get(params)}


def test_sentencepiece_vocab_is_refused_and_nothing_is_written(tmp_path):
    from data_pipelines import train_vocab

    text = tmp_path / "t.txt"
    text.write_text("".join(f"the quick brown fox {i} jumps over the lazy dog\n" for i in range(300)))
    model_file = train_vocab.train(str(text), 60, "bpe", str(tmp_path / "spm"))
    config, params = _tiny_params(60)
    with pytest.raises(TokenizerExportError, match=r"SentencePiece .*format='bert_jax'"):
        save_pretrained(params, config, tmp_path / "out", format="hf", vocab_file=model_file)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")]


def test_vocab_without_special_tokens_is_refused_and_old_directory_kept(tmp_path):
    config, params = _tiny_params(99)
    (tmp_path / "v.txt").write_text("".join(f"tok{i}\n" for i in range(99)))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(TokenizerExportError, match=r"v.txt.*lacks the special token\(s\) \[PAD\]"):
        save_pretrained(params, config, out, format="hf", vocab_file=tmp_path / "v.txt")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_convert_without_a_vocab_refuses_hf_export(tmp_path, capsys):
    from bert_jax.checkpoints import native

    config, params = _tiny_params(99)
    save_pretrained(params, config, tmp_path / "native", format="bert_jax")
    assert convert.main(["--input", str(tmp_path / "native"), "--output", str(tmp_path / "hf"), "--to", "hf"]) == 1
    assert "no vocabulary found" in capsys.readouterr().err and not (tmp_path / "hf").exists()
    assert convert.main(["--input", str(tmp_path / "native"), "--output", str(tmp_path / "hf"), "--to", "hf",
                         "--no_tokenizer"]) == 0
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["config.json", "model.safetensors"]


def test_hf_to_hf_keeps_casing_labels_and_the_token_head(shared_data, tmp_path):
    """A transformers-written cased BertForTokenClassification with named tags, through convert --to hf:
    casing from its tokenizer_config.json, id2label and the head class survive."""
    import shutil

    torch.manual_seed(0)
    tags = {0: "O", 1: "B-loc", 2: "I-loc"}
    source = tmp_path / "source"
    transformers.BertForTokenClassification(transformers.BertConfig(
        vocab_size=28996, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=64, id2label=tags, label2id={v: k for k, v in tags.items()})).save_pretrained(source)
    shutil.copy(shared_data / "vocab" / "bert-base-cased-vocab.reconstructed.txt", source / "vocab.txt")
    (source / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    out = _export(source, tmp_path / "out")
    model = transformers.AutoModelForTokenClassification.from_pretrained(out)
    assert type(model).__name__ == "BertForTokenClassification" and model.config.id2label == tags
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok.tokenize("Paris") == ["Paris"]
