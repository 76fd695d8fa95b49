"""`kubetune-train` / `python -m kubetune.trainer`: the trainer pod's entry point.

Reads the FineTuneJob the operator mounted (or KUBETUNE_SPEC), runs it, and leaves the outcome where the
operator looks: the exit code (bad input vs retry, from the contract) and a ≤4 KB JSON termination message.
"""
import json
import os
import sys
import time
import traceback
from pathlib import Path

import yaml

from kubetune.api import API_VERSION, FineTuneJob, contract
from kubetune.api.validate import validate_manifest
from kubetune.trainer.errors import BadInput, OutOfMemory, TrainerError
from kubetune.trainer.settings import TrainerSettings


def load_job(text: str, source: str) -> FineTuneJob:
    doc = yaml.safe_load(text)
    if isinstance(doc, dict) and "kind" not in doc:  # just the spec
        doc = {"apiVersion": API_VERSION, "kind": "FineTuneJob", "metadata": {"name": "local"},
               "spec": doc}
    job, errors = validate_manifest(doc)
    if errors:
        raise BadInput(f"{source}: " + "; ".join(str(e) for e in errors))
    return job


def read_job() -> FineTuneJob:
    path = os.environ.get(contract.SPEC_FILE_ENV)
    if path:
        if not Path(path).exists():
            raise BadInput(f"{contract.SPEC_FILE_ENV}={path}: no such file")
        return load_job(Path(path).read_text(), path)
    if os.environ.get(contract.SPEC_ENV):
        return load_job(os.environ[contract.SPEC_ENV], contract.SPEC_ENV)
    default = Path(contract.SPEC_MOUNT_DIR) / contract.SPEC_FILE_NAME
    if default.exists():
        return load_job(default.read_text(), str(default))
    raise BadInput(f"no FineTuneJob: set {contract.SPEC_FILE_ENV} or {contract.SPEC_ENV}")


def termination_message(outcome: dict) -> str:
    """The outcome as JSON within the kubelet's 4 KB limit: detail is dropped before essentials, then long strings
    are cut (never the JSON itself, so the operator can always parse it)."""
    dumps = lambda o: json.dumps(o, separators=(",", ":"))  # noqa: E731
    fits = lambda o: len(dumps(o).encode()) <= contract.TERMINATION_MESSAGE_MAX_BYTES  # noqa: E731
    outcome = dict(outcome)
    for key in ("confusionMatrix", "perClass", "comparison", "data", "baseline", "test", "eval", "artifacts"):
        if fits(outcome):
            return dumps(outcome)
        outcome.pop(key, None)
    for n in (2000, 1000, 500, 200):  # non-ASCII is escaped to six bytes a character: cut by size, not length
        if fits(cut := _cut_strings(outcome, n)):
            return dumps(cut)
    essentials = {k: outcome[k] for k in ("runId", "stopReason", "steps", "error", "promotion") if k in outcome}
    if fits(cut := _cut_strings(essentials, 200)):
        return dumps(cut)
    if "promotion" in essentials:  # the verdict before its detail: the operator maps it to the Promoted condition
        essentials["promotion"] = {k: v for k, v in essentials["promotion"].items() if k != "checks"}
    return dumps(_cut_strings(essentials, 200))


def _cut_strings(value, n: int):
    if isinstance(value, str):
        return value if len(value) <= n else value[:n] + "..."
    if isinstance(value, dict):
        return {k: _cut_strings(v, n) for k, v in value.items()}
    if isinstance(value, list):
        return [_cut_strings(v, n) for v in value]
    return value


def known_error(exc: BaseException) -> TrainerError | None:
    """The contract's kind of a failure, or None for a bug. An out-of-memory anywhere (loading, the baseline,
    training) recurs with the same settings, so it is not retried."""
    if isinstance(exc, TrainerError):
        return exc
    torch = sys.modules.get("torch")  # only loaded once training started; never imported here for this check
    if isinstance(exc, MemoryError) or (torch is not None and isinstance(exc, torch.OutOfMemoryError)):
        return OutOfMemory(f"out of memory ({type(exc).__name__}: {str(exc)[:500]}): lower microBatchSize or "
                           "maxSeqLength, or enable hyperparameters.gradientCheckpointing")
    return None


def write_termination(settings: TrainerSettings, outcome: dict) -> None:
    try:
        settings.termination_log.write_text(termination_message(outcome))
    except OSError:
        pass  # not in a pod (no /dev/termination-log): the exit code and logs still tell


def failed_before() -> bool:
    """Under the launcher: another worker already failed (this one most likely fails because it did, and the
    first failure's message is the one to keep)."""
    exit_dir = os.environ.get("KUBETUNE_TRAINER_EXIT_DIR")
    return bool(exit_dir) and any(json.loads(f.read_text()).get("code") for f in Path(exit_dir).glob("rank-*.json"))


def report_exit(code: int) -> int:
    """Under the launcher (launch.py), leaves this worker's exit code and the time for it to pick the first."""
    exit_dir = os.environ.get("KUBETUNE_TRAINER_EXIT_DIR")
    if exit_dir:
        try:
            path = Path(exit_dir, f"rank-{os.environ.get('RANK', '0')}.json")
            path.with_suffix(".part").write_text(json.dumps({"code": code, "time": time.time()}))
            path.with_suffix(".part").replace(path)  # whole or absent for the launcher and the other workers
        except OSError:
            pass
    return code


def main() -> int:
    settings = TrainerSettings()
    run_id = os.environ.get(contract.RUN_ID_ENV) or time.strftime("local-%Y%m%dT%H%M%SZ", time.gmtime())
    try:
        from kubetune.trainer import katib
        from kubetune.trainer.loop import train

        katib.reporter()  # a Katib trial without grpcio fails here, before any work
        summary = train(read_job(), run_id, settings)
    except Exception as exc:
        error = known_error(exc)
        if error is None:  # a bug or an unforeseen failure: let the Job retry
            traceback.print_exc()
            error = TrainerError(f"{type(exc).__name__}: {exc}")
        print(json.dumps({"kind": "error", "reason": error.reason, "message": str(error)}), file=sys.stderr, flush=True)
        if not failed_before():
            write_termination(settings, {"error": {"reason": error.reason, "message": str(error)}})
        return report_exit(error.exit_code)
    if summary:
        if katib.reporter():  # a Katib trial (rank 0): the final metrics; Katib unreachable never fails the run
            katib.reporter().finish(summary)
        write_termination(settings, summary)
        print(json.dumps({"kind": "summary", **summary}), flush=True)
    return report_exit(contract.EXIT_OK)


if __name__ == "__main__":
    sys.exit(main())
