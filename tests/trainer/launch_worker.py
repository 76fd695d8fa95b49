"""A stand-in trainer worker for the launcher's tests (no torch, starts in a fraction of a second).

KUBETUNE_TEST_FAIL_RANK=N: that rank exits 64 at once (as on bad input); the others wait to be stopped. A
SIGTERM makes a worker take KUBETUNE_TEST_GRACE seconds (a checkpoint), note that it finished, and exit 75.
"""
import os
import signal
import sys
import time
from pathlib import Path

from kubetune.trainer.__main__ import report_exit

rank = int(os.environ["RANK"])
out = Path(os.environ["KUBETUNE_TEST_OUT"])


def preempted(*_):
    time.sleep(float(os.environ.get("KUBETUNE_TEST_GRACE", "0")))
    (out / f"checkpointed-{rank}").write_text("")
    sys.exit(report_exit(75))


signal.signal(signal.SIGTERM, preempted)
(out / f"started-{rank}").write_text("")
if os.environ.get("KUBETUNE_TEST_FAIL_RANK") == str(rank):
    time.sleep(0.5)  # the other rank is up and waiting
    sys.exit(report_exit(64))
time.sleep(60)
sys.exit(report_exit(0))
