"""Text regression data for BERT zoos: sentences with a real-valued score, as token ids ([CLS] first, 0 = padding).

Offline: the human-rated sentences of Hutto & Gilbert (ICWSM 2014), shipped on
PyPI inside the vaderSentiment 3.3.2 source archive: 23,703 tweets, movie and
Amazon review snippets and NYT editorial snippets, each scored by the mean of
about 20 raters on -4..4. Its WordPiece vocabulary is counted from the
training split (`wordpiece_vocabulary`). Online: the paper's Yelp reviews (Hugging
Face `yelp_review_full`, 1-5 stars less 3 as the score) with the
bert-base-uncased tokenizer.
"""

from __future__ import annotations

import collections
import io
import os
import tarfile
import zlib

import numpy as np

VADER_VERSION = "3.3.2"
# The source archive as `pip download` saves it, relative to the data dir.
VADER_ARCHIVE = os.path.join("vader_sentiment", f"vaderSentiment-{VADER_VERSION}.tar.gz")
VADER_INNER = f"vaderSentiment-{VADER_VERSION}/additional_resources/hutto_ICWSM_2014.tar.gz"
VADER_CORPORA = ("tweets", "movieReviewSnippets", "amazonReviewSnippets", "nytEditorialSnippets")
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # [PAD] must be id 0: the model masks id 0
TEST_EVERY = 5  # one sentence in five (by a hash of its corpus and id) is a test sentence
YELP_TOKENIZER = "bert-base-uncased"
YELP_VOCAB_SIZE = 30522  # that tokenizer's vocabulary
YELP_SOURCE = f"Hugging Face Yelp/yelp_review_full, {YELP_TOKENIZER} tokenizer"


def vader_download_hint(data_dir: str) -> str:
    return (
        f"pip download vaderSentiment=={VADER_VERSION} --no-deps --no-binary :all: "
        f"-d {os.path.join(data_dir, os.path.dirname(VADER_ARCHIVE))}"
    )


def read_vader_sentences(archive: str) -> list[tuple[str, str, float, str]]:
    """(corpus, sentence id, mean rating, text) of every rated sentence in the vaderSentiment source archive."""
    try:
        with tarfile.open(archive) as outer:
            inner_bytes = outer.extractfile(VADER_INNER).read()
        rows = []
        with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
            for corpus in VADER_CORPORA:
                member = inner.extractfile(f"hutto_ICWSM_2014/{corpus}_GroundTruth.txt")
                for number, line in enumerate(member.read().decode("utf-8", errors="replace").splitlines()):
                    if line.strip():
                        rows.append((corpus, *_parse_rating(line, f"{archive}: {corpus} line {number + 1}")))
    except (tarfile.TarError, KeyError, AttributeError, EOFError, OSError, zlib.error) as error:
        raise ValueError(
            f"{archive} is not the vaderSentiment {VADER_VERSION} source archive or is damaged "
            f"({type(error).__name__}: {error})"
        ) from error
    return rows


def _parse_rating(line: str, where: str) -> tuple[str, float, str]:
    parts = line.split("\t", 2)
    try:
        score = float(parts[1])
    except (IndexError, ValueError) as error:
        raise ValueError(f"{where}: expected 'id<TAB>score<TAB>text', got {line[:80]!r}") from error
    if not -4.0 <= score <= 4.0:
        raise ValueError(f"{where}: rating {score} outside -4..4")
    return parts[0], score, parts[2] if len(parts) > 2 else ""


def is_test_sentence(corpus: str, sentence_id: str) -> bool:
    """The split by a hash of the sentence's name: the same whatever order the files list them in."""
    return zlib.crc32(f"{corpus}/{sentence_id}".encode()) % TEST_EVERY == 0


def wordpiece_vocabulary(texts: list[str], vocab_size: int) -> dict[str, int]:
    """Token -> id: the special tokens, every character seen (alone and as a `##` continuation), then whole
    words by frequency (ties alphabetical), `vocab_size` in all.

    Built by counting rather than by tokenizers' trainer, which picks and numbers tied
    merges differently from run to run; words outside it split into characters, never [UNK].
    """
    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer

    normalizer, splitter = BertNormalizer(lowercase=True), BertPreTokenizer()
    words = collections.Counter(
        word for line in texts for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(line))
    )
    characters = sorted({character for word in words for character in word})
    pieces = [*characters, *(f"##{character}" for character in characters)]
    if vocab_size < len(SPECIAL_TOKENS) + len(pieces):
        raise ValueError(
            f"data.vocab_size={vocab_size} is too small: the special tokens and the {len(characters)} characters "
            f"of the training text, alone and as ## continuations, need {len(SPECIAL_TOKENS) + len(pieces)}"
        )
    ranked = sorted((word for word in words if len(word) > 1), key=lambda word: (-words[word], word))
    tokens = [*SPECIAL_TOKENS, *pieces, *ranked][:vocab_size]
    return {token: index for index, token in enumerate(tokens)}


def tokenizer_for(vocabulary: dict[str, int]):
    """A lower-casing BERT WordPiece tokenizer ([CLS] text [SEP]) over `vocabulary`."""
    from tokenizers import BertWordPieceTokenizer

    return BertWordPieceTokenizer(vocabulary, lowercase=True)


def encode(tokenizer, texts: list[str], max_tokens: int) -> np.ndarray:
    """(len(texts), max_tokens) int32 ids: [CLS] text [SEP], cut to `max_tokens`, padded with 0."""
    tokenizer.enable_truncation(max_tokens)
    tokenizer.enable_padding(length=max_tokens, pad_id=0, pad_token=SPECIAL_TOKENS[0])
    return np.asarray([encoding.ids for encoding in tokenizer.encode_batch(texts)], np.int32)


Splits = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # train tokens, train scores, test tokens, test scores


def vader_splits(archive: str, max_tokens: int, vocab_size: int) -> Splits:
    """The rated sentences as token ids and scores, tokenized with a vocabulary of the training split."""
    rows = read_vader_sentences(archive)
    test = np.asarray([is_test_sentence(corpus, sentence_id) for corpus, sentence_id, _, _ in rows])
    texts = [text for *_, text in rows]
    scores = np.asarray([score for _, _, score, _ in rows], np.float32)
    train_texts = [text for text, held_out in zip(texts, test, strict=True) if not held_out]
    tokens = encode(tokenizer_for(wordpiece_vocabulary(train_texts, vocab_size)), texts, max_tokens)
    return tokens[~test], scores[~test], tokens[test], scores[test]


def yelp_splits(max_tokens: int) -> Splits:
    """Yelp reviews from the Hugging Face hub (needs internet and `pip install datasets`), stars - 3 as the score.

    Centred so that, as for the VADER ratings, the sign of a score says whether a review is positive.
    """
    import datasets
    from tokenizers import Tokenizer

    splits = datasets.load_dataset("Yelp/yelp_review_full")
    tokenizer = Tokenizer.from_pretrained(YELP_TOKENIZER)
    arrays = []
    for split in ("train", "test"):
        stars = np.asarray(splits[split]["label"], np.float32) + 1
        arrays += [encode(tokenizer, splits[split]["text"], max_tokens), stars - 3]
    return tuple(arrays)
