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
from kubetune.trainer.errors import BadInput, TrainerError
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
    """The outcome as JSON within the kubelet's 4 KB limit, dropping detail before essentials."""
    text = json.dumps(outcome, separators=(",", ":"))
    for key in ("confusionMatrix", "perClass", "comparison", "data", "baseline", "test", "eval", "artifacts"):
        if len(text.encode()) <= contract.TERMINATION_MESSAGE_MAX_BYTES:
            break
        outcome.pop(key, None)
        text = json.dumps(outcome, separators=(",", ":"))
    return text[: contract.TERMINATION_MESSAGE_MAX_BYTES]


def write_termination(settings: TrainerSettings, outcome: dict) -> None:
    try:
        settings.termination_log.write_text(termination_message(outcome))
    except OSError:
        pass  # not in a pod (no /dev/termination-log): the exit code and logs still tell


def main() -> int:
    settings = TrainerSettings()
    run_id = os.environ.get(contract.RUN_ID_ENV) or time.strftime("local-%Y%m%dT%H%M%SZ", time.gmtime())
    try:
        from kubetune.trainer.loop import train

        summary = train(read_job(), run_id, settings)
    except TrainerError as exc:
        print(json.dumps({"kind": "error", "reason": exc.reason, "message": str(exc)}), file=sys.stderr, flush=True)
        write_termination(settings, {"error": {"reason": exc.reason, "message": str(exc)[:3000]}})
        return exc.exit_code
    except Exception as exc:  # a bug or an unforeseen failure: let the Job retry
        traceback.print_exc()
        write_termination(settings, {"error": {"reason": "Error", "message": f"{type(exc).__name__}: {exc}"[:3000]}})
        return contract.EXIT_RETRY
    if summary:
        write_termination(settings, summary)
        print(json.dumps({"kind": "summary", **summary}), flush=True)
    return contract.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
