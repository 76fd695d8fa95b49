"""`python -m kubetune.trainer.promote`: the operator's promotion Job (kubetune/operator/promote_job.py).

Carries out spec.promotion.override of the FineTuneJob in KUBETUNE_SPEC (the resource as it is now, not a run's
spec ConfigMap) with promotion.apply_override, and leaves the outcome where the operator reads a run's verdict: the
termination message, `{"promotion": {...}}`. No torch, no model: S3 requests only (the copies are server-side).

Exit codes as the trainer's: 0 with a verdict (Overridden, RolledBack, or Rejected / Conflict with its reasons);
EXIT_BAD_INPUT with `{"error": ...}` naming the field and value when the override cannot be carried out (the named
run has no artifacts, no such earlier champion, a destination manifest that is not JSON), before anything is
written; another code for an unforeseen failure (one retry: apply_override is idempotent).
"""
import json
import sys
import traceback

from kubetune.api import contract
from kubetune.trainer.__main__ import known_error, read_job, write_termination
from kubetune.trainer.errors import TrainerError
from kubetune.trainer.settings import TrainerSettings


def main() -> int:
    settings = TrainerSettings()
    try:
        from kubetune.trainer import promotion
        from kubetune.trainer.storage import Store

        job = read_job()
        outcome = promotion.apply_override(job, Store(job.spec.storage, settings.cache_dir))
    except Exception as exc:
        error = known_error(exc)
        if error is None:
            traceback.print_exc()
            error = TrainerError(f"{type(exc).__name__}: {exc}")
        print(json.dumps({"kind": "error", "reason": error.reason, "message": str(error)}), file=sys.stderr,
              flush=True)
        write_termination(settings, {"error": {"reason": error.reason, "message": str(error)}})
        return error.exit_code
    write_termination(settings, {"promotion": outcome})
    print(json.dumps({"kind": "promotion", **outcome}), flush=True)
    return contract.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
