"""FineTuneJob status: conditions plus the few observed facts a user looks for.

Condition types follow the Kubernetes API conventions and kstatus (Ready / Reconciling / Stalled) and add
Suspended, Running and the terminal Succeeded / Failed, so `kubectl wait --for=condition=Succeeded` waits for the
end. Each condition carries its own reason and message: a condition that holds carries the run's (why it holds), one
that does not carries one of the `Reason`s below saying why not. Reasons are constants here, in one place, so the
operator, the tests and the docs use the same words. `phase` is derived from the conditions for printer columns only.
"""
from datetime import datetime
from typing import Literal

from pydantic import Field

from kubetune.api import contract
from kubetune.api.base import APIModel


class ConditionType:
    READY = "Ready"
    """The operator has done what the spec asks: the run is under way, held as asked (Queued, Suspended) or has
    succeeded. False before the trainer starts and once the run failed. Its reason and message are the run's, in
    every phase (the `reason` label of the metrics and of status.runs). Not "the model is ready": that is Succeeded.
    kstatus (Flux `wait: true`) reads a kind it has no rules for by Ready once Reconciling and Stalled are False."""
    RECONCILING = "Reconciling"
    """The operator still has work to converge: the run's Job is not in place or its trainer has not started
    (including a refusal the operator retries). kstatus: InProgress."""
    STALLED = "Stalled"
    """The run cannot go on without a change of the spec: it failed, or the API server refused it as invalid.
    kstatus: Failed."""
    SUSPENDED = "Suspended"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    PROMOTED = "Promoted"
    """spec.promotion only: whether the run is the destination's champion. False with a reason (the gate refused
    it, its champion was not comparable, another run promoted first) is a verdict, not a failure: the run itself
    Succeeded, and Ready, Stalled and the Argo CD health say so."""


class Reason:
    """CamelCase reasons of the conditions above."""

    # Why a condition does not hold (a condition that holds carries the run's reason, below).
    RECONCILED = "Reconciled"
    """Reconciling=False: the run's Job is in place and its trainer has started, or the run is held as asked."""
    FINISHED = "Finished"
    """Reconciling=False and Running=False: the run has ended."""
    AS_EXPECTED = "AsExpected"
    """Stalled=False, Failed=False: nothing stops the run."""
    RETRYING = "Retrying"
    """Stalled=False while a refused or conflicting child is retried: it may clear up without a spec change."""
    NOT_SUSPENDED = "NotSuspended"
    """Suspended=False: neither spec.suspend nor a queue holds the run."""
    NOT_STARTED = "NotStarted"
    """Running=False: the trainer has not started yet."""
    HELD = "Held"
    """Running=False: the run is queued or suspended."""
    NOT_FINISHED = "NotFinished"
    """Succeeded=False while the run goes on."""
    RUN_FAILED = "RunFailed"
    """Succeeded=False: the run failed (the Failed condition says why)."""

    # The run's reasons.
    CREATED = "JobCreated"
    QUEUED = "Queued"
    SUSPENDED = "Suspended"
    PENDING = "Pending"
    UNSCHEDULABLE = "Unschedulable"
    IMAGE_PULL_BACK_OFF = "ImagePullBackOff"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    COMPLETED = "Completed"
    EARLY_STOPPED = "EarlyStopped"
    MAX_STEPS = "MaxStepsReached"
    EPOCHS = "EpochsCompleted"
    OOM_KILLED = "OOMKilled"
    EPHEMERAL_STORAGE_EXCEEDED = "EphemeralStorageExceeded"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    BAD_INPUT = "BadInput"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    INVALID_SPEC = "InvalidSpec"
    """The stored spec fails the model (only an outdated CRD lets one through): the message names the field."""
    CHILD_CONFLICT = "ChildConflict"
    """A child's name is taken by an object this FineTuneJob does not control."""
    CHILD_REJECTED = "ChildRejected"
    """The API server refused a child as invalid (422): the spec must change."""
    CHILD_FORBIDDEN = "ChildForbidden"
    """The API server refused a child for now (a ResourceQuota, a missing PriorityClass...): retried."""
    SPEC_CHANGED = "SpecChanged"
    RERUN = "Rerun"
    """Event: a new spec.rerunToken started another attempt of the failed run."""
    RERUN_IGNORED = "RerunIgnored"
    """Event: a new spec.rerunToken was declined: the run had not failed (it runs, is held, or succeeded)."""
    # While Kueue holds a queued run (kueue.x-k8s.io Workload conditions, passed on with the queue's name).
    ADMITTED = "Admitted"
    QUOTA_RESERVED = "QuotaReserved"
    INADMISSIBLE = "Inadmissible"
    EVICTED = "Evicted"
    DEACTIVATED = "Deactivated"
    KUEUE_UNAVAILABLE = "KueueUnavailable"
    """The API server serves no Kueue Workloads (Kueue absent, or another API version): nothing will admit the run."""
    KUEUE_FORBIDDEN = "KueueForbidden"
    """The operator may not read Kueue's Workloads (RBAC), so it cannot tell why the run waits."""
    NO_WORKLOAD = "NoWorkload"
    """Kueue made no Workload for the run's Job in time: its namespace is not one Kueue manages, or Kueue is down."""


class PromotionReason:
    """Reasons of the Promoted condition (and of its events)."""

    PROMOTED = "Promoted"
    """True: the gate passed; the run is the destination's champion."""
    OVERRIDDEN = "PromotedByOverride"
    """True: spec.promotion.override promoted the run although the gate refused it."""
    ROLLED_BACK = "RolledBack"
    """spec.promotion.override restored an earlier champion (True when this run is it, else False)."""
    GATE_FAILED = "GateFailed"
    """False: a criterion did not hold; the message gives each with its difference and interval."""
    CHAMPION_INCOMPARABLE = "ChampionIncomparable"
    """False: the destination's champion has another base model or task, so the run could not be shown better."""
    LOST_RACE = "PromotionConflict"
    """False: another run promoted to the destination between this run's read and its write (conditional write)."""
    PENDING = "PromotionPending"
    """False (Unknown while the run goes on): the run has not been judged yet."""
    NO_VERDICT = "NoVerdict"
    """False: the run ended without a verdict (it failed, or its trainer reported none)."""
    OVERRIDE_AFTER_RUN = "OverrideAfterRun"
    """Set by earlier operators only: spec.promotion.override came after the run started and was not carried out
    (`kubetune override FILE` did it by hand). The operator now carries it out in a promotion Job
    (OverrideInProgress) and replaces this reason where an earlier one left it."""
    OVERRIDE_IN_PROGRESS = "OverrideInProgress"
    """spec.promotion.override is not the one the run saw (added or changed after the run started): a promotion Job
    of the operator's (`<name>-promote-<hash>`) carries it out. The status (True or False) is still the run's
    verdict's until the Job reports its outcome, which becomes the verdict (Overridden, RolledBack...)."""
    OVERRIDE_FAILED = "OverrideFailed"
    """False: the promotion Job carrying out spec.promotion.override failed (or could not be created); the message
    gives its pod's reason. It is not retried: change the override (its reason, say) to try again, or run
    `kubetune override FILE` by hand. The manifest is as it was (a Job stopped mid-copy may leave unreferenced
    files under the destination's runs/<runId>/)."""



Phase = Literal["Pending", "Queued", "Suspended", "Running", "Succeeded", "Failed"]


class Condition(APIModel):
    type: str
    """Condition type: Ready, Reconciling, Stalled, Suspended, Running, Succeeded or Failed."""
    status: Literal["True", "False", "Unknown"]
    """Whether the condition holds."""
    reason: str
    """CamelCase reason for the last transition."""
    message: str = ""
    """Human-readable details."""
    last_transition_time: datetime
    """When the status last changed."""
    observed_generation: int | None = Field(None, ge=0)
    """The metadata.generation this condition was computed from."""


class Progress(APIModel):
    step: int = Field(0, ge=0)
    """Optimizer steps done."""
    total_steps: int | None = Field(None, ge=0)
    """Optimizer steps planned."""
    epoch: float | None = Field(None, ge=0)
    """Fractional epoch."""
    percent: int = Field(0, ge=0, le=100)
    """step / totalSteps, in percent."""
    eta_seconds: int | None = Field(None, ge=0)
    """Estimated seconds left."""


class BestMetric(APIModel):
    name: str
    """The monitored validation metric."""
    value: float
    """Its best value."""
    step: int = Field(ge=0)
    """The step where it was reached (the shipped weights)."""


class Comparison(APIModel):
    """Fine-tuned against one baseline on the test set, for the headline metric (the early-stopping metric, else
    f1 / mse / loss by task), with the 95% paired-bootstrap interval of the difference."""

    against: str
    """baseModel (the untouched model), majorityClass or trainMean."""
    metric: str
    """The test metric compared."""
    baseline: float
    """The baseline's value."""
    fine_tuned: float
    """The fine-tuned model's value."""
    difference: float
    """fine-tuned minus baseline."""
    low: float
    """Lower bound of the difference's 95% interval."""
    high: float
    """Upper bound of the difference's 95% interval."""
    excludes_zero: bool
    """The interval excludes zero: the difference is not chance at the 95% level."""


PromotionVerdict = Literal["Promoted", "Rejected", "Overridden", "RolledBack", "Conflict"]


class PromotionCheck(APIModel):
    """One criterion of the gate, as judged."""

    criterion: str
    """beatBaseModel, beatChampion, min or max."""
    metric: str
    """The test metric judged."""
    passed: bool
    """Whether it held."""
    value: float | None = None
    """The difference (comparisons) or the metric (bounds)."""
    low: float | None = None
    """Lower bound of its 95% interval."""
    high: float | None = None
    """Upper bound of its 95% interval."""
    threshold: float | None = None
    """The bound's min or max (bounds only)."""
    message: str = ""
    """The verdict on this criterion, with its numbers."""


class OverrideSeen(APIModel):
    """Which override a run saw: compared with spec.promotion.override to tell one added after the run."""

    action: Literal["promote", "rollback"]
    """promote or rollback."""
    run_id: str
    """The run the override names."""
    requested_by: str | None = None
    """Who asked."""


class PromotionStatus(APIModel):
    """What spec.promotion decided for the current run."""

    verdict: PromotionVerdict
    """Promoted, Rejected (the gate or a not comparable champion refused it), Overridden (promoted by
    spec.promotion.override), RolledBack (an earlier champion restored) or Conflict (another run won the race)."""
    destination: str
    """spec.promotion.destination."""
    model_uri: str | None = None
    """The champion's model files under the destination, once promoted (or restored)."""
    champion_run_id: str | None = None
    """The destination's champion the run was compared with (and, if promoted, replaced)."""
    replaced_run_id: str | None = None
    """The champion this promotion replaced (its files stay under runs/<runId>/)."""
    checks: list[PromotionCheck] = Field(default_factory=list, max_length=64)
    """Each criterion, with its numbers."""
    reasons: list[str] = Field(default_factory=list, max_length=64)
    """Why, in words with the numbers: the failed criteria of a rejected run, or the override's who and why."""
    requested_by: str | None = None
    """An override's requestedBy."""
    override: OverrideSeen | None = None
    """The spec.promotion.override the run's trainer saw (and carried out, or found not to apply to it)."""


class EvalPoint(APIModel):
    step: int = Field(ge=0)
    """The step of the evaluation that produced the loss, as the trainer serves it (a trainer image that does not
    serve its history: the progress the operator read, rounded down to the evaluation steps)."""
    value: float
    """The eval loss."""


class Metrics(APIModel):
    train_loss: float | None = None
    """Latest training loss."""
    eval_loss: float | None = None
    """Latest validation loss."""
    eval_losses: list[EvalPoint] | None = Field(None, max_length=contract.EVAL_HISTORY_POINTS)
    """Each evaluation's validation loss by step, the newest 100: the curve, and what a sweep's pruner judges."""
    best: BestMetric | None = None
    """Best value of the monitored validation metric."""
    baseline: dict[str, float] | None = None
    """The untouched base model's validation metrics (evaluation.baseline)."""
    test: dict[str, float] | None = None
    """Final test-set metrics."""
    comparisons: list[Comparison] | None = None
    """Fine-tuned against each baseline on the test set (evaluation.baseline and a test file)."""
    tokens_per_second: float | None = None
    """Training throughput, all devices together."""
    learning_rate: float | None = None
    """Current learning rate."""


class Artifacts(APIModel):
    uri: str | None = None
    """This run's output location."""
    model_uri: str | None = None
    """The adapter or full weights to serve."""
    merged_uri: str | None = None
    """The base model with the adapter merged in (output.mergeAdapter)."""
    summary_uri: str | None = None
    """summary.json: final and best metrics, stop reason, wall time."""
    report_uri: str | None = None
    """report.html: the run's page (curves, test comparison with intervals, worst examples, answers before and
    after, promotion verdict, spec), self-contained: it opens offline."""
    checkpoint_uri: str | None = None
    """Newest complete checkpoint."""


class RunRecord(APIModel):
    """The outcome of an earlier run of this FineTuneJob (before its spec changed)."""

    generation: int = Field(ge=0)
    """metadata.generation the run trained."""
    job_name: str
    """The run's Job."""
    phase: Phase
    """How it ended, or where it stood when it was replaced."""
    reason: str | None = None
    """Reason of its final condition."""
    start_time: datetime | None = None
    completion_time: datetime | None = None
    eval_loss: float | None = None
    """Its last validation loss."""
    artifacts_uri: str | None = None
    """Where its artifacts are."""


class FineTuneJobStatus(APIModel):
    observed_generation: int | None = Field(None, ge=0)
    """The metadata.generation the status describes."""
    phase: Phase | None = None
    """Pending, Queued, Suspended, Running, Succeeded or Failed; derived from the conditions, for display."""
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra={"x-kubernetes-list-type": "map",
                                                                                  "x-kubernetes-list-map-keys": ["type"]})
    """Current state, as Kubernetes conditions."""
    job_name: str | None = None
    """The trainer Job of the current run."""
    run_id: str | None = None
    """Identifier of the current run; its artifacts live under output.uri/<runId>/."""
    spec_hash: str | None = None
    """Hash of the training-defining spec of the current run: a spec edit that changes it starts a new run,
    one that does not (suspend, runPolicy deadlines and TTL) applies in place."""
    start_time: datetime | None = None
    """When the current run's trainer started."""
    completion_time: datetime | None = None
    """When the current run ended."""
    attempts: int = Field(0, ge=0)
    """Starts of the current run's trainer: pods (one node; the Job retries the pod), or gang attempts (several
    nodes: all pods restart together, each attempt a new Job). A rerun (spec.rerunToken) counts one node's afresh
    with its new Job; a gang's attempts count on."""
    restarts: int = Field(0, ge=0)
    """Restarts of the current run after a failure or a disruption (preemption, eviction)."""
    failures: int = Field(0, ge=0)
    """Failures of the current run counted against runPolicy.backoffLimit (disruptions are not counted); a rerun
    starts them again from zero."""
    progress: Progress | None = None
    """Training progress."""
    metrics: Metrics | None = None
    """Losses, best metric and throughput."""
    stop_reason: str | None = None
    """Why training stopped: MaxStepsReached, EpochsCompleted or EarlyStopped."""
    artifacts: Artifacts | None = None
    """Artifact locations of the current run."""
    rerun_token: str | None = None
    """The spec.rerunToken the operator has acted on last: the rerun it started, or the value it declined (the
    run had not failed). A spec.rerunToken equal to it asks for nothing."""
    runs: list[RunRecord] = Field(default_factory=list, max_length=10)
    """Earlier runs, newest first (at most 10)."""
    promotion: PromotionStatus | None = None
    """The promotion verdict of the current run (spec.promotion)."""
    run_override: str | None = Field(None, max_length=600)
    """The spec.promotion.override the current run's Job was given (`<action> <runId> <requestedBy>`), recorded as
    its Job is made: a run that ends without a verdict still saw it, so the operator's promotion Job carries out
    only an override that differs (one added or changed later). Unset: none (or a run of an earlier operator)."""
