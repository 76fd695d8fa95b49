"""What a FineTuneJob becomes in the cluster: pure functions from the resource to its children (no I/O).

`kubetune render` prints exactly these objects. One run (one training identity: runs.py) has a
Job named `<name>-g<generation>`; its spec ConfigMap and, for several nodes, a headless Service carry the same
name. All three are controlled by the FineTuneJob (by uid), so the dependents can be created before the Job and
re-asserted on every reconcile (plan.py), and deleting the FineTuneJob removes them all.
"""
import json

from kubetune.api import FineTuneJob, contract
from kubetune.api.job import API_VERSION, KIND
from kubetune.operator.labels import (ANNOTATION_ATTEMPT, ANNOTATION_FAILURES, ANNOTATION_GENERATION,
                                      ANNOTATION_RESTART_REASON, ANNOTATION_SPEC_HASH, ANNOTATION_TEMPLATE_HASH,
                                      LABEL_FINETUNEJOB, LABEL_JOB_NAME, LABEL_KUEUE_QUEUE, LABEL_RUN_ID)
from kubetune.operator.runs import Run, current_run, rerun, rerun_asked, rerun_cause
from kubetune.operator.settings import OperatorSettings

CONTAINER = "trainer"
CACHE_DIR = "/var/cache/kubetune"
# Preempted pods get SIGTERM and this long to write a synchronous checkpoint before SIGKILL.
TERMINATION_GRACE_SECONDS = 300
CREDENTIAL_KEYS = {"AWS_ACCESS_KEY_ID": False, "AWS_SECRET_ACCESS_KEY": False, "AWS_SESSION_TOKEN": True}


def controlled_by(obj: dict, uid: str | None) -> bool:
    """metav1.IsControlledBy: the object's controller reference names this uid (a name proves nothing)."""
    return bool(uid) and any(o.get("controller") and o.get("uid") == uid
                             for o in obj.get("metadata", {}).get("ownerReferences") or [])


def labels(job: FineTuneJob, run: Run) -> dict[str, str]:
    return {"app.kubernetes.io/name": "kubetune-trainer", "app.kubernetes.io/managed-by": "kubetune",
            "app.kubernetes.io/instance": job.metadata.name, LABEL_FINETUNEJOB: job.metadata.name,
            LABEL_RUN_ID: run.run_id}


def owner_reference(api_version: str, kind: str, name: str, uid: str) -> dict:
    return {"apiVersion": api_version, "kind": kind, "name": name, "uid": uid, "controller": True,
            "blockOwnerDeletion": True}


def metadata(job: FineTuneJob, run: Run, owner: dict) -> dict:
    return {"name": run.job_name, "namespace": job.metadata.namespace, "labels": labels(job, run),
            "ownerReferences": [owner]}


def spec_document(job: FineTuneJob) -> str:
    """The FineTuneJob as the trainer reads it (no status: the trainer must not depend on it)."""
    meta = {k: v for k, v in job.metadata.model_dump(exclude_none=True).items()
            if k in ("name", "namespace", "uid", "generation")}
    return json.dumps({"apiVersion": API_VERSION, "kind": KIND, "metadata": meta, "spec": job.spec.to_wire()},
                      indent=2, sort_keys=True)


def trainer_command(job: FineTuneJob) -> list[str]:
    """One process per GPU through torchrun when there is more than one; the trainer takes its rank and world
    size from the environment torchrun sets. torchrun runs inside kubetune.trainer.launch, which exits with the
    first failing worker's code (the pod failure policy reads it) and gives the workers the pod's grace period
    after a SIGTERM (torchrun alone exits 1 and SIGKILLs them after 30 s)."""
    gpus, nodes = job.spec.resources.gpus_per_node, job.spec.nodes
    launch = ["python", "-m", "kubetune.trainer.launch", f"--shutdown-timeout={TERMINATION_GRACE_SECONDS - 15}"]
    if nodes > 1:
        return [*launch, f"--nnodes={nodes}", f"--nproc-per-node={max(gpus, 1)}", "--node-rank=$(NODE_RANK)",
                "--master-addr=$(MASTER_ADDR)", "--master-port=$(MASTER_PORT)", "-m", "kubetune.trainer"]
    if gpus > 1:
        return [*launch, "--standalone", f"--nproc-per-node={gpus}", "-m", "kubetune.trainer"]
    return ["kubetune-train"]


def trainer_env(job: FineTuneJob, run: Run, settings: OperatorSettings) -> list[dict]:
    env = [{"name": contract.RUN_ID_ENV, "value": run.run_id},
           {"name": contract.SPEC_FILE_ENV, "value": f"{contract.SPEC_MOUNT_DIR}/{contract.SPEC_FILE_NAME}"},
           {"name": "KUBETUNE_TRAINER_CACHE_DIR", "value": CACHE_DIR},
           {"name": "KUBETUNE_TRAINER_METRICS_PORT", "value": str(contract.METRICS_PORT)},
           {"name": "HOME", "value": "/tmp"}]
    env += credential_env(job)
    if job.spec.nodes > 1:
        env += [{"name": "NODE_RANK", "valueFrom": {"fieldRef": {
                    "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
                {"name": "MASTER_ADDR", "value": f"{run.job_name}-0.{run.job_name}"},
                {"name": "MASTER_PORT", "value": str(settings.rendezvous_port)}]
    return env


def credential_env(job: FineTuneJob) -> list[dict]:
    """The S3 credentials of spec.storage.secretRef, by reference only: the keys never appear in the Job, the spec
    or the status (the trainer's and the promotion Job's alike)."""
    secret = job.spec.storage.secret_ref
    if not secret:
        return []
    return [{"name": key, "valueFrom": {"secretKeyRef": {"name": secret.name, "key": key,
                                                         **({"optional": True} if optional else {})}}}
            for key, optional in CREDENTIAL_KEYS.items()]


def container_resources(job: FineTuneJob, settings: OperatorSettings | None = None) -> dict:
    r = job.spec.resources
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if r.cpu:
        requests["cpu"] = str(r.cpu)  # no CPU limit: throttling a data loader only slows the GPU down
    if r.memory:
        requests["memory"] = limits["memory"] = str(r.memory)
    if r.gpus_per_node:
        requests[r.gpu_resource_name] = limits[r.gpu_resource_name] = str(r.gpus_per_node)
    if settings is not None and job.spec.nodes > 1:  # the interconnect (EFA, RDMA) NCCL uses between nodes
        for name, quantity in settings.trainer_multi_node_resources.items():
            requests[name] = limits[name] = str(quantity)
    requests["ephemeral-storage"] = str(r.ephemeral_storage)  # the cache volume's size limit
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def extra(own: list[dict], platform: list[dict]) -> list[dict]:
    """`own` then the platform's `extra` items (env vars, volumes, mounts) whose names the operator does not use:
    a platform setting never replaces what the trainer relies on."""
    taken = {item["name"] for item in own}
    return [*own, *(item for item in platform if item.get("name") not in taken)]


def placement(job: FineTuneJob, settings: OperatorSettings) -> tuple[dict, list[dict]]:
    """Where a pod of this FineTuneJob may go: the spec's node selector and tolerations over the operator's
    defaults (the GPU specifics are the trainer pod's own, in pod_spec)."""
    sched = job.spec.scheduling
    node_selector = {**settings.trainer_node_selector, **(sched.node_selector or {})}
    tolerations = [t.to_wire() for t in sched.tolerations or []]
    tolerations += [t for t in settings.trainer_tolerations if t not in tolerations]
    return node_selector, tolerations


def place(pod: dict, node_selector: dict, tolerations: list[dict], affinity: dict | None) -> None:
    """Sets the pod's placement fields, leaving out the empty ones."""
    if node_selector:
        pod["nodeSelector"] = node_selector
    if tolerations:
        pod["tolerations"] = tolerations
    if affinity:
        pod["affinity"] = affinity


def pod_spec(job: FineTuneJob, run: Run, settings: OperatorSettings) -> dict:
    spec, sched = job.spec, job.spec.scheduling
    node_selector, tolerations = placement(job, settings)
    if spec.resources.gpu_product:
        node_selector["nvidia.com/gpu.product"] = spec.resources.gpu_product
    gpu_toleration = {"key": spec.resources.gpu_resource_name, "operator": "Exists", "effect": "NoSchedule"}
    if spec.resources.gpus_per_node and gpu_toleration not in tolerations:
        tolerations.append(gpu_toleration)
    pod = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,  # the trainer needs no Kubernetes API access
        **({"serviceAccountName": settings.trainer_service_account} if settings.trainer_service_account else {}),
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "securityContext": {"runAsNonRoot": True, "runAsUser": settings.run_as_user,
                            "runAsGroup": settings.run_as_user, "fsGroup": settings.run_as_user,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": CONTAINER,
            "image": spec.image or settings.trainer_image,
            "imagePullPolicy": settings.image_pull_policy,
            "command": trainer_command(job),
            "env": extra(trainer_env(job, run, settings), settings.trainer_env),
            "ports": [{"name": "metrics", "containerPort": contract.METRICS_PORT, "protocol": "TCP"}],
            "resources": container_resources(job, settings),
            "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "volumeMounts": extra([{"name": "spec", "mountPath": contract.SPEC_MOUNT_DIR, "readOnly": True},
                                    {"name": "cache", "mountPath": CACHE_DIR},
                                    {"name": "tmp", "mountPath": "/tmp"},
                                    {"name": "dshm", "mountPath": "/dev/shm"}], settings.trainer_volume_mounts),
        }],
        "volumes": extra([{"name": "spec", "configMap": {"name": run.job_name}},
                           {"name": "cache", "emptyDir": {"sizeLimit": str(spec.resources.ephemeral_storage)}},
                           {"name": "tmp", "emptyDir": {}},
                           {"name": "dshm", "emptyDir": {"medium": "Memory",
                                                         "sizeLimit": spec.resources.shared_memory}}],
                          settings.trainer_volumes),
    }
    if settings.trainer_image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": name} for name in settings.trainer_image_pull_secrets]
    place(pod, node_selector, tolerations, sched.affinity)
    if sched.priority_class_name:
        pod["priorityClassName"] = sched.priority_class_name
    if spec.nodes > 1:
        pod["subdomain"] = run.job_name
    return pod


def pod_metadata(job: FineTuneJob, run: Run, settings: OperatorSettings) -> dict:
    copied = {k: v for k, v in (job.metadata.annotations or {}).items()
              if any(k.startswith(prefix) for prefix in settings.pod_annotation_prefixes)}
    return {"labels": labels(job, run), **({"annotations": copied} if copied else {})}


def owner(job: FineTuneJob) -> dict:
    return owner_reference(API_VERSION, KIND, job.metadata.name, job.metadata.uid or "")


def build_job(job: FineTuneJob, run: Run, settings: OperatorSettings) -> dict:
    spec, policy, gang = job.spec, job.spec.run_policy, job.spec.nodes > 1
    meta = metadata(job, run, owner(job))
    meta["annotations"] = {ANNOTATION_SPEC_HASH: run.spec_hash, ANNOTATION_GENERATION: str(run.generation),
                           ANNOTATION_TEMPLATE_HASH: run.template_hash}
    if gang:
        meta["annotations"].update({ANNOTATION_ATTEMPT: str(run.attempt), ANNOTATION_FAILURES: str(run.failures)})
    elif run.attempt > 1:  # a rerun of a failed run (spec.rerunToken)
        meta["annotations"][ANNOTATION_ATTEMPT] = str(run.attempt)
    if spec.scheduling.queue_name:
        meta["labels"][LABEL_KUEUE_QUEUE] = spec.scheduling.queue_name
    job_spec = {
        # Kueue admits a queued Job by unsuspending it, so such a Job starts suspended.
        "suspend": spec.suspend or bool(spec.scheduling.queue_name),
        "completions": spec.nodes,
        "parallelism": spec.nodes,
        # Several nodes are a gang: any pod's failure fails the Job as a unit (its other pods are stopped), and the
        # operator starts the gang's next attempt as a new Job, counting failures itself (plan.py, gang.py). One
        # replaced index would only wait on a collective its peers left long ago.
        "backoffLimit": 0 if gang else policy.backoff_limit,
        "podFailurePolicy": {"rules": [
            # First (rules match in order): preemption, eviction and node drains are not the trainer's
            # failure, even when the grace period ran out and the kill was a SIGKILL; do not count them. A gang
            # fails whole on them too (FailJob): the operator restarts it without counting (gang.py reads the rule).
            {"action": "FailJob" if gang else "Ignore",
             "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            # Retrying cannot fix bad input or the same out-of-memory: fail at once. Not 137: any SIGKILL exits
            # so (a pod deleted mid-checkpoint too); only the container's OOMKilled reason, which a policy cannot
            # match, means the kernel's OOM killer, so the operator ends those runs itself (plan.py).
            {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [
                contract.EXIT_BAD_INPUT, contract.EXIT_OUT_OF_MEMORY]}},
        ]},
        "template": {"metadata": pod_metadata(job, run, settings), "spec": pod_spec(job, run, settings)},
    }
    if spec.nodes > 1:
        job_spec["completionMode"] = "Indexed"
    if policy.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = policy.active_deadline_seconds
    if policy.ttl_seconds_after_finished is not None and not gang:  # a gang's: once the run has ended (plan.py)
        job_spec["ttlSecondsAfterFinished"] = policy.ttl_seconds_after_finished
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job_spec}


def build_dependents(job: FineTuneJob, run: Run, *args: OperatorSettings) -> list[dict]:
    """The spec ConfigMap and, for several nodes, the headless Service for torchrun's rendezvous, in creation
    order (before the Job that needs them). Controlled by the FineTuneJob; plan.py removes them with their run.
    `args` ends with the settings (older callers pass the Job's uid first, which is no longer needed)."""
    settings = args[-1]
    objects = [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata(job, run, owner(job)),
                "immutable": True, "data": {contract.SPEC_FILE_NAME: spec_document(job)}}]
    if job.spec.nodes > 1:
        objects.append({"apiVersion": "v1", "kind": "Service", "metadata": metadata(job, run, owner(job)), "spec": {
            "clusterIP": "None", "publishNotReadyAddresses": True, "selector": {LABEL_JOB_NAME: run.job_name},
            "ports": [{"name": "rendezvous", "port": settings.rendezvous_port,
                                              "targetPort": settings.rendezvous_port}]}})
    return objects


def in_place_patch(job: FineTuneJob, observed: dict, kueue_managed: bool = False) -> dict | None:
    """The Job fields to change so a running run follows the in-place spec fields; None when it already does.
    With a Kueue queue the operator only ever suspends: admission (unsuspending) is Kueue's. Once Kueue manages
    the Job (it has a Workload) the operator leaves `suspend` to Kueue entirely: spec.suspend deactivates the
    Workload instead (kueue.activation), and nothing else Kueue sets (node selectors, tolerations) is patched."""
    spec, observed_spec = job.spec, observed.get("spec", {})
    patch: dict = {}
    if kueue_managed:
        pass
    elif spec.suspend and not observed_spec.get("suspend"):
        patch["suspend"] = True
    elif not spec.suspend and observed_spec.get("suspend") and not spec.scheduling.queue_name:
        patch["suspend"] = False
    for field, value in (("activeDeadlineSeconds", spec.run_policy.active_deadline_seconds),
                         ("ttlSecondsAfterFinished", spec.run_policy.ttl_seconds_after_finished)):
        if observed_spec.get(field) != value:
            patch[field] = value
    return {"spec": patch} if patch else None


def render(job: FineTuneJob, settings: OperatorSettings) -> list[dict]:
    """Every child of a new run, in creation order: the dependents, then the Job that mounts them. Given a status
    (`kubectl get -o yaml`) whose failed run a new spec.rerunToken asks to rerun, the rerun's children."""
    run = current_run(job)
    if rerun_asked(job, run):
        run = rerun(run)
        k8s_job = build_job(job, run, settings)
        k8s_job["metadata"]["annotations"][ANNOTATION_RESTART_REASON] = rerun_cause(job)
        return [*build_dependents(job, run, settings), k8s_job]
    return [*build_dependents(job, run, settings), build_job(job, run, settings)]
