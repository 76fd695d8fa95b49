"""The labels and annotations kubetune reads and writes, in one place: ours (kubetune.io/) and the ones the Job
controller and Kueue set, which the operator reads."""

LABEL_FINETUNEJOB = "kubetune.io/finetunejob"
LABEL_RUN_ID = "kubetune.io/run-id"
LABEL_JOB_NAME = "batch.kubernetes.io/job-name"  # set by the Job controller on its pods
LABEL_KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
ANNOTATION_SPEC_HASH = "kubetune.io/spec-hash"
ANNOTATION_GENERATION = "kubetune.io/generation"
ANNOTATION_TEMPLATE_HASH = "kubetune.io/template-hash"
# A multi-node run restarts as a gang: each attempt is a new Job (docs/gangs.md), which records its number, the
# failures counted against runPolicy.backoffLimit before it, and why the previous attempt ended.
ANNOTATION_ATTEMPT = "kubetune.io/attempt"
ANNOTATION_FAILURES = "kubetune.io/failures"
ANNOTATION_RESTART_REASON = "kubetune.io/restart-reason"
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"  # the Job controller's, on an Indexed Job's pods
LABEL_CONTROLLER_UID = "batch.kubernetes.io/controller-uid"  # the Job controller's label on its pods
LABEL_KUEUE_JOB_UID = "kueue.x-k8s.io/job-uid"  # Kueue's, on the Workload of a Job
LABEL_PROMOTION = "kubetune.io/promotion"
"""On a promotion Job (promote_job.py), not its pods: the hash of the override it carries out."""
ANNOTATION_DEACTIVATED = "kubetune.io/deactivated"
"""On a Workload the operator deactivated for spec.suspend: only such a Workload is reactivated by it."""
LABEL_SWEEP = "kubetune.io/finetunesweep"
"""On a sweep's trial FineTuneJobs: the sweep's name (the operator's trial index is keyed by it)."""
LABEL_TRIAL = "kubetune.io/trial"
"""On a trial FineTuneJob: its number N (<sweep>-t<N>)."""
ANNOTATION_TRIAL_PARAMS = "kubetune.io/trial-params"
"""On a trial FineTuneJob: its searched values as JSON, by spec path (what a restarted operator replays)."""
ANNOTATION_PRUNED = "kubetune.io/pruned"
"""On a trial FineTuneJob the sweep's pruner stopped ("true"); its spec.suspend holds it."""
