"""The text regression data and the BERT pipeline: real parsing of the archive layout, Spearman evaluation."""

import subprocess
import sys

import numpy as np
import pytest
from textfiles import rated_sentences, write_vader_archive

import configs.bert
from dwf_jax import pipeline, text
from dwf_jax.data import DatasetNotFoundError, load_dataset
from dwf_jax.evaluate import spearman
from dwf_jax.validation import validate_config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    write_vader_archive(root)
    return root


def _fingerprint_in_a_new_process(data_dir) -> str:
    """Another interpreter (another hash seed, another tokenizers run) loading the same archive."""
    code = (
        "import sys; from dwf_jax.data import load_dataset; "
        "print(load_dataset('vader_sentiment', sys.argv[1], max_tokens=12, vocab_size=60).fingerprint())"
    )
    result = subprocess.run([sys.executable, "-c", code, str(data_dir)], capture_output=True, text=True, check=True)
    return result.stdout.strip()


def test_sentences_become_the_same_tokens_in_every_process(tmp_path):
    """100 words, each exactly as frequent, so a vocabulary of 60 tokens ties at every rank and leaves words out."""
    lines = {
        corpus: [f"{i}\t{i % 9 - 4}\tword{i % 100}a word{(i + 37) % 100}b" for i in range(200)]
        for corpus in text.VADER_CORPORA
    }
    write_vader_archive(tmp_path, lines=lines)
    dataset = load_dataset("vader_sentiment", str(tmp_path), max_tokens=12, vocab_size=60)
    assert _fingerprint_in_a_new_process(tmp_path) == dataset.fingerprint()
    tokens = np.concatenate([dataset.x_train, dataset.x_test])
    assert not np.any(tokens == text.SPECIAL_TOKENS.index("[UNK]")), "words left out split into characters"


def test_sentences_become_padded_token_ids_with_their_scores(data_dir):
    dataset = load_dataset("vader_sentiment", str(data_dir), max_tokens=12, vocab_size=60)
    assert dataset.regression and len(dataset.x_train) + len(dataset.x_test) == 600
    tokens = np.concatenate([dataset.x_train, dataset.x_test])
    assert tokens.shape[1] == 12 and tokens.dtype == np.int32
    assert np.all(tokens[:, 0] == text.SPECIAL_TOKENS.index("[CLS]")) and 0 < tokens.max() < 60
    assert np.all(np.diff((tokens == 0).astype(int), axis=1) >= 0), "padding (id 0) only at the end"
    scores = np.concatenate([dataset.y_train, dataset.y_test])
    assert scores.dtype == np.float32 and -4 <= scores.min() < 0 < scores.max() <= 4


def test_the_split_does_not_depend_on_the_order_of_the_files(tmp_path):
    rows = {corpus: rated_sentences(50, seed) for seed, corpus in enumerate(text.VADER_CORPORA)}
    lines = {
        corpus: [f"{i}\t{score}\t{words}" for i, score, words in corpus_rows] for corpus, corpus_rows in rows.items()
    }
    splits = []
    for name, order in (("forward", 1), ("backward", -1)):
        write_vader_archive(tmp_path / name, lines={corpus: found[::order] for corpus, found in lines.items()})
        dataset = load_dataset("vader_sentiment", str(tmp_path / name), max_tokens=12, vocab_size=60)
        splits.append(sorted(zip(dataset.y_test.tolist(), map(tuple, dataset.x_test.tolist()), strict=True)))
    assert splits[0] == splits[1] and 20 < len(splits[0]) < 60


def test_a_missing_archive_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"pip download vaderSentiment==3\.3\.2 --no-deps"):
        load_dataset("vader_sentiment", str(tmp_path))


def test_a_damaged_archive_or_rating_is_named(tmp_path):
    (tmp_path / text.VADER_ARCHIVE).parent.mkdir(parents=True)
    (tmp_path / text.VADER_ARCHIVE).write_bytes(b"not a tar")
    with pytest.raises(ValueError, match="is not the vaderSentiment 3.3.2 source archive or is damaged"):
        load_dataset("vader_sentiment", str(tmp_path))
    write_vader_archive(tmp_path, lines={"tweets": ["1_1\t7.5\tfar too happy"]})
    with pytest.raises(ValueError, match="tweets line 1: rating 7.5 outside -4..4"):
        load_dataset("vader_sentiment", str(tmp_path))


def test_spearman_ranks():
    targets = np.array([0.5, -2.0, 3.0, 1.0])
    scores = np.stack([targets * 10 + 1, -targets, np.full(4, 2.0), [1.0, 2.0, 3.0, 4.0]])
    # Last row: target ranks (2, 1, 4, 3) against (1, 2, 3, 4), so 1 - 6 * 4 / (4 * 15) = 0.6.
    np.testing.assert_allclose(spearman(scores, targets), [1.0, -1.0, 0.0, 0.6])


def test_a_vocabulary_without_room_for_every_character_is_refused(data_dir):
    with pytest.raises(ValueError, match=r"data.vocab_size=20 is too small: .* need \d+"):
        load_dataset("vader_sentiment", str(data_dir), max_tokens=12, vocab_size=20)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"data": {"name": "mnist"}}, "model bert needs a text dataset"),
        ({"data": {"max_tokens": 256}}, "data.max_tokens=256 exceeds model.max_length=128"),
        ({"data": {"name": "yelp"}}, "yelp's vocabulary has 30522 tokens, more than model.vocab_size=8192"),
        ({"model": {"hidden": 100}}, "model.hidden=100 must be a multiple of model.heads=12"),
    ],
)
def test_bert_configs_that_cannot_work_are_refused(change, message):
    config = configs.bert.get_config()
    for section, values in change.items():
        config[section].update(values)
    with pytest.raises(ValueError, match=message):
        validate_config(config)


@pytest.fixture(scope="module")
def bert_run(data_dir, tmp_path_factory):
    config = configs.bert.get_config()
    config.data.update(dir=str(data_dir), max_tokens=12, vocab_size=60)
    config.model.update(vocab_size=60, hidden=32, layers=2, heads=2, intermediate=64, max_length=12, dropout=0.0)
    config.zoo.update(num_models=3, epochs=12, learning_rate=3e-3, models_per_chunk=3)
    config.flow.update(iterations=200, hidden=64, steps_per_dispatch=100, learning_rate=1e-3)
    config.sample.update(num_samples=3, steps=8)
    config.baselines.update(noise_stds=(0.001,), mixtures=2)
    return pipeline.run(config, tmp_path_factory.mktemp("bert") / "work", progress=False)


def test_the_bert_pipeline_learns_the_scores_and_generates_working_encoders(bert_run):
    """Squared-error training ranks held-out sentences well; TransFusion keeps every function and moves the zoo."""
    assert bert_run["metric"] == "test Spearman correlation"
    assert bert_run["original"]["accuracy"]["min"] > 0.5, bert_run["original"]
    moved = bert_run["canonicalization"]
    assert moved["max_accuracy_change"] < 1e-5
    assert moved["distance_to_reference_after"]["mean"] < moved["distance_to_reference_before"]["mean"]
    assert bert_run["generated"]["accuracy"]["min"] > 0.5, bert_run["generated"]
    noise = bert_run["baselines"]["noise_std_0.001"]["accuracy"]
    assert abs(noise["mean"] - bert_run["original"]["accuracy"]["mean"]) < 0.05, "baselines scored by Spearman too"
    shared = bert_run["diversity"]["max_iou_of_errors"]["original_to_original"]["mean"]
    assert 0 < shared <= 1, "errors of sign overlap between originals"
