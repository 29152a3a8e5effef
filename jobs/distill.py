"""The job script: `ray job submit --working-dir . -- python jobs/distill.py --config ... --languages ...`.

A thin wrapper over kakugo.run.distill_batch (through the CLI's `run` command, so the
arguments and exit codes are the same as `kakugo run`):
  0 every language finished, 1 a failure (every language failed), 2 bad input (config,
  languages, models), 3 partial failure (some languages failed; see report.md), 4 an
  internal error (a bug; the traceback is in the log).
"""

import sys

from kakugo.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
