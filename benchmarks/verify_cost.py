"""What verifying a finished matrix costs per GB at every start: sha256 (before) against BLAKE3 (now), side by side.

Every start verifies every finished stage's files against their manifest
(`Workdir.check`), so the digest's speed is the price of a rerun on a big zoo
(a 100-model BERT-Base zoo has 43.7 GB of matrices). Both digests read the same
file in the same blocks (`checkpoints.file_digest`), alternating, with the page
cache warm (a rerun soon after) and cold (the file's pages dropped first with
posix_fadvise, as after a reboot or on a zoo larger than memory).

    python benchmarks/verify_cost.py --size_gb=1 --repeats=3
"""

import os
import pathlib
import platform
import tempfile
import time

import numpy as np
from absl import app, flags

from dwf_jax.checkpoints import file_digest

flags.DEFINE_float("size_gb", 1.0, "Size of the matrix file to verify (GB).")
flags.DEFINE_integer("repeats", 3, "Timed digests per algorithm and cache state (the best is kept).")
FLAGS = flags.FLAGS
ALGORITHMS = ("sha256", "blake3")


def drop_from_page_cache(path: pathlib.Path) -> None:
    """Evict the file's pages, so the next read comes from the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(descriptor)


def write_matrix(path: pathlib.Path, size_bytes: int) -> None:
    block = np.random.default_rng(0).normal(size=(16 << 20) // 4).astype(np.float32)
    with open(path, "wb") as handle:
        for _ in range(size_bytes // block.nbytes):
            block.tofile(handle)


def main(argv: list[str]) -> None:
    del argv
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as folder:
        path = pathlib.Path(folder) / "zoo.f32"
        write_matrix(path, int(FLAGS.size_gb * 1e9))
        gigabytes = path.stat().st_size / 1e9
        best = {(algorithm, cache): float("inf") for algorithm in ALGORITHMS for cache in ("warm", "cold")}
        for _ in range(FLAGS.repeats):
            for cache in ("cold", "warm"):
                for algorithm in ALGORITHMS:
                    if cache == "cold":
                        drop_from_page_cache(path)
                    else:
                        file_digest(path, algorithm)  # pages in
                    start = time.perf_counter()
                    file_digest(path, algorithm)
                    best[algorithm, cache] = min(best[algorithm, cache], time.perf_counter() - start)
    print(
        f"# verify cost per GB, {gigabytes:.2f} GB file, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, best of {FLAGS.repeats}"
    )
    print("| page cache | sha256 s/GB | blake3 s/GB | sha256 / blake3 |")
    print("|---|---|---|---|")
    for cache in ("warm", "cold"):
        before, after = (best[algorithm, cache] / gigabytes for algorithm in ALGORITHMS)
        print(f"| {cache} | {before:.3f} | {after:.3f} | {before / after:.2f}x |")


if __name__ == "__main__":
    app.run(main)
