"""The contract between the operator and the trainer: how the spec reaches the pod, where artifacts go, exit
codes, the termination message and the metric names the operator reads for live progress.

Both sides import these names from here, so neither restates the other's conventions.
"""

# --- How the trainer gets its job -----------------------------------------------------------------------
SPEC_FILE_ENV = "KUBETUNE_SPEC_FILE"
"""Path of a file holding the FineTuneJob (JSON or YAML, the whole object or just its spec)."""
SPEC_ENV = "KUBETUNE_SPEC"
"""The same, inline; used when no file is given."""
SPEC_MOUNT_DIR = "/etc/kubetune"
SPEC_FILE_NAME = "finetunejob.json"
RUN_ID_ENV = "KUBETUNE_RUN_ID"
"""Identifier of the run; artifacts and checkpoints go under <output.uri>/<runId>/. Pods of one run share it,
so a restarted pod resumes; a new run (new generation, or a re-created resource) gets a new one."""


def run_id(generation: int, uid: str) -> str:
    """The operator's run identifier: one per spec generation of one resource instance."""
    return f"g{generation}-{uid.replace('-', '')[:8]}"


# --- Artifact layout under <output.uri>/<runId>/ ---------------------------------------------------------
MODEL_DIR = "model"            # adapter (save_pretrained) or full weights, plus tokenizer
MERGED_DIR = "merged"          # base + adapter merged (output.mergeAdapter)
CHECKPOINTS_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"  # written last: its presence marks a complete run
SPEC_COPY_FILE = "finetunejob.json"
MODEL_CARD_FILE = "README.md"
ERRORS_FILE = "errors.jsonl"

# --- Exit codes ------------------------------------------------------------------------------------------
EXIT_OK = 0
EXIT_RETRY = 75
"""A transient problem (S3 unreachable, preempted mid-upload): the Job may retry."""
EXIT_BAD_INPUT = 64
"""Bad spec, data or model: retrying cannot help, the Job's podFailurePolicy fails it at once."""
EXIT_OUT_OF_MEMORY = 65
"""The GPU or host ran out of memory: retrying the same settings cannot help."""

TERMINATION_LOG = "/dev/termination-log"
TERMINATION_MESSAGE_MAX_BYTES = 4096

# --- Metrics the trainer exposes and the operator reads ------------------------------------------------
METRICS_PORT = 9400
METRIC_STEP = "kubetune_train_step"
METRIC_TOTAL_STEPS = "kubetune_train_total_steps"
METRIC_EPOCH = "kubetune_train_epoch"
METRIC_TRAIN_LOSS = "kubetune_train_loss"
METRIC_EVAL_LOSS = "kubetune_eval_loss"
METRIC_LEARNING_RATE = "kubetune_learning_rate"
METRIC_TOKENS_PER_SECOND = "kubetune_tokens_per_second"
METRIC_ETA_SECONDS = "kubetune_eta_seconds"
METRIC_BEST = "kubetune_best_metric"
"""Gauge with a `metric` label naming the monitored validation metric."""
METRIC_EVAL_LOSS_AT_STEP = "kubetune_eval_loss_at_step"
"""Gauge with a `step` label: the validation loss of each of the newest EVAL_HISTORY_POINTS evaluations, so a
reader that comes by every few seconds misses none (a sweep's pruner compares trials at equal steps)."""
EVAL_HISTORY_POINTS = 100
"""Evaluations the trainer serves and a FineTuneJob's status keeps (metrics.evalLosses), newest first kept."""
