"""Work done only by subprocesses, started when the session starts and run on a spare CPU while other tests run.

A test module registers such work with `@job(*tests)` (at import, so at collection). The session fixture
`background` (tests/conftest.py) starts, one at a time and in registration order, the jobs one of whose tests is
selected; a test takes a job's return value with `background.result(name)`, which waits for it (or runs it then, if
it was never started) and raises what the job raised. The job's assertions are the test's: only where they run
changes.
"""

import concurrent.futures
import pathlib
from collections.abc import Callable
from typing import Any

_JOBS: dict[str, tuple[set[tuple[str, str]], Callable[[pathlib.Path], Any]]] = {}


def job(*tests: str) -> Callable:
    """Register `function(root)` (root: an empty folder of its own) under its name, for `tests` of its module."""

    def register(function: Callable[[pathlib.Path], Any]) -> Callable[[pathlib.Path], Any]:
        file = pathlib.Path(function.__code__.co_filename).name
        _JOBS[function.__name__] = ({(file, test) for test in tests}, function)
        return function

    return register


class Background:
    def __init__(self, tmp_path_factory, selected: set[tuple[str, str]]):
        """`selected`: (file name, test function name) of each selected test."""
        self._factory, self._folders, self._futures = tmp_path_factory, {}, {}
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="background-job")
        for name, (tests, _) in _JOBS.items():
            if tests & selected:
                self._start(name)

    def _start(self, name: str) -> None:
        self._folders[name] = self._factory.mktemp(name)
        self._futures[name] = self._pool.submit(_JOBS[name][1], self._folders[name])

    def folder(self, name: str) -> pathlib.Path:
        """The job's own folder (its `root`)."""
        if name not in self._futures:
            self._start(name)
        return self._folders[name]

    def result(self, name: str) -> Any:
        self.folder(name)
        return self._futures[name].result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
