"""A run's identity, pure: which spec fields start a new run, which replace its Job, which apply in place; the
hashes that record them on the Job; and `current_run`, the run the spec asks for and the Job executing it, derived
level-based from the owned Jobs and the status (docs/operator-fields.md)."""
import hashlib
import json
import re
from dataclasses import dataclass, replace

from kubetune.api import FineTuneJob, contract
from kubetune.api.identity import hashed_wire
from kubetune.operator.labels import (ANNOTATION_ATTEMPT, ANNOTATION_FAILURES, ANNOTATION_GENERATION,
                                      ANNOTATION_SPEC_HASH, ANNOTATION_TEMPLATE_HASH)

TERMINAL = ("Succeeded", "Failed")
_ATTEMPT_SUFFIX = re.compile(r"-a(\d+)$")
# What a spec edit does (docs/operator-fields.md). Everything not listed here is the run's identity: changing
# it starts a new run (new run id, new artifacts prefix, step 0).
IN_PLACE_FIELDS = ("suspend", ("runPolicy", "activeDeadlineSeconds"), ("runPolicy", "ttlSecondsAfterFinished"))
"""Applied to the running Job in place."""
NEW_JOB_FIELDS = ("image", "scheduling", ("runPolicy", "backoffLimit"), ("storage", "secretRef"),
                  ("resources", "cpu"), ("resources", "memory"), ("resources", "sharedMemory"),
                  ("resources", "ephemeralStorage"), ("resources", "gpuProduct"), ("resources", "gpuResourceName"))
"""How the same run executes, in the pod template (immutable): the Job is replaced, once the old one's pods
have stopped (they checkpoint on SIGTERM), and the new pods resume the same run from its last checkpoint."""


@dataclass(frozen=True)
class Run:
    """One training run: a training-defining spec of one resource instance, executed by one Job at a time."""

    generation: int
    run_id: str
    spec_hash: str
    job_name: str
    template_hash: str = ""
    attempt: int = 1
    """Gang attempt of a multi-node run (its Job is `<job>-a<attempt>` from the second on); 1 for one node."""
    failures: int = 0
    """Failures of a multi-node run counted against runPolicy.backoffLimit before (or, once it ended, with)
    this attempt."""


def _hash(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def _split(spec: dict, fields) -> dict:
    """Removes `fields` (names or (parent, name) pairs) from `spec` and returns them."""
    taken: dict = {}
    for field in fields:
        if isinstance(field, tuple):
            parent = spec.get(field[0])
            if isinstance(parent, dict) and field[1] in parent:
                taken[".".join(field)] = parent.pop(field[1])
        elif field in spec:
            taken[field] = spec.pop(field)
    return taken


def training_hash(job: FineTuneJob) -> str:
    """Hash of the run's identity: the spec without IN_PLACE_FIELDS and NEW_JOB_FIELDS."""
    spec = hashed_wire(job.spec)
    _split(spec, IN_PLACE_FIELDS + NEW_JOB_FIELDS)
    return _hash(spec)


def legacy_training_hash(job: FineTuneJob) -> str:
    """The hash operators before 0.2 recorded (the spec without IN_PLACE_FIELDS only): runs they started are
    still recognised, so upgrading the operator restarts nothing."""
    spec = hashed_wire(job.spec)
    _split(spec, IN_PLACE_FIELDS)
    return _hash(spec)


def template_hash(job: FineTuneJob) -> str:
    """Hash of NEW_JOB_FIELDS: a different one replaces the Job and keeps the run."""
    return _hash(_split(hashed_wire(job.spec), NEW_JOB_FIELDS))


def _annotation_int(job: dict, key: str, default: int) -> int:
    value = (job["metadata"].get("annotations") or {}).get(key) or ""
    return int(value) if value.isdigit() else default


def _generation_of(job: dict) -> int:
    return _annotation_int(job, ANNOTATION_GENERATION, -1)


def current_run(job: FineTuneJob, owned_jobs: list[dict] = ()) -> Run:
    """The run the spec asks for, and the Job that executes it. Level-based, so a restarted operator derives
    the same: the run is an owned Job's whose spec-hash annotation matches (it exists even when a crash lost the
    status write that should have recorded it), else the status' run while its hash matches, else a new run at
    the current generation. The Job is the status' when that run has ended, else an owned Job of the run with
    the same template hash (none recorded: a Job from before template hashes), else a new one named after the
    current generation (after a NEW_JOB_FIELDS edit, or when the Job was lost; plan.py replaces an old one)."""
    hashes = {training_hash(job), legacy_training_hash(job)}
    spec_hash, template, status = training_hash(job), template_hash(job), job.status
    same = sorted((j for j in owned_jobs
                   if (j["metadata"].get("annotations") or {}).get(ANNOTATION_SPEC_HASH) in hashes
                   and _generation_of(j) >= 0),
                  key=lambda j: (j["metadata"].get("creationTimestamp") or "",
                                 _annotation_int(j, ANNOTATION_ATTEMPT, 1), j["metadata"]["name"]), reverse=True)
    match = re.match(r"^g(\d+)-", status.run_id or "") if status else None
    if same:
        generation = _generation_of(same[0])
    elif status and status.spec_hash in hashes and match:
        generation = int(match.group(1))
    else:
        generation = job.metadata.generation or 1
    run_id = contract.run_id(generation, job.metadata.uid or "")
    job_name, attempt = None, None
    ours = status is not None and status.run_id == run_id and bool(status.job_name)
    if ours and status.phase in TERMINAL:
        job_name = status.job_name  # an ended run stays as it ended
    for child in same:
        if (child["metadata"].get("annotations") or {}).get(ANNOTATION_TEMPLATE_HASH, template) == template:
            job_name = job_name or child["metadata"]["name"]
            if child["metadata"]["name"] == job_name and attempt is None:
                attempt = child
    if job_name is None and ours and status.observed_generation == job.metadata.generation:
        # No Job of the run in view (a watch gap, a deletion indexed before the next attempt's creation): the
        # status, written for this very spec, still names the run's Job and attempt. A fresh `-g<gen>` attempt 1
        # here would start a second gang of the run and reset its failure count.
        job_name = status.job_name
    counts = ((_annotation_int(attempt, ANNOTATION_ATTEMPT, 1), _annotation_int(attempt, ANNOTATION_FAILURES, 0))
              if attempt else (1, 0))
    if attempt is None and ours and status.job_name == job_name and job.spec.nodes > 1:
        # The Job that records them is out of view: a gang's status counts its attempts and failures too.
        counts = (max(1, status.attempts), status.failures)
    return Run(generation, run_id, spec_hash, job_name or f"{job.metadata.name}-g{job.metadata.generation or 1}",
               template, *counts)


def rerun_asked(job: FineTuneJob, run: Run) -> bool:
    """spec.rerunToken holds a value the operator has not acted on and `run` (current_run's) is the run the status
    records as Failed. Level-based: the status records the token once the rerun's Job exists, so the same value
    re-applied, or read again by a restarted operator, asks for nothing."""
    token, status = job.spec.rerun_token, job.status
    return (bool(token) and status is not None and token != status.rerun_token and status.phase == "Failed"
            and status.run_id == run.run_id and status.job_name == run.job_name)


def rerun(run: Run) -> Run:
    """The failed run's next attempt: the same run (id, hence the checkpoints it resumes from) on a new Job
    `<run's first Job>-a<N>`, as a gang's next attempt is named (gang.py), with no failures counted yet: a rerun
    gets runPolicy.backoffLimit afresh. N follows the ended Job's attempt, read from its name too: the Job's TTL
    may have removed the Job and its annotations."""
    match = _ATTEMPT_SUFFIX.search(run.job_name)
    attempt = max(run.attempt, int(match.group(1)) if match else 1) + 1
    base = run.job_name[:match.start()] if match else run.job_name
    return replace(run, job_name=f"{base}-a{attempt}", attempt=attempt, failures=0)


def rerun_cause(job: FineTuneJob) -> str:
    """Why the rerun's Job exists (its restart-reason annotation, which the status shows while its pods start)."""
    status = job.status
    failed = next((c for c in status.conditions if c.type == "Failed"), None)
    why = f"{failed.reason}: {failed.message}" if failed else "Failed"
    return (f"rerun for spec.rerunToken {job.spec.rerun_token!r} of Job {status.job_name}, which failed: "
            f"{why}")[:1000]
