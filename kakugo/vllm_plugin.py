"""kakugo's vLLM plugin: the entry point `vllm.general_plugins` (pyproject.toml), which
vLLM loads in each of its processes (the front end, the engine core, every worker) before
the engine's queues are made. It imports nothing of ours, so that every vLLM process of
the environment can load it cheaply, and does nothing unless `KAKUGO_VLLM_SPIN_WAIT=0`,
which `kakugo.teacher.engine_env` sets for CPU engines.

vLLM's engine core hands each step to its worker and reads the step's output through a
shared-memory queue whose readers spin (`SpinCondition.wait`: `sched_yield` in a loop for
as long as the last read is under `busy_loop_s`, one second, old) before they sleep on
the queue's notification socket. On CPU a step takes tens to hundreds of milliseconds, so
the engine core spins through every step: a core busy doing nothing, on a node where
Ray's processes (the driver, Ray Data's actors, Serve's replica and proxy, the agents)
also run. Linux then sees no idle core and wakes those processes on the worker's core as
often as on the other, and the step waits for them. With the spin off, every read waits
on the notification (the writer sends one with each message): the engine core sleeps
while its worker computes and the other processes have its core. On a GPU the step runs
on the GPU and the spin costs nothing that matters, so the setting is for CPU engines
only. Measured in docs/benchmarks.md (Generation); tests/unit/test_vllm_plugin.py fails
when vLLM's queue no longer waits so.

A sleeping reader needs every notification, and vLLM's writer drops some: it publishes
them on a socket whose send queue holds one message (`SNDHWM` 1), and zmq learns only
lazily that the reader took the last one, so a notification sent within about a
millisecond of the one before is dropped. A spinning reader never notices; a sleeping one
sleeps on until vLLM's recheck, 5 s later (measured: most such second messages lost, and
requests of vLLM's server 5 s late). So with the spin off the writer's socket is bound
again, before any reader connects, with zmq's default queue (1,000); the reader's socket
keeps only the last notification (`CONFLATE`), so none pile up there.
"""

from __future__ import annotations

import functools
import os

SPIN_WAIT_ENV = "KAKUGO_VLLM_SPIN_WAIT"
NOTIFY_QUEUE = 1000  # the writer's notifications queued (zmq's default; vLLM sets 1)


def register() -> None:
    """vLLM's hook: with `KAKUGO_VLLM_SPIN_WAIT=0`, readers of vLLM's shared-memory queues
    (made after this) wait on the queue's notification instead of spinning."""
    if os.environ.get(SPIN_WAIT_ENV, "1") != "0":
        return
    from vllm.distributed.device_communicators.shm_broadcast import SpinCondition

    if getattr(SpinCondition, "kakugo_spin_off", False):  # loaded twice in one process
        return
    made = SpinCondition.__init__

    @functools.wraps(made)
    def without_spin(self, *args, **kwargs) -> None:
        made(self, *args, **kwargs)
        self.busy_loop_s = 0
        if not self.is_reader:  # a queue that keeps every notification (module doc)
            import zmq

            socket = self.local_notify_socket
            address = socket.getsockopt(zmq.LAST_ENDPOINT).decode()
            socket.unbind(address)
            socket.setsockopt(zmq.SNDHWM, NOTIFY_QUEUE)
            socket.bind(address)

    SpinCondition.__init__ = without_spin
    SpinCondition.kakugo_spin_off = True
