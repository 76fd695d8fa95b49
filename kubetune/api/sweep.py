"""The FineTuneSweep resource: a FineTuneJob template, a search space over its spec fields, an algorithm, an
objective, a trial budget and a parallelism. Its trials are ordinary FineTuneJobs named `<sweep>-t<N>`, owned by
the sweep; the operator's planner (kubetune/operator/sweep_plan.py) decides them with Optuna.

Same machinery as FineTuneJob: field docstrings become the CRD's descriptions, `__rules__` become CEL rules, and
the one check CEL cannot make (each search-space path names a spec field that takes the values given) runs in
Python here, hence in `kubetune validate` and in the operator.
"""
import copy
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, PlainValidator, ValidationError, WithJsonSchema, model_validator

from kubetune.api.base import APIModel
from kubetune.api.job import API_VERSION, MAX_NAME_LENGTH, NAME_PATTERN, ObjectMeta
from kubetune.api.rules import Rule
from kubetune.api.spec import MAXIMISED_METRICS, FineTuneJobSpec, Metric
from kubetune.api.status import Condition, EvalPoint

SWEEP_KIND = "FineTuneSweep"
SWEEP_PLURAL = "finetunesweeps"
SWEEP_SINGULAR = "finetunesweep"
SWEEP_SHORT_NAMES = ["fts"]
MAX_TRIALS = 999
# Trials are named <sweep>-t<N> (N up to 999) and a FineTuneJob's name has at most MAX_NAME_LENGTH characters.
SWEEP_MAX_NAME_LENGTH = MAX_NAME_LENGTH - len(f"-t{MAX_TRIALS}")
PATH_PATTERN = r"^[a-z][A-Za-z0-9]*(\.[a-z][A-Za-z0-9]*)*$"
NOT_SEARCHABLE = ("suspend", "rerunToken")
"""Spec fields a sweep may not search: the operator prunes a trial through spec.suspend."""

# A number that stays an integer when written as one (a LoRA rank) and a float otherwise (a learning rate). The CRD
# says `number`: a structural schema has no "one of these types" but int-or-string, and CEL cannot see a field
# whose items have no type.
def _number(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("must be a number (strings go in choices)")
    return value


Number = Annotated[int | float, PlainValidator(_number), WithJsonSchema({"type": "number"})]


class SweepReason:
    """CamelCase reasons of a FineTuneSweep's conditions, in one place."""

    SEARCHING = "Searching"
    """Trials run or are about to be created."""
    COMPLETED = "Completed"
    """Every trial of the budget (or of the grid) has ended, and at least one has an objective."""
    NO_OBJECTIVE = "NoObjective"
    """Every trial has ended and none reported the objective (all failed, were pruned, or lack the metric)."""
    RECONCILED = "Reconciled"
    FINISHED = "Finished"
    AS_EXPECTED = "AsExpected"
    RETRYING = "Retrying"
    """Stalled=False while a refused or taken trial is retried: it may clear up without a spec change."""
    NOT_FINISHED = "NotFinished"
    INVALID_SPEC = "InvalidSpec"
    CHILD_CONFLICT = "ChildConflict"
    """A trial's name is taken by a FineTuneJob this sweep does not control."""
    CHILD_REJECTED = "ChildRejected"
    """The API server refused a trial FineTuneJob as invalid (422)."""
    CHILD_FORBIDDEN = "ChildForbidden"
    """The API server refused a trial for now (403: quota, policy); retried."""
    TRIAL_CREATED = "TrialCreated"
    """Event: a trial FineTuneJob was created."""
    PROMOTION_CANDIDATE = "PromotionCandidate"
    """Event: the sweep ended and its template has a promotion gate; the best trial is offered for promotion."""
    TRIAL_PRUNED = "TrialPruned"
    """Event, and a trial's reason: its live eval loss was worse than the pruner allows; it was suspended."""


class IntRange(APIModel):
    min: int
    """Smallest value."""
    max: int
    """Largest value."""
    step: int = Field(1, ge=1)
    """Spacing of the values from min (Optuna's step)."""
    log: bool = False
    """Sample on a log scale (then step must be 1)."""

    __rules__: ClassVar = (
        Rule(cel="self.min < self.max", message="min must be less than max", field="max",
             check=lambda r: r.min < r.max),
        Rule(cel="!self.log || (self.min > 0 && self.step == 1)", message="log needs min > 0 and step 1",
             field="log", check=lambda r: not r.log or (r.min > 0 and r.step == 1)),
    )


class FloatRange(APIModel):
    min: float
    """Smallest value."""
    max: float
    """Largest value."""
    step: float | None = Field(None, gt=0)
    """Spacing of the values from min; unset samples any value."""
    log: bool = False
    """Log-uniform: sample on a log scale (learning rates); needs min > 0 and no step."""

    __rules__: ClassVar = (
        Rule(cel="self.min < self.max", message="min must be less than max", field="max",
             check=lambda r: r.min < r.max),
        Rule(cel="!self.log || (self.min > 0.0 && !has(self.step))", message="log needs min > 0 and no step",
             field="log", check=lambda r: not r.log or (r.min > 0 and r.step is None)),
    )


class Parameter(APIModel):
    """One searched spec field and the values it may take: exactly one of values, choices, intRange, floatRange."""

    path: str = Field(pattern=PATH_PATTERN, max_length=253)
    """The field of the trial's FineTuneJob spec, as a dotted camelCase path: hyperparameters.learningRate,
    method.lora.r, hyperparameters.scheduler."""
    values: list[Number] | None = Field(None, min_length=1, max_length=100)
    """Numbers to try (categorical), for numeric fields: [1.0e-4, 2.0e-4], [8, 16]."""
    choices: list[str] | None = Field(None, min_length=1, max_length=100)
    """Strings to try (categorical), for the other fields: [cosine, linear]; "true" and "false" for a boolean."""
    int_range: IntRange | None = None
    """Whole numbers between min and max."""
    float_range: FloatRange | None = None
    """Numbers between min and max, uniform or log-uniform."""

    __rules__: ClassVar = (
        Rule(cel="(has(self.values) ? 1 : 0) + (has(self.choices) ? 1 : 0) + (has(self.intRange) ? 1 : 0) + "
             "(has(self.floatRange) ? 1 : 0) == 1",
             message="set exactly one of values, choices, intRange and floatRange", field="values",
             check=lambda p: sum(x is not None for x in (p.values, p.choices, p.int_range, p.float_range)) == 1),
    )

    def categories(self) -> list | None:
        """The values or choices, for a categorical parameter."""
        return list(self.values) if self.values is not None else (
            list(self.choices) if self.choices is not None else None)

    def samples(self) -> list:
        """Values that stand for the whole range when checking that the path accepts them."""
        if self.categories() is not None:
            return self.categories()
        r = self.int_range or self.float_range
        return [r.min, r.max] if r is not None else []


class Objective(APIModel):
    """What ranks the trials: a metric of the trial's status."""

    metric: Metric = "loss"
    """The metric, by the trainer's names (loss, accuracy, f1, ...)."""
    dataset: Literal["test", "validation"] = "test"
    """test: status.metrics.test of a finished trial (the template needs dataset.test); validation: the best
    monitored validation value (status.metrics.best, the earlyStopping metric) or, for loss, the last eval loss."""
    direction: Literal["auto", "minimize", "maximize"] = "auto"
    """auto knows it from the metric (loss, perplexity, mse, mae: minimize; the others: maximize)."""

    def minimize(self) -> bool:
        if self.direction != "auto":
            return self.direction == "minimize"
        return self.metric not in MAXIMISED_METRICS


class Pruning(APIModel):
    """Stop losing trials early on their live validation loss, with an Optuna pruner. A pruned trial is
    suspended (spec.suspend) and keeps its checkpoints."""

    type: Literal["median", "successiveHalving"] = "median"
    """median: stop a trial whose eval loss is worse than the median of the finished trials' at the same step
    (optuna.pruners.MedianPruner); successiveHalving: keep the best 1/reductionFactor at each rung
    (optuna.pruners.SuccessiveHalvingPruner)."""
    startup_trials: int = Field(2, ge=0)
    """median: prune nothing until this many trials have finished."""
    warmup_steps: int = Field(0, ge=0)
    """median: prune no trial before this optimizer step."""
    min_resource: int | None = Field(None, ge=1)
    """successiveHalving: the step of the first rung; unset estimates it from finished trials."""
    reduction_factor: int = Field(3, ge=2)
    """successiveHalving: the fraction 1/reductionFactor of the trials kept at each rung."""


class TrialTemplateMeta(APIModel):
    labels: dict[str, str] | None = None
    """Labels for every trial FineTuneJob (the operator adds its own)."""
    annotations: dict[str, str] | None = None
    """Annotations for every trial FineTuneJob."""


class TrialTemplate(APIModel):
    metadata: TrialTemplateMeta = Field(default_factory=TrialTemplateMeta)
    """Labels and annotations of the trials."""
    spec: FineTuneJobSpec
    """The FineTuneJob spec every trial starts from; the search space sets fields of it."""


class FineTuneSweepSpec(APIModel):
    template: TrialTemplate
    """The trials' FineTuneJob: its spec, with each searched field set to the trial's value."""
    search_space: list[Parameter] = Field(min_length=1, max_length=32, json_schema_extra={
        "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["path"]})
    """The spec fields to search and their values."""
    algorithm: Literal["grid", "random", "tpe"] = "grid"
    """grid: every combination of the values (optuna GridSampler); random: independent samples (RandomSampler);
    tpe: a model of the finished trials proposes the next (TPESampler). Samplers are seeded from the sweep's
    uid and the trial number, so a restarted operator proposes the same trial."""
    objective: Objective = Field(default_factory=Objective)
    """The metric the trials are ranked by."""
    max_trials: int | None = Field(None, ge=1, le=MAX_TRIALS)
    """Trials to run at most; grid: unset runs the whole grid (and never more than it). Required otherwise."""
    parallelism: int = Field(1, ge=1, le=100)
    """Trials unfinished at once (pending, queued or running); the rest wait until one ends."""
    pruning: Pruning | None = None
    """Early stopping of losing trials on their live eval loss; needs validation data in the template."""

    __rules__: ClassVar = (
        Rule(cel="self.algorithm != 'grid' || self.searchSpace.all(p, has(p.values) || has(p.choices))",
             message="grid search takes lists only: give each parameter values or choices, or use random or tpe",
             field="algorithm",
             check=lambda s: s.algorithm != "grid" or all(p.categories() is not None for p in s.search_space)),
        Rule(cel="self.algorithm == 'grid' || has(self.maxTrials)",
             message="random and tpe need maxTrials (only a grid has an end of its own)", field="maxTrials",
             check=lambda s: s.algorithm == "grid" or s.max_trials is not None),
        Rule(cel="self.objective.dataset != 'test' || has(self.template.spec.dataset.test)",
             message="a test objective needs test data: set template.spec.dataset.test or objective.dataset "
             "validation", field="objective.dataset",
             check=lambda s: s.objective.dataset != "test" or s.template.spec.dataset.test is not None),
        Rule(cel="!has(self.pruning) || has(self.template.spec.dataset.validation) || "
             "self.template.spec.dataset.validationSplit > 0.0",
             message="pruning reads the trials' eval loss: the template needs dataset.validation or "
             "dataset.validationSplit", field="pruning",
             check=lambda s: s.pruning is None or s.template.spec.dataset.validation is not None
             or s.template.spec.dataset.validation_split > 0),
    )

    @model_validator(mode="after")
    def _paths_take_their_values(self):
        """What CEL cannot check: each path names a field of the spec, and the template with any of its values
        is still a valid FineTuneJob spec (a learning rate of 2 is refused here, not by a trial)."""
        problems, base = [], self.template.spec.to_wire()
        for param in self.search_space:
            if param.path.split(".")[0] in NOT_SEARCHABLE:
                problems.append(f"searchSpace {param.path}: not searchable (the operator prunes through it)")
                continue
            for value in param.samples():
                try:
                    FineTuneJobSpec.model_validate(apply_params(base, {param.path: value}))
                except (ValidationError, KeyError, TypeError) as exc:
                    problems.append(f"searchSpace {param.path}: {value!r} does not fit the spec: "
                                    f"{_first_error(exc)}")
                    break
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def grid_size(self) -> int | None:
        if self.algorithm != "grid":
            return None
        size = 1
        for param in self.search_space:
            size *= len(param.categories() or [])
        return size

    def trial_budget(self) -> int:
        """How many trials the sweep runs in all."""
        grid = self.grid_size()
        if grid is None:
            return self.max_trials or 0
        return min(grid, self.max_trials) if self.max_trials else grid


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        return f"{where}: {err['msg']}" if where else err["msg"]
    return f"no such field ({exc})"


def apply_params(spec: dict, params: dict[str, Any]) -> dict:
    """A copy of the spec (wire form) with each dotted path set; intermediate objects are created, but a path
    through a non-object (or onto a list) is a KeyError."""
    out = copy.deepcopy(spec)
    for path, value in params.items():
        node, *parents = out, *path.split(".")[:-1]
        for key in parents:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise KeyError(f"{key} in {path} is not an object")
            node = child
        node[path.split(".")[-1]] = value
    return out


# --- Status -----------------------------------------------------------------------------------------------

TrialPhase = Literal["Pending", "Running", "Succeeded", "Failed", "Pruned"]
SweepPhase = Literal["Running", "Succeeded", "Failed"]


class Interval(APIModel):
    """The objective's 95% interval on the test set, on the objective's scale. basis pairedWithBaseModel: the
    trainer's paired-bootstrap interval of (trial - base model) added to the base model's value, which every
    trial of the sweep shares; ownBootstrap: the percentile-bootstrap interval of the trial's own test metric."""

    low: float
    high: float
    basis: Literal["pairedWithBaseModel", "ownBootstrap"] | None = None
    """Which interval it is; two trials are compared on one basis only."""
    baseline: float | None = None
    """pairedWithBaseModel: the base model's test value the interval is relative to (trials are compared on
    this basis only when they share it)."""


class Trial(APIModel):
    name: str
    """The trial's FineTuneJob."""
    number: int = Field(ge=0)
    """N of <sweep>-t<N>, the order of creation."""
    params: dict[str, Any] = Field(json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})
    """The searched fields' values, by path."""
    phase: TrialPhase
    """Pending (created, not started: queued, scheduling), Running, Succeeded, Failed or Pruned."""
    reason: str | None = None
    """The trial FineTuneJob's reason (TrialPruned when pruned)."""
    objective: float | None = None
    """The objective's value, once the trial reports it."""
    interval: Interval | None = None
    """The objective's 95% interval (a test objective: from the trainer's bootstrap; none for validation)."""
    own_interval: Interval | None = None
    """With a pairedWithBaseModel interval: the trial's own test interval too, to compare it with a trial that has
    no paired one."""
    run_id: str | None = None
    """The trial FineTuneJob's status.runId: its artifacts are under output.uri/<runId>/."""
    rank: int | None = Field(None, ge=1)
    """1 for the best objective, by its value (ties: the earlier trial); none without an objective."""
    indistinguishable_from_best: bool | None = None
    """The trial's interval overlaps the best trial's, so the data do not show that the best is better (the
    best itself: true); false: the best is better beyond noise; none: no interval to judge by."""
    pruned: bool = False
    """Stopped early on its eval loss."""
    eval_losses: list[EvalPoint] = Field(default_factory=list, max_length=200)
    """The eval losses seen while it ran, which the pruner judges (the newest 200)."""


class BestTrial(APIModel):
    name: str
    """The trial's FineTuneJob."""
    objective: float
    """Its objective."""
    params: dict[str, Any] = Field(json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})
    """Its searched values."""
    interval: Interval | None = None
    """Its objective's 95% interval, on the basis the trials were compared on."""
    indistinguishable: list[str] = Field(default_factory=list, max_length=MAX_TRIALS)
    """The other finished trials whose intervals overlap the best's: not shown to be worse (docs/sweeps.md)."""
    comparison: Literal["intervalOverlap", "none"] = "none"
    """intervalOverlap: trials were compared by the overlap of their 95% intervals, a conservative test (two
    intervals apart means a real difference; overlapping ones may still differ); none: the objective has no
    intervals (a validation objective, or no bootstrap), so the ranking is by value only."""


class PromotionCandidate(APIModel):
    """The one trial offered for promotion, when the template has spec.promotion: trials run without it (none of
    them writes to the destination), and the sweep names the best once every trial has ended."""

    trial: str
    """The best trial's FineTuneJob."""
    run_id: str | None = None
    """Its run (the files under the template's output.uri/<runId>/): the runId a promotion override names."""
    destination: str
    """The template's spec.promotion.destination."""
    clear_winner: bool | None = None
    """true: its interval is apart from every other finished trial's; false: some are indistinguishable from it
    (status.best.indistinguishable); none: no intervals to compare."""
    message: str = ""
    """What to do next, in words."""


class TrialCounts(APIModel):
    created: int = Field(0, ge=0)
    """Trial FineTuneJobs created."""
    running: int = Field(0, ge=0)
    """Trials not finished (pending, queued or running): at most spec.parallelism."""
    succeeded: int = Field(0, ge=0)
    failed: int = Field(0, ge=0)
    pruned: int = Field(0, ge=0)
    done: int = Field(0, ge=0)
    """Finished trials: succeeded, failed and pruned."""
    total: int = Field(0, ge=0)
    """The trial budget: maxTrials, or the grid's size."""


class FineTuneSweepStatus(APIModel):
    observed_generation: int | None = Field(None, ge=0)
    """The metadata.generation the status describes."""
    phase: SweepPhase | None = None
    """Running, Succeeded or Failed; derived from the conditions, for display."""
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra={
        "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})
    """Ready, Reconciling, Stalled, Succeeded and Failed, each with its reason."""
    trials: list[Trial] = Field(default_factory=list, max_length=MAX_TRIALS)
    """Every trial, in creation order."""
    best: BestTrial | None = None
    """The trial with the best objective so far, and the trials indistinguishable from it."""
    promotion_candidate: PromotionCandidate | None = None
    """With template.spec.promotion: the best trial, once every trial has ended (docs/sweeps.md)."""
    counts: TrialCounts | None = None
    """How many trials are where."""
    start_time: datetime | None = None
    completion_time: datetime | None = None


class SweepMeta(ObjectMeta):
    name: str = Field(max_length=SWEEP_MAX_NAME_LENGTH, pattern=NAME_PATTERN)


class FineTuneSweep(APIModel):
    api_version: Literal["kubetune.io/v1alpha1"] = API_VERSION
    kind: Literal["FineTuneSweep"] = SWEEP_KIND
    metadata: SweepMeta
    spec: FineTuneSweepSpec
    status: FineTuneSweepStatus | None = None
