"""training.parallel.map_processes: data preparation spread over processes, results in job order."""

import os

import pytest

from training.parallel import map_processes, worker_count


def test_results_in_job_order_from_other_processes():
    finished = []
    results = map_processes(pow, [(2, 10), (3, 2), (5, 1), (7, 0)], workers=2,
                            done=lambda i, job, result: finished.append((i, job, result)))
    assert results == [1024, 9, 5, 1]  # job order, whatever order they finished in
    assert sorted(finished) == [(0, (2, 10), 1024), (1, (3, 2), 9), (2, (5, 1), 5), (3, (7, 0), 1)]
    pids = map_processes(os.getpid, [(), ()], workers=2)
    assert os.getpid() not in pids  # the work really ran in worker processes


def test_one_worker_runs_here_in_order():
    seen = []
    assert map_processes(pow, [(2, 2), (2, 3)], workers=1, done=lambda i, job, r: seen.append(i)) == [4, 8]
    assert seen == [0, 1]
    assert map_processes(os.getpid, [()], workers=4) == [os.getpid()]  # one job: no process to start


def test_a_failing_job_raises_here():
    with pytest.raises(ValueError, match="invalid literal"):
        map_processes(int, [("1",), ("not a number",), ("3",)], workers=2)


def test_worker_count():
    assert worker_count(10, 2) == 2
    assert worker_count(1, 8) == 1
    assert worker_count(0) == 1
    assert worker_count(100) == (os.cpu_count() or 1)
    with pytest.raises(ValueError, match="workers=0"):
        worker_count(3, 0)
