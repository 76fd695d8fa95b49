"""What a FineTuneSweep should look like, given what is: a pure function (no kopf, no API client) from the sweep
and its observed trial FineTuneJobs to the trials to create, the trials to prune and the sweep's status.

Optuna does the searching and the pruning; this module only rebuilds Optuna's study from the world on every call.
Level-based: a trial's params live on its FineTuneJob (an annotation) and on the sweep's status, so an operator
that restarts replays the same study. The study is in memory and thrown away after each call: every known trial
is enqueued with its params (`enqueue_trial` + `ask`), its eval losses reported, and it is told its outcome; then
each running trial goes to the pruner, and new trials are asked for. A trial's number is its place in creation
order (<sweep>-t<N>), and the sampler that proposes trial N is seeded from the sweep's uid and N, so the same
world proposes the same trial, and a name that exists already is never proposed again (a grid's sampler has one
seed for the sweep: it shuffles the grid once, and trial N takes point N).
"""
import json
import logging
import warnings
from dataclasses import dataclass, field
from datetime import datetime
import optuna
from pydantic import ValidationError

from kubetune.api.job import API_VERSION, KIND
from kubetune.api.spec import FineTuneJobSpec
from kubetune.api.status import Condition, ConditionType
from kubetune.api.sweep import (SWEEP_KIND, BestTrial, EvalPoint, FineTuneSweep, FineTuneSweepStatus, Interval,
                                Parameter, PromotionCandidate, SweepReason, Trial, TrialCounts, apply_params)
from kubetune.operator.children import controlled_by, owner_reference
from kubetune.operator.labels import ANNOTATION_PRUNED, ANNOTATION_TRIAL_PARAMS, LABEL_SWEEP, LABEL_TRIAL
from kubetune.operator.status import eval_curve, settled
from kubetune.operator.sweep_rank import rank

optuna.logging.set_verbosity(optuna.logging.WARNING)
log = logging.getLogger("kubetune.operator")

TERMINAL = ("Succeeded", "Failed", "Pruned")
MAX_EVAL_POINTS = 200


@dataclass
class SweepPlan:
    create: list[dict] = field(default_factory=list)
    """Trial FineTuneJobs to create, in number order."""
    prune: list[tuple[str, dict]] = field(default_factory=list)
    """(trial name, merge patch) for each trial to stop: spec.suspend and the pruned annotation."""
    status: FineTuneSweepStatus | None = None
    events: list[tuple[str, str, str]] = field(default_factory=list)
    """(type, reason, message) to post once the status is written."""
    conflict: str | None = None
    """A trial's name is held by a FineTuneJob the sweep does not control."""


def trial_name(sweep: str, number: int) -> str:
    return f"{sweep}-t{number}"


def seed(uid: str | None, number: int) -> int:
    """The sampler's seed for trial `number`: fixed by the sweep's identity, different for every trial."""
    return (int((uid or "0").replace("-", "")[:8] or "0", 16) + number) % 2**32


def distribution(param: Parameter) -> optuna.distributions.BaseDistribution:
    if param.categories() is not None:
        return optuna.distributions.CategoricalDistribution(param.categories())
    if param.int_range is not None:
        r = param.int_range
        return optuna.distributions.IntDistribution(r.min, r.max, log=r.log, step=r.step)
    r = param.float_range
    return optuna.distributions.FloatDistribution(r.min, r.max, log=r.log, step=r.step)


def sampler(sweep: FineTuneSweep, number: int) -> optuna.samplers.BaseSampler:
    spec, s = sweep.spec, seed(sweep.metadata.uid, number)
    if spec.algorithm == "grid":
        # Trial N of a grid is point N of GridSampler's order, which its seed shuffles: one seed for the whole
        # sweep, so that every N takes a different point of one permutation.
        return optuna.samplers.GridSampler({p.path: p.categories() for p in spec.search_space},
                                           seed=seed(sweep.metadata.uid, 0))
    if spec.algorithm == "random":
        return optuna.samplers.RandomSampler(seed=s)
    return optuna.samplers.TPESampler(seed=s)


def pruner(sweep: FineTuneSweep) -> optuna.pruners.BasePruner:
    p = sweep.spec.pruning
    if p is None:
        return optuna.pruners.NopPruner()
    if p.type == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_steps)
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=p.min_resource or "auto",
                                                  reduction_factor=p.reduction_factor)


# --- Reading the trials -----------------------------------------------------------------------------------

def number_of(obj: dict) -> int | None:
    value = (obj["metadata"].get("labels") or {}).get(LABEL_TRIAL, "")
    return int(value) if value.isdigit() else None


def params_of(obj: dict) -> dict | None:
    try:
        params = json.loads((obj["metadata"].get("annotations") or {}).get(ANNOTATION_TRIAL_PARAMS, ""))
    except ValueError:
        return None
    return params if isinstance(params, dict) else None


def objective_of(sweep: FineTuneSweep, status: dict) -> tuple[float | None, Interval | None, Interval | None]:
    """The trial's objective, its 95% interval (paired with the base model when the trainer compared the
    objective's metric against it, else the metric's own bootstrap interval) and, beside a paired one, the own
    interval, from its FineTuneJob's status. A validation objective has no interval."""
    objective, metrics = sweep.spec.objective, status.get("metrics") or {}
    if objective.dataset == "test":
        test, m = metrics.get("test") or {}, objective.metric
        value = test.get(m)
        own = None
        if _number(test.get(f"{m}Low")) and _number(test.get(f"{m}High")):
            own = Interval(low=float(test[f"{m}Low"]), high=float(test[f"{m}High"]), basis="ownBootstrap")
        paired = None
        for c in metrics.get("comparisons") or []:
            if c.get("against") == "baseModel" and c.get("metric") == m and all(
                    _number(c.get(k)) for k in ("baseline", "low", "high")):
                paired = Interval(low=c["baseline"] + c["low"], high=c["baseline"] + c["high"],
                                  basis="pairedWithBaseModel", baseline=float(c["baseline"]))
        if not _number(value):
            return None, None, None
        return float(value), (paired or own), (own if paired is not None else None)
    best = metrics.get("best") or {}
    if best.get("name") == objective.metric and _number(best.get("value")):
        return float(best["value"]), None, None
    if objective.metric == "loss" and _number(metrics.get("evalLoss")):
        return float(metrics["evalLoss"]), None, None
    return None, None, None


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def phase_of(obj: dict) -> tuple[str, str | None]:
    status = obj.get("status") or {}
    phase = status.get("phase")
    # One that finished before its suspension landed has its result: it counts as finished.
    if (obj["metadata"].get("annotations") or {}).get(ANNOTATION_PRUNED) == "true" and phase != "Succeeded":
        return "Pruned", SweepReason.TRIAL_PRUNED
    reason = next((c.get("reason") for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    if phase in ("Succeeded", "Failed", "Running"):
        return phase, reason
    return "Pending", reason


def eval_step(step: int, spec: dict, status: dict) -> int:
    """The step of the evaluation whose loss the status shows at progress `step`: the trainer evaluates every
    evaluation.everySteps steps (unset: a tenth of the run) and at the last step, so the latest evaluation is the
    last multiple at or before `step`. Optuna's pruners compare trials at equal steps; the step the operator
    happened to read differs from trial to trial, the evaluation's does not. Without the run's length (an
    unset everySteps and no totalSteps yet) the step read is kept."""
    total = (status.get("progress") or {}).get("totalSteps")
    every = ((spec.get("evaluation") or {}).get("everySteps")
             or (max(1, total // 10) if isinstance(total, int) and total > 0 else None))
    if isinstance(total, int) and total > 0 and step >= total:
        return total
    return (step // every) * every if isinstance(every, int) and every > 0 else step


def eval_history(previous: list[EvalPoint], status: dict, spec: dict | None = None) -> list[EvalPoint]:
    """The recorded eval losses with the trial's own curve (status.metrics.evalLosses: every evaluation the
    trainer served, under its step), by step. A trainer image that serves no curve: the recorded ones plus the
    loss the status shows now, when it is new (a new value), at the step of the evaluation that produced it
    (eval_step); an evaluation between two reads is missing then."""
    curve = [p for p in (status.get("metrics") or {}).get("evalLosses") or []
             if isinstance(p, dict) and isinstance(p.get("step"), int) and _number(p.get("value"))]
    if curve:
        return eval_curve(previous, [(p["step"], p["value"]) for p in curve], limit=MAX_EVAL_POINTS)
    points = list(previous)
    loss = (status.get("metrics") or {}).get("evalLoss")
    step = (status.get("progress") or {}).get("step")
    if not (_number(loss) and isinstance(step, int)):
        return points[-MAX_EVAL_POINTS:]
    step = eval_step(step, spec or {}, status)
    if not points or (points[-1].value != loss and step > points[-1].step):
        points.append(EvalPoint(step=step, value=float(loss)))
    return points[-MAX_EVAL_POINTS:]


# --- Building a trial -------------------------------------------------------------------------------------

def trial_manifest(sweep: FineTuneSweep, number: int, params: dict) -> tuple[dict, str | None]:
    """The trial FineTuneJob, owned by the sweep: the template's spec with the params set, as the FineTuneJob model
    writes it (a choice "true" becomes a boolean, 8.0 for an integer field 8); or, with the reason, the raw spec
    when the params together break a FineTuneJob rule (each fits alone: batchSize 12 with microBatchSize 8)."""
    meta, template = sweep.metadata, sweep.spec.template
    labels = {**(template.metadata.labels or {}), LABEL_SWEEP: meta.name, LABEL_TRIAL: str(number)}
    annotations = {**(template.metadata.annotations or {}),
                   ANNOTATION_TRIAL_PARAMS: json.dumps(params, sort_keys=True)}
    # No trial runs the template's promotion gate: each would promote itself to the one destination. The sweep
    # offers its best trial instead (status.promotionCandidate).
    spec, problem = apply_params({k: v for k, v in template.spec.to_wire().items() if k != "promotion"}, params), None
    try:
        spec = FineTuneJobSpec.model_validate(spec).to_wire()
    except (ValidationError, KeyError, TypeError) as exc:
        problem = str(exc).replace("\n", " ")[:500]
    return {"apiVersion": API_VERSION, "kind": KIND,
            "metadata": {"name": trial_name(meta.name, number), "namespace": meta.namespace, "labels": labels,
                         "annotations": annotations,
                         "ownerReferences": [owner_reference(API_VERSION, SWEEP_KIND, meta.name, meta.uid)]},
            "spec": spec}, problem


# --- The plan ---------------------------------------------------------------------------------------------

def plan(sweep: FineTuneSweep, observed: list[dict], now: datetime) -> SweepPlan:
    """`observed`: the FineTuneJobs labelled as this sweep's trials (any owner)."""
    out = SweepPlan()
    meta, spec = sweep.metadata, sweep.spec
    prior = sweep.status or FineTuneSweepStatus()
    recorded = {t.number: t for t in prior.trials}
    children: dict[int, dict] = {}
    for obj in observed:
        number = number_of(obj)
        if number is None or obj["metadata"]["name"] != trial_name(meta.name, number):
            continue
        if not controlled_by(obj, meta.uid):
            out.conflict = (f"FineTuneJob {obj['metadata']['name']} exists and is not controlled by this sweep "
                            f"(uid {meta.uid}): delete it or rename the sweep")
            continue
        children[number] = obj
    numbers = sorted(set(children) | set(recorded))

    trials: list[Trial] = []
    at_last_evaluation: set[int] = set()  # nothing left to save by pruning: they finish and are ranked
    for number in numbers:
        obj, before = children.get(number), recorded.get(number)
        if obj is None:
            if before is not None and before.phase in TERMINAL:
                trials.append(before)  # its FineTuneJob was deleted after it ended: its record stays
                continue
            if before is None:
                continue
            # Deleted before it ended: created again with the same params (ensure every trial, every time).
            manifest, _ = trial_manifest(sweep, number, before.params)
            out.create.append(manifest)
            trials.append(before.model_copy(update={"phase": "Pending"}))
            continue
        params = params_of(obj)
        if params is None:
            params = before.params if before is not None else {}
        phase, reason = phase_of(obj)
        status = obj.get("status") or {}
        objective, interval, own = objective_of(sweep, status) if phase == "Succeeded" else (None, None, None)
        history = eval_history(before.eval_losses if before else [], status, obj.get("spec") or {})
        total = (status.get("progress") or {}).get("totalSteps")
        if history and isinstance(total, int) and total > 0 and history[-1].step >= total:
            at_last_evaluation.add(number)
        trials.append(Trial(name=obj["metadata"]["name"], number=number, params=params, phase=phase, reason=reason,
                            objective=objective, interval=interval, own_interval=own,
                            run_id=status.get("runId") or (before.run_id if before else None),
                            pruned=phase == "Pruned", eval_losses=history))

    study, verdicts = replay(sweep, trials)
    if spec.pruning is not None:
        for trial, prune in zip(trials, verdicts):
            if trial.phase == "Running" and prune and trial.number not in at_last_evaluation:
                last = trial.eval_losses[-1]
                out.prune.append((trial.name, {"metadata": {"annotations": {ANNOTATION_PRUNED: "true"}},
                                               "spec": {"suspend": True}}))
                trial.phase, trial.pruned, trial.reason = "Pruned", True, SweepReason.TRIAL_PRUNED
                out.events.append(("Normal", SweepReason.TRIAL_PRUNED,
                                   f"pruned trial {trial.name}: eval loss {last.value:.4g} at step {last.step} "
                                   f"({spec.pruning.type})"))

    budget = spec.trial_budget()
    unfinished = sum(t.phase not in TERMINAL for t in trials)
    next_number = numbers[-1] + 1 if numbers else 0
    room = min(spec.parallelism - unfinished, budget - next_number)
    if out.conflict is None:
        distributions = {p.path: distribution(p) for p in spec.search_space}
        for number in range(next_number, next_number + max(room, 0)):
            study.sampler = sampler(sweep, number)
            params = study.ask(distributions).params
            manifest, problem = trial_manifest(sweep, number, params)
            if problem:  # never created: the record alone says why
                trials.append(Trial(name=manifest["metadata"]["name"], number=number, params=params,
                                    phase="Failed", reason=SweepReason.INVALID_SPEC))
                out.events.append(("Warning", SweepReason.INVALID_SPEC,
                                   f"trial {manifest['metadata']['name']} {params}: {problem}"))
                continue
            out.create.append(manifest)
            trials.append(Trial(name=manifest["metadata"]["name"], number=number, params=params, phase="Pending"))
    out.status = status_of(sweep, prior, trials, budget, now, out.conflict)
    return out


def replay(sweep: FineTuneSweep, trials: list[Trial]) -> tuple[optuna.Study, list[bool]]:
    """The study as Optuna would hold it had it run these trials: finished trials first (the pruner compares a
    running trial with them), each enqueued with its params, its eval losses reported one by one with the
    pruner asked after each (as a live trial would; successive halving records the rungs it reaches), and its
    outcome told; the running and pending ones last, left running. Returns the study and, in `trials`' order,
    whether the pruner stops each trial at its latest eval loss. The study always minimises (eval losses are
    what the pruner reads); a maximised objective is told negated."""
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.RandomSampler(seed=0),
                                pruner=pruner(sweep))
    distributions = {p.path: distribution(p) for p in sweep.spec.search_space}
    sign = 1.0 if sweep.spec.objective.minimize() else -1.0
    verdicts: dict[int, bool] = {}
    order = sorted(trials, key=lambda t: (t.phase not in TERMINAL, t.number))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a param outside today's space (an edited sweep) is kept as it was
        for trial in order:
            study.enqueue_trial(trial.params, skip_if_exists=False)
            optuna_trial = study.ask({k: v for k, v in distributions.items() if k in trial.params})
            prune = False
            for point in trial.eval_losses:
                optuna_trial.report(point.value, point.step)
                if sweep.spec.pruning is not None:
                    prune = optuna_trial.should_prune()
            verdicts[trial.number] = prune
            if trial.phase not in TERMINAL:
                continue
            if trial.phase == "Pruned":
                study.tell(optuna_trial, state=optuna.trial.TrialState.PRUNED)
            elif trial.phase == "Succeeded" and trial.objective is not None:
                study.tell(optuna_trial, sign * trial.objective)
            else:
                study.tell(optuna_trial, state=optuna.trial.TrialState.FAIL)
    return study, [verdicts[t.number] for t in trials]


def status_of(sweep: FineTuneSweep, prior: FineTuneSweepStatus, trials: list[Trial], budget: int, now: datetime,
              conflict: str | None) -> FineTuneSweepStatus:
    trials = sorted(trials, key=lambda t: t.number)
    count = {phase: sum(t.phase == phase for t in trials) for phase in ("Succeeded", "Failed", "Pruned")}
    unfinished = sum(t.phase not in TERMINAL for t in trials)
    counts = TrialCounts(created=len(trials), running=unfinished, succeeded=count["Succeeded"],
                         failed=count["Failed"], pruned=count["Pruned"], done=len(trials) - unfinished, total=budget)
    top, trials = rank(trials, sweep.spec.objective.minimize())
    best = None
    if top is not None:
        others = [t for t in trials if t.rank is not None and t.number != top.number]
        compared = [t for t in others if t.indistinguishable_from_best is not None]
        best = BestTrial(name=top.name, objective=top.objective, params=top.params, interval=top.interval,
                         indistinguishable=[t.name for t in others if t.indistinguishable_from_best],
                         comparison="intervalOverlap" if compared else "none")
    ended = len(trials) >= budget and unfinished == 0
    if conflict:
        phase, reason, message = "Running", SweepReason.CHILD_CONFLICT, conflict
    elif ended and best is not None:
        phase, reason = "Succeeded", SweepReason.COMPLETED
        message = (f"{len(trials)} trials ended; best {best.name} with {sweep.spec.objective.metric} "
                   f"{best.objective:.4g}; {ties(best)}")
    elif ended:
        phase, reason = "Failed", SweepReason.NO_OBJECTIVE
        message = f"{len(trials)} trials ended and none reported {sweep.spec.objective.dataset} " \
                  f"{sweep.spec.objective.metric}"
    else:
        phase, reason = "Running", SweepReason.SEARCHING
        message = f"{counts.done}/{budget} trials done, {unfinished} running (parallelism {sweep.spec.parallelism})"
    generation = sweep.metadata.generation
    return FineTuneSweepStatus(
        observed_generation=generation, phase=phase,
        conditions=sweep_conditions(phase, reason, message, "retry" if conflict else None, prior.conditions,
                                    generation, now),
        trials=trials, best=best, counts=counts,
        promotion_candidate=candidate(sweep, best, trials) if phase == "Succeeded" else None,
        start_time=prior.start_time or now,
        completion_time=(prior.completion_time or now) if phase in ("Succeeded", "Failed") else None)


def ties(best: BestTrial) -> str:
    if best.comparison == "none":
        return "no intervals to compare trials by"
    if not best.indistinguishable:
        return "its 95% interval is apart from every other trial's"
    return f"indistinguishable from it (overlapping 95% intervals): {', '.join(best.indistinguishable)}"


def candidate(sweep: FineTuneSweep, best: BestTrial | None, trials: list[Trial]) -> PromotionCandidate | None:
    """With a promotion gate in the template: the best trial, offered once every trial has ended (the trials ran
    without the gate, so none of them wrote to the destination)."""
    promotion = sweep.spec.template.spec.promotion
    if promotion is None or best is None:
        return None
    top = next(t for t in trials if t.name == best.name)
    clear = None if best.comparison == "none" else not best.indistinguishable
    message = (f"promote {best.name} (run {top.run_id or 'unknown'}) to {promotion.destination} with an override "
               f"on that trial, which the operator carries out, or `kubetune override` (docs/sweeps.md); {ties(best)}")
    return PromotionCandidate(trial=best.name, run_id=top.run_id, destination=promotion.destination,
                              clear_winner=clear, message=message[:1000])


def sweep_conditions(phase: str, reason: str, message: str, problem: str | None, previous: list[Condition],
                     generation: int | None, now: datetime) -> list[Condition]:
    """Ready, Reconciling, Stalled, Succeeded and Failed, each with its own reason. kstatus (Flux `wait: true`)
    reads the first three: InProgress while trials run and while a refusal is retried (`problem` "retry": a name
    taken, a quota), Current once the sweep has succeeded, Failed through Stalled (it failed, or `problem`
    "permanent": only a spec change helps)."""
    ended = phase in ("Succeeded", "Failed")
    stalled = phase == "Failed" or problem == "permanent"

    def unless(holds: bool, why_not: tuple[str, str]) -> tuple[bool, str, str]:
        return (True, reason, message) if holds else (False, *why_not)

    truth = {
        ConditionType.READY: (phase == "Succeeded", reason, message),
        ConditionType.RECONCILING: unless(phase == "Running" and not stalled, (
            (SweepReason.FINISHED, "every trial has ended") if ended else (SweepReason.RECONCILED, message))),
        ConditionType.STALLED: unless(stalled, (
            (SweepReason.RETRYING, f"the operator retries: {message}") if problem == "retry" else
            (SweepReason.AS_EXPECTED, "nothing stops the sweep"))),
        ConditionType.SUCCEEDED: unless(phase == "Succeeded", (
            (reason, message) if phase == "Failed" else (SweepReason.NOT_FINISHED, "trials are still to run"))),
        ConditionType.FAILED: unless(phase == "Failed", (SweepReason.AS_EXPECTED, "the sweep has not failed")),
    }
    return settled({kind: (holds, why, text[:1000]) for kind, (holds, why, text) in truth.items()},
                   previous, generation, now)
