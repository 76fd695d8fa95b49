"""Planning, pure: from the FineTuneJob, what is observed of its children and the settings, the actions that
make the cluster match (no I/O; reconcile.py carries them out in order).

Level-based, as controller-runtime's CreateOrUpdate: every child of the current run is re-asserted on every
reconcile, so one lost to a failed create, a crash or a manual delete comes back; dependents come before the Job
whose pods mount them. Only children controlled by this object's uid count: a same-named child controlled by
anyone else is a conflict to report, never adopted (metav1.IsControlledBy).
"""
from dataclasses import dataclass, field, replace

from kubetune.api import FineTuneJob
from kubetune.operator import children, gang, kueue, labels, promote_job, runs
from kubetune.operator.children import controlled_by
from kubetune.operator.labels import ANNOTATION_GENERATION
from kubetune.operator.observed import job_finished, stopped
from kubetune.operator.runs import TERMINAL, Run
from kubetune.operator.settings import OperatorSettings
from kubetune.operator.status import State

KINDS = ("ConfigMap", "Service", "Job")
"""Creation order: the Job's pods mount the ConfigMap and rendezvous through the Service."""


@dataclass(frozen=True)
class Action:
    verb: str  # create | delete | patch
    kind: str
    name: str
    body: dict | None = None
    propagation: str = "Background"
    uid: str | None = None
    """A delete's precondition: only the object observed, never a same-named successor created meanwhile."""


@dataclass
class Plan:
    run: Run
    child: dict | None
    """The current run's Job, controlled by this FineTuneJob, when it exists."""
    actions: list[Action] = field(default_factory=list)
    conflict: str | None = None
    """Why the run cannot proceed: a same-named child controlled by someone else."""
    waiting: str | None = None
    """A child of the current run is being deleted: try again once it is gone."""
    state: State | None = None
    """What the status says instead of what the Job alone shows: a gang attempt that failed (gang.py)."""


def _name(obj: dict) -> str:
    return obj["metadata"]["name"]


def _terminating(obj: dict) -> bool:
    return bool(obj["metadata"].get("deletionTimestamp"))


def plan(job: FineTuneJob, observed: dict[str, list[dict]], settings: OperatorSettings) -> Plan:
    """`observed` maps each of KINDS to the objects listed by the FineTuneJob's label (and any read by name),
    "Pod" to the pods of its failed Jobs (a gang's verdict reads them), and "Workload" to Kueue's Workloads of
    its queued Jobs (reconcile.held_workloads)."""
    uid = job.metadata.uid
    owned = {kind: [o for o in observed.get(kind) or [] if controlled_by(o, uid)] for kind in KINDS}
    run = runs.current_run(job, owned["Job"])
    if runs.rerun_asked(job, run):
        # Before the gang's verdict: that is on the failed attempt, which the rerun leaves behind.
        return _plan(job, observed, owned, settings, runs.rerun(run), rerun_cause=runs.rerun_cause(job))
    ended = _gang_verdict(job, run, owned["Job"], observed.get("Pod") or [])
    if ended is not None and ended.restart and ended.stopped:
        return _plan(job, observed, owned, settings, gang.next_run(run, ended), ended)
    if ended is not None and not ended.restart:
        run = replace(run, failures=ended.failures)
    p = _plan(job, observed, owned, settings, run)
    if ended is not None:
        p.state = ended.state
    if job.spec.nodes > 1 and (ended.restart if ended else not (p.child and job_finished(p.child))):
        p.actions = _without_ttl(p.actions)
    return _with_promotion(job, observed, settings, p)


def _with_promotion(job: FineTuneJob, observed: dict[str, list[dict]], settings: OperatorSettings, p: Plan) -> Plan:
    """An ended run whose spec.promotion.override it did not see gets the promotion Job that carries it out
    (promote_job.py), once: its name is deterministic, and one already there (ours, or anyone's: the create would
    only find it) is not made again."""
    if p.conflict or p.waiting or not _finished(job, p.run):
        return p
    name = promote_job.wanted(job, p.run)
    if name is None or any(_name(j) == name for j in observed.get("Job") or []):
        return p
    p.actions.append(Action("create", "Job", name, promote_job.build(job, p.run, settings)))
    return p


def _without_ttl(actions: list[Action]) -> list[Action]:
    """A gang attempt's Job gets runPolicy.ttlSecondsAfterFinished only once the run has ended: the TTL controller
    would otherwise delete a failed attempt, and its count of failures with it, before the next one starts."""
    out = []
    for a in actions:
        if a.verb == "patch" and a.kind == "Job" and "ttlSecondsAfterFinished" in a.body.get("spec", {}):
            spec = {k: v for k, v in a.body["spec"].items() if k != "ttlSecondsAfterFinished"}
            a = replace(a, body={**a.body, "spec": spec}) if spec else None
        if a is not None:
            out.append(a)
    return out


def _finished(job: FineTuneJob, run: Run) -> bool:
    """The status records `run` as ended on its Job (a rerun of it is a new Job, not finished)."""
    prior = job.status
    return (prior is not None and prior.run_id == run.run_id and prior.phase in TERMINAL
            and prior.job_name in (None, run.job_name))


def _gang_verdict(job: FineTuneJob, run: Run, jobs: list[dict], pods: list[dict]) -> gang.Verdict | None:
    """How the current attempt of a multi-node run ended, once it has; a run that already ended stays so."""
    current = next((j for j in jobs if _name(j) == run.job_name and not _terminating(j)), None)
    if current is None or job.spec.nodes == 1:
        return None
    uid = current["metadata"].get("uid")
    mine = [p for p in pods if (p["metadata"].get("labels") or {}).get(labels.LABEL_CONTROLLER_UID) == uid]
    ended = gang.verdict(run, current, mine, job.spec.run_policy.backoff_limit)
    return None if ended is not None and ended.restart and _finished(job, run) else ended


def _plan(job: FineTuneJob, observed: dict[str, list[dict]], owned: dict[str, list[dict]],
          settings: OperatorSettings, run: Run, restart: gang.Verdict | None = None,
          rerun_cause: str | None = None) -> Plan:
    """The actions for `run`; `restart`: the verdict on the gang attempt this run's new Job follows (its children
    are created before the ended attempt's go, so a crash between the two loses no count)."""
    uid = job.metadata.uid
    # Children of earlier runs, or of this run's previous Job, go (the Job first). A previous Job of this very
    # run must be gone, pods included (Foreground), before its successor starts: two trainers would write one
    # run's checkpoints. Those of an earlier run may stop beside the new one: it writes under its own prefix.
    # A Job whose pods have all stopped (Complete, Failed: an ended gang attempt) is no such risk.
    replaced = [j for j in owned["Job"] if _name(j) != run.job_name and not stopped(j)
                and (j["metadata"].get("annotations") or {}).get(ANNOTATION_GENERATION) == str(run.generation)]
    # A promotion Job is no run's attempt: it stays while it runs, and with its run (promote_job.kept).
    deletes = [Action("delete", kind, _name(o), propagation="Foreground" if o in replaced else "Background",
                      uid=o["metadata"].get("uid"))
               for kind in reversed(KINDS) for o in owned[kind]
               if _name(o) != run.job_name and not _terminating(o) and not promote_job.kept(o, run)]
    foreign = [f"{kind} {_name(o)}" for kind in reversed(KINDS) for o in observed.get(kind) or []
               if _name(o) == run.job_name and not controlled_by(o, uid)]
    if foreign:
        # (a gang's ended attempt stays until its successor exists: it holds the count of failures)
        return Plan(run, None, [] if restart else deletes, conflict=conflict_message(foreign[0], uid))
    current = {kind: next((o for o in owned[kind] if _name(o) == run.job_name), None) for kind in KINDS}
    child = current["Job"] if current["Job"] is not None and not _terminating(current["Job"]) else None
    terminating = [kind for kind, o in current.items() if o is not None and _terminating(o)]
    prior = job.status
    finished = _finished(job, run)
    actions = [] if restart else list(deletes)
    if child is None and finished:
        # The Job's TTL removed it: its dependents follow (they are the FineTuneJob's, so nothing else would).
        actions += [Action("delete", kind, _name(o), uid=o["metadata"].get("uid")) for kind, o in current.items()
                    if o is not None and kind != "Job" and not _terminating(o)]
        return Plan(run, None, actions)
    if terminating:
        return Plan(run, child, actions, waiting=f"{terminating[0]} {run.job_name} is being deleted")
    if replaced and child is None:
        return Plan(run, None, actions, waiting=f"Job {_name(replaced[0])} of this run is stopping (its pods "
                                                f"checkpoint) before {run.job_name} resumes the run")
    if child is not None and job_finished(child):
        # Nothing left to ensure on a finished Job; of the in-place fields only its clean-up still matters.
        spec = (children.in_place_patch(job, child) or {}).get("spec", {})
        if "ttlSecondsAfterFinished" in spec:
            actions.append(Action("patch", "Job", run.job_name,
                                  {"spec": {"ttlSecondsAfterFinished": spec["ttlSecondsAfterFinished"]}}))
        return Plan(run, child, actions)
    if child is not None and finished:
        # The operator ended this run itself (a kernel OOM kill, which no pod failure policy can tell from
        # another SIGKILL): hold the Job suspended so it retries nothing; its pods stay for the record. Kueue
        # would start a suspended Job it admitted again: a Job it manages is held by deactivating its Workload.
        workload = kueue.workload_of(observed.get("Workload") or [], child)
        if prior.phase == "Failed" and workload is not None:
            hold = kueue.activation(True, workload)
            actions += [Action("patch", "Workload", _name(workload), hold)] if hold else []
        elif prior.phase == "Failed" and not child.get("spec", {}).get("suspend"):
            actions.append(Action("patch", "Job", run.job_name, {"spec": {"suspend": True}}))
        return Plan(run, child, actions)
    wanted = ("ConfigMap", "Service", "Job") if job.spec.nodes > 1 else ("ConfigMap", "Job")
    if job.spec.suspend and job.spec.scheduling.queue_name and current["Job"] is None:
        # A queued Job is created suspended, but Kueue admits it by unsuspending it, before the operator could
        # deactivate its Workload: a suspended run waits without a Job until it is resumed.
        wanted = tuple(kind for kind in wanted if kind != "Job")
    if any(current[kind] is None for kind in wanted):  # build only when something is missing (most passes: no)
        for obj in [*children.build_dependents(job, run, settings), children.build_job(job, run, settings)]:
            if current[obj["kind"]] is None and obj["kind"] in wanted:
                obj = gang.annotate(obj, restart) if restart and obj["kind"] == "Job" else obj
                if rerun_cause and obj["kind"] == "Job":
                    obj["metadata"]["annotations"][labels.ANNOTATION_RESTART_REASON] = rerun_cause
                actions.append(Action("create", obj["kind"], _name(obj), obj))
    if restart:
        actions += deletes
    if child is not None:
        workload = kueue.workload_of(observed.get("Workload") or [], child)
        patch = children.in_place_patch(job, child, kueue_managed=workload is not None)
        if patch:
            actions.append(Action("patch", "Job", run.job_name, patch))
        active = kueue.activation(job.spec.suspend, workload)
        if active:
            actions.append(Action("patch", "Workload", _name(workload), active))
    return Plan(run, child, actions)


def conflict_message(what: str, uid: str | None) -> str:
    return (f"{what} already exists and is not controlled by this FineTuneJob (uid {uid}), so it is not adopted:"
            f" delete it (or rename the FineTuneJob) to let this run start")
