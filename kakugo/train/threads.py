"""CPU training: which threads of a training worker's process get OpenMP teams.

torch runs a parallel op (a matmul, an elementwise op on a large tensor) on an OpenMP team
led by the calling thread, and each thread takes its team's size the first time it runs
one: torch's process-wide thread count at that moment (`torch.set_num_threads` sets it,
and the calling thread's own). gloo runs the collectives' copies and sums on its own
threads as parallel torch ops, so each of them would start a team of its own. libgomp then
manages more threads than the process has CPUs, and from then on it lets a waiting team
thread spin only briefly (its throttled spin count, which no environment variable raises)
before it sleeps on a futex: the training thread's team is put to sleep and woken again
between nearly every two ops. Measured with one worker on 2 CPUs (benchmarks/training.py,
docs/benchmarks.md): ~650 futex sleeps a second for the team's thread, the two threads
busy 0.64 and 0.79 of the time, 0.77-0.81 of a bare loop's tokens/s; with the teams kept
to the training thread, ~7 sleeps a second, both threads busy 0.88, 1.00.
"""

from __future__ import annotations

# Elements of the op that makes the calling thread take its team size: above torch's
# grain size (32,768), so that it runs through torch's parallel loop.
PARALLEL_OP_ELEMENTS = 1 << 20


def keep_openmp_teams_to_this_thread() -> int:
    """The calling thread (the training loop's) keeps the process's OpenMP threads (torch's
    count, which Ray sets from the worker's CPUs); every thread that runs its first
    parallel op later (gloo's among them) runs it on one thread. The calling thread takes
    its size now, then the process-wide count is set to 1 from a short-lived thread so
    that the calling thread's own stays. Returns the calling thread's team size."""
    import threading

    import torch

    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(threads)
        torch.ones(PARALLEL_OP_ELEMENTS).add_(1)
        helper = threading.Thread(target=torch.set_num_threads, args=(1,),
                                  name="openmp-default")
        helper.start()
        helper.join()
    return threads
