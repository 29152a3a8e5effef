"""kakugo's vLLM plugin (kakugo.vllm_plugin), loaded by vLLM's own plugin loader in a
fresh process, as vLLM's engine core and workers load it, and checked on vLLM's own
shared-memory queue: these fail when vLLM's queue no longer waits the way the plugin
changes."""

import json
import os
import subprocess
import sys

from kakugo.vllm_plugin import SPIN_WAIT_ENV

# a reader of vLLM's queue with nothing written: how long does a wait of 300 ms take?
READ_WAIT = r"""
import json, time, zmq
from vllm.plugins import load_general_plugins
load_general_plugins()
from vllm.distributed.device_communicators.shm_broadcast import MessageQueue
writer = MessageQueue(n_reader=1, n_local_reader=1, max_chunk_bytes=1 << 20)
reader = MessageQueue.create_from_handle(writer.export_handle(), 0)
writer.wait_until_ready(); reader.wait_until_ready()
writer.enqueue("first")
assert reader.dequeue() == "first"  # a read just now: a spinning reader spins
started, cpu = time.monotonic(), time.process_time()
try:
    reader.dequeue(timeout=0.3)
except TimeoutError:
    pass
print(json.dumps({"busy_loop_s": reader._spin_condition.busy_loop_s,
                  "waited_s": time.monotonic() - started,
                  "cpu_s": time.process_time() - cpu}))
"""


def run_script(tmp_path, script: str, spin_wait: str | None, *args: str) -> dict:
    """`script` in a fresh process (as vLLM's own processes load the plugin), with
    KAKUGO_VLLM_SPIN_WAIT as given (None: unset); the JSON of its last line."""
    env = {k: v for k, v in os.environ.items() if k != SPIN_WAIT_ENV}
    if spin_wait is not None:
        env[SPIN_WAIT_ENV] = spin_wait
    out = subprocess.run([sys.executable, "-c", script, *args], env=env, cwd=tmp_path,
                         check=False, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_with_the_spin_off_vllms_queue_readers_sleep_through_a_wait(tmp_path):
    """vLLM finds the plugin through its entry point; with KAKUGO_VLLM_SPIN_WAIT=0 a
    reader of vLLM's queue waits on the notification socket (no CPU while it waits),
    and without it vLLM's reader spins through the same wait, as vLLM does on its own."""
    off = run_script(tmp_path, READ_WAIT, "0")
    assert off["busy_loop_s"] == 0
    assert off["waited_s"] >= 0.25

    on = run_script(tmp_path, READ_WAIT, None)
    assert on["busy_loop_s"] > 0.3  # vLLM's own: the wait above is inside its busy loop
    assert on["waited_s"] >= 0.25
    # the spinning reader burns CPU through the wait; the sleeping one almost none
    assert on["cpu_s"] > 0.15 and off["cpu_s"] < 0.05, (on, off)


# a writer that sends two messages a fraction of a millisecond apart and waits for the
# reader to take both (as vLLM's engine core waits for its worker): does every second
# message wake the reader, or does the reader sleep until vLLM's 5 s recheck?
PAIRS = r"""
import json, multiprocessing as mp, queue, sys, time
from vllm.plugins import load_general_plugins
load_general_plugins()
from vllm.distributed.device_communicators.shm_broadcast import MessageQueue

def read(handle, taken):
    reader = MessageQueue.create_from_handle(handle, 0)
    reader.wait_until_ready()
    while True:
        reader.dequeue(indefinite=True)
        taken.put(time.monotonic())

if __name__ == "__main__":
    pairs, gap_s = int(sys.argv[1]), float(sys.argv[2])
    writer = MessageQueue(n_reader=1, n_local_reader=1, max_chunk_bytes=1 << 20)
    taken = mp.get_context("fork").Queue()
    proc = mp.get_context("fork").Process(target=read, args=(writer.export_handle(), taken),
                                          daemon=True)
    proc.start()
    writer.wait_until_ready()
    slowest, stalled = 0.0, 0
    for _ in range(pairs):
        writer.enqueue("first")
        end = time.perf_counter() + gap_s
        while time.perf_counter() < end:
            pass
        writer.enqueue("second")
        sent = time.monotonic()
        taken.get(timeout=10)
        try:
            slowest = max(slowest, taken.get(timeout=1) - sent)
        except queue.Empty:  # the second message did not wake the reader within 1 s
            stalled += 1
            break
    print(json.dumps({"pairs": pairs, "stalled": stalled, "slowest_s": slowest}))
"""


def test_with_the_spin_off_no_message_waits_for_vllms_recheck(tmp_path):
    """vLLM's writer notifies its readers through a PUB socket whose send queue holds one
    message, so a notification sent within about a millisecond of the last one is dropped
    (zmq learns lazily that the reader took the first). A spinning reader never needs it;
    a sleeping one then sleeps until vLLM's 5 s recheck. The plugin gives the writer a
    queue that does not drop: every second message wakes the reader."""
    result = run_script(tmp_path, PAIRS, "0", "200", "0.0005")
    assert result["stalled"] == 0, result
    assert result["slowest_s"] < 0.5, result
