"""`python -m kubetune.trainer.launch [torchrun arguments] -m kubetune.trainer`: torchrun that keeps exit codes.

The operator's pod failure policy reads the container's exit code (64 bad input, 65 out of memory, 75 retry or
preempted). Plain torchrun exits 1 whatever its workers said, and gives them 30 s after a SIGTERM before it
SIGKILLs them. This runs torchrun's elastic agent in this process (the container's PID 1 gets the kubelet's
SIGTERM and the agent passes it on to every worker, waiting `--shutdown-timeout` seconds for their checkpoint),
then exits with the code of the worker that failed first: each worker writes its code and the time to a file
(`__main__.report_exit`), since a worker that fails first makes the agent stop the others, whose codes follow.
"""
import json
import os
import sys
import tempfile
from pathlib import Path

EXIT_DIR_ENV = "KUBETUNE_TRAINER_EXIT_DIR"


def first_failure(exit_dir: Path) -> int | None:
    """The exit code of the worker that failed first (by the time it wrote it), or None if none wrote one."""
    codes = []
    for f in exit_dir.glob("rank-*.json"):
        try:
            codes.append(json.loads(f.read_text()))
        except (OSError, ValueError):
            continue
    failed = sorted((c["time"], c["code"]) for c in codes if c.get("code"))
    return failed[0][1] if failed else None


def signal_code(exitcode: int) -> int:
    """A worker's exit status as a shell reports it: killed by signal N is 128 + N (SIGKILL: 137)."""
    return 128 - exitcode if exitcode < 0 else exitcode


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(argv if argv is not None else sys.argv[1:])
    exit_dir = Path(tempfile.mkdtemp(prefix="kubetune-exit-"))
    os.environ[EXIT_DIR_ENV] = str(exit_dir)  # the workers inherit it
    try:
        run(args)  # torchrun itself, less its @record wrapper (which exits 1 on any failure)
        code = 0
    except ChildFailedError as exc:
        code = signal_code(exc.get_first_failure()[1].exitcode)
    except SignalException as exc:  # the agent stopped the workers (given their grace period) and re-raised
        code = 128 + int(exc.sigval)
    reported = first_failure(exit_dir)
    return reported if reported is not None else code


if __name__ == "__main__":
    sys.exit(main())
