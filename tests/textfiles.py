"""Tiny archives laid out like the vaderSentiment source archive, written by the tests themselves.

Their sentences are made of a few positive, negative and neutral words, and
each sentence's rating counts them, so a tiny encoder can learn it in a few
hundred steps.
"""

import io
import tarfile

import numpy as np

from dwf_jax import text

POSITIVE = ("good", "great", "lovely", "superb")
NEGATIVE = ("bad", "awful", "dreadful", "poor")
NEUTRAL = ("the", "movie", "was", "service", "and", "food", "today", "really")


def rated_sentences(count: int, seed: int) -> list[tuple[str, float, str]]:
    """(id, rating in -4..4, text) rows; the rating is positive words minus negative words, clipped."""
    rng = np.random.default_rng(seed)
    rows = []
    for number in range(count):
        positive, negative = rng.integers(0, 4, 2)
        words = [*rng.choice(POSITIVE, positive), *rng.choice(NEGATIVE, negative), *rng.choice(NEUTRAL, 4)]
        rng.shuffle(words)
        rows.append((f"{seed}_{number}", float(np.clip(positive - negative, -4, 4)), " ".join(words)))
    return rows


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def write_vader_archive(data_dir, sentences_per_corpus: int = 150, lines: dict[str, list[str]] | None = None):
    """`data_dir/text.VADER_ARCHIVE` holding the four ground-truth files (or `lines` per corpus); returns its path."""
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tar:
        for seed, corpus in enumerate(text.VADER_CORPORA):
            rows = (lines or {}).get(corpus) or [
                f"{sentence_id}\t{rating}\t{words}"
                for sentence_id, rating, words in rated_sentences(sentences_per_corpus, seed)
            ]
            _add(tar, f"hutto_ICWSM_2014/{corpus}_GroundTruth.txt", "\r\n".join(rows).encode())
    path = data_dir / text.VADER_ARCHIVE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, text.VADER_INNER, inner.getvalue())
    return path
