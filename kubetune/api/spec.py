"""FineTuneJob spec: what to train, on what data, how, and where the results go.

Every field here becomes a field of the CRD (with its docstring as the description); cross-field rules are
declared next to the fields they constrain as `Rule`s, enforced both here and by the API server via CEL.
"""
from typing import Any, ClassVar, Literal

from pydantic import Field

from kubetune.api.base import APIModel
from kubetune.api.rules import Rule
from kubetune.api.types import (DataURI, DNSLabel, DNSSubdomain, LabelValue, ModelURI, OutputURI, PromotionURI,
                                Quantity, RunID)

Task = Literal["causal-lm", "sequence-classification"]
MethodType = Literal["lora", "qlora", "full"]

# Metrics each task can report, hence what early stopping may monitor.
CAUSAL_LM_METRICS = ("loss", "perplexity", "tokenAccuracy", "exactMatch")
CLASSIFICATION_METRICS = ("loss", "accuracy", "f1", "precision", "recall")
REGRESSION_METRICS = ("loss", "mse", "mae", "r2")
Metric = Literal["loss", "perplexity", "tokenAccuracy", "exactMatch", "accuracy", "f1", "precision", "recall", "mse", "mae", "r2"]
MAXIMISED_METRICS = ("tokenAccuracy", "exactMatch", "accuracy", "f1", "precision", "recall", "r2")


class BaseModelSource(APIModel):
    uri: ModelURI
    """Where the base model's Hugging Face directory lives: s3://bucket/prefix/, file:///path, or hf://org/name
    (only where the cluster can reach a model hub)."""
    revision: str | None = None
    """For hf:// models: the branch, tag or commit to use."""
    trust_remote_code: bool = False
    """Allow the model's own Python code to run. Off by default: it executes code from the model's files."""


class Columns(APIModel):
    """Names of the dataset's columns, where they differ from the defaults."""

    messages: str = "messages"
    """Chat schema: the list of {role, content} messages (OpenAI fine-tuning format)."""
    prompt: str = "prompt"
    """Prompt-completion schema: the prompt column."""
    completion: str = "completion"
    """Prompt-completion schema: the completion column (the only tokens trained on, unless maskPrompt is false)."""
    text: str = "text"
    """Text schema, and the input of sequence classification."""
    label: str = "label"
    """Sequence classification: the label (a class name, a class id, or a number for regression)."""


class Dataset(APIModel):
    train: DataURI
    """The training data: one file (jsonl, csv or parquet, optionally .gz) or a prefix ending in '/' whose files are
    all read."""
    validation: DataURI | None = None
    """Held-out data evaluated during training and used for early stopping."""
    test: DataURI | None = None
    """Data scored once after training (and on the base model when evaluation.baseline is on)."""
    validation_split: float = Field(0.0, ge=0.0, le=0.5)
    """Fraction of the training data held out for validation when no validation file is given (0 = none)."""
    format: Literal["auto", "jsonl", "csv", "parquet"] = "auto"
    """File format; auto reads it from the file extension."""
    schema_: Literal["auto", "chat", "prompt-completion", "text", "classification"] = Field("auto", alias="schema")
    """Record layout; auto detects it from the columns present."""
    columns: Columns = Field(default_factory=Columns)
    """Column names, where they differ from the defaults."""
    max_seq_length: int = Field(1024, ge=16, le=131072)
    """Longest sequence in tokens; longer examples are handled as longSequences says."""
    long_sequences: Literal["truncate", "drop"] = "truncate"
    """What to do with an example longer than maxSeqLength: truncate it, or drop it (both are counted)."""
    packing: bool = False
    """Pack several short examples into each sequence (attention never crosses examples). batchSize and
    microBatchSize then count packed sequences of up to maxSeqLength tokens, so a step trains on more examples
    than without packing: compare runs by trained tokens (summary.json trainTokens), not steps."""
    padding_free: bool = True
    """Causal LM: each micro-batch trains as one row of its examples back to back, without padding, position ids
    restarting per example and attention that never crosses examples (per-example attention: flash-attention
    varlen on CUDA GPUs, SDPA per example elsewhere). The same examples make each step as with padding, so the
    losses are the same; only the padding's compute goes. It applies to models whose attention goes through
    transformers' attention interface (checked once per run; others keep padded batches); false pads each
    micro-batch to its longest example."""
    mask_prompt: bool = True
    """Causal LM: compute the loss on assistant/completion tokens only."""
    max_samples: int | None = Field(None, ge=1)
    """Use at most this many training examples (after shuffling with the seed)."""


class Lora(APIModel):
    """LoRA adapter settings; they map one to one onto peft.LoraConfig."""

    r: int = Field(16, ge=1, le=1024)
    """Rank of the update matrices."""
    alpha: int = Field(32, ge=1)
    """Scaling numerator (the update is scaled by alpha / r, or alpha / sqrt(r) with useRslora)."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on the adapter input. 0 by default: dropout copies every adapted layer's input (a quarter of a
    small model's forward) and the short fine-tunes kubetune runs rarely overfit enough for it to pay; set e.g.
    0.05 for many epochs over a small dataset."""
    target_modules: list[str] = Field(default_factory=lambda: ["all-linear"], min_length=1, max_length=64)
    """Module names (or suffixes) to adapt; all-linear adapts every linear layer except the output head."""
    bias: Literal["none", "all", "lora_only"] = "none"
    """Which biases to train."""
    use_rslora: bool = False
    """Rank-stabilised scaling (alpha / sqrt(r))."""
    use_dora: bool = False
    """Weight-decomposed LoRA (DoRA)."""
    modules_to_save: list[str] | None = Field(None, max_length=64)
    """Modules trained in full and saved with the adapter (e.g. a classification head)."""


class Freeze(APIModel):
    """Layer freezing for full fine-tuning."""

    embeddings: bool = False
    """Keep the token embeddings frozen."""
    trainable_top_layers: int | None = Field(None, ge=0)
    """Train only the top N transformer blocks (and the head); unset trains all of them. With gradual
    unfreezing, the blocks that train from the start (unset: 0, only the head)."""
    unfreeze_every_steps: int | None = Field(None, ge=1)
    """Gradual unfreezing: starting from trainableTopLayers, unfreeze one more block from the top every N steps
    (the embedding layer last)."""
    unfreeze_every_epochs: int | None = Field(None, ge=1)
    """Gradual unfreezing by epochs: one more block from the top every N epochs."""


class Method(APIModel):
    type: MethodType = "lora"
    """lora: train a low-rank adapter; qlora: the same on a 4-bit quantised base (CUDA only); full: all weights."""
    lora: Lora | None = None
    """Adapter settings for lora and qlora (defaults apply when omitted)."""
    freeze: Freeze | None = None
    """Layer freezing for full fine-tuning."""

    __rules__: ClassVar = (
        Rule(
            cel="!has(self.lora) || self.type in ['lora', 'qlora']",
            message="lora settings apply only when method.type is lora or qlora",
            field="lora",
            check=lambda m: m.lora is None or m.type in ("lora", "qlora"),
        ),
        Rule(
            cel="!has(self.freeze) || self.type == 'full'",
            message="freeze applies only when method.type is full",
            field="freeze",
            check=lambda m: m.freeze is None or m.type == "full",
        ),
        Rule(
            cel="!has(self.freeze) || !has(self.freeze.unfreezeEverySteps) || !has(self.freeze.unfreezeEveryEpochs)",
            message="set at most one of unfreezeEverySteps and unfreezeEveryEpochs",
            field="freeze.unfreezeEveryEpochs",
            check=lambda m: m.freeze is None or m.freeze.unfreeze_every_steps is None
            or m.freeze.unfreeze_every_epochs is None,
        ),
    )


class Hyperparameters(APIModel):
    epochs: int | None = Field(None, ge=1, le=1000)
    """Passes over the training data. Set exactly one of epochs and maxSteps."""
    max_steps: int | None = Field(None, ge=1)
    """Optimizer steps to run. Set exactly one of epochs and maxSteps."""
    learning_rate: float | None = Field(None, gt=0.0, le=1.0)
    """Peak learning rate; unset means 2e-4 for lora/qlora and 2e-5 for full fine-tuning."""
    batch_size: int = Field(16, ge=1)
    """Global batch: sequences per optimizer step across all devices."""
    micro_batch_size: int = Field(4, ge=1)
    """Sequences per device per forward pass; batchSize / (microBatchSize x devices) is the accumulation."""
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0)
    """Fraction of the steps spent warming the learning rate up from zero."""
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate decay after warmup."""
    weight_decay: float = Field(0.0, ge=0.0)
    """AdamW weight decay (not applied to biases and norms)."""
    max_grad_norm: float = Field(1.0, ge=0.0)
    """Clip the gradient norm to this value; 0 disables clipping."""
    seed: int = Field(42, ge=0)
    """Seed for shuffling, initialisation and dropout."""
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """Compute precision; auto picks bf16 where the GPU supports it, fp32 on CPUs."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    gradient_checkpointing_every_layers: int | None = Field(None, ge=1)
    """With gradientCheckpointing: recompute only every Nth transformer block (the first, then every N); the others
    keep their activations. Unset (or 1) recomputes every block; a larger N gives memory back for speed, worth it
    where full checkpointing frees memory that goes unused."""
    gradient_checkpointing_offload: bool | None = None
    """With gradientCheckpointing: keep the activations saved for the recomputation (each checkpointed block's
    input) in host memory, pinned on GPUs, instead of device memory. Frees layers x sequence x hidden of device
    memory, the part that dominates at long sequences, for a copy to the host in the forward and back in the
    backward. Unset means false."""
    weight_precision: Literal["fp32", "bf16"] | None = None
    """Full fine-tuning: the dtype of the trained weights, their gradients and AdamW states. Unset or fp32: fp32
    master weights under the compute precision's autocast (updates smaller than bf16's resolution of a weight still
    count). bf16: pure bf16, as the Hugging Face Trainer trains in bf16 (half the memory of the weights, gradients
    and optimizer states; updates below a weight's bf16 resolution are lost, so small learning rates may stall)."""
    compile: bool = False
    """Compile the transformer blocks' MLPs and norms with torch.compile (dynamic shapes, so varying lengths do not
    recompile). The first steps pay the compilation (seconds on a small model, minutes on a large one); the
    attention keeps its fused kernel. Off by default: it pays off on long runs on GPUs."""

    __rules__: ClassVar = (
        Rule(
            cel="has(self.epochs) != has(self.maxSteps)",
            message="set exactly one of epochs and maxSteps",
            field="epochs",
            check=lambda h: (h.epochs is None) != (h.max_steps is None),
        ),
        Rule(
            cel="self.gradientCheckpointing || (!has(self.gradientCheckpointingEveryLayers) && "
                "!(has(self.gradientCheckpointingOffload) && self.gradientCheckpointingOffload))",
            message="gradientCheckpointingEveryLayers and gradientCheckpointingOffload apply only with "
                    "gradientCheckpointing: true",
            field="gradientCheckpointing",
            check=lambda h: h.gradient_checkpointing or (h.gradient_checkpointing_every_layers is None
                                                         and not h.gradient_checkpointing_offload),
        ),
    )


class Evaluation(APIModel):
    every_steps: int | None = Field(None, ge=1)
    """Evaluate every N optimizer steps; unset evaluates ten times over the run."""
    baseline: bool = False
    """Score the untouched base model on the validation and test data first."""
    max_samples: int | None = Field(None, ge=1)
    """Evaluate on at most this many validation examples."""


class EarlyStopping(APIModel):
    metric: Metric = "loss"
    """Validation metric to monitor; it must be one the task reports."""
    mode: Literal["auto", "min", "max"] = "auto"
    """Whether lower or higher is better; auto knows it from the metric."""
    patience: int = Field(3, ge=1)
    """Stop after this many evaluations without improvement."""
    min_delta: float = Field(0.0, ge=0.0)
    """Smallest change that counts as an improvement."""


class Checkpoint(APIModel):
    every_steps: int | None = Field(None, ge=1)
    """Checkpoint every N optimizer steps."""
    every_minutes: int | None = Field(15, ge=1)
    """Checkpoint at least this often (a preempted pod also checkpoints on SIGTERM)."""
    keep: int = Field(2, ge=1, le=100)
    """How many recent checkpoints to keep in the output location."""


class Output(APIModel):
    uri: OutputURI
    """Where artifacts go; each run writes under its own sub-prefix, so nothing is ever overwritten."""
    merge_adapter: bool = False
    """Also save the base model with the adapter merged in (lora/qlora)."""


class SecretRef(APIModel):
    name: DNSLabel
    """Secret in the FineTuneJob's namespace holding AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (optionally
    AWS_SESSION_TOKEN); handed to the trainer as environment variables, never copied."""


class Storage(APIModel):
    endpoint: str | None = Field(None, pattern=r"^https?://[^\s/]+(/.*)?$")
    """S3-compatible endpoint URL (MinIO, Ceph, R2...); unset uses AWS S3."""
    region: str | None = None
    """S3 region."""
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    """Bucket addressing; auto uses path-style for a custom endpoint and virtual-hosted style on AWS."""
    secret_ref: SecretRef | None = None
    """Credentials; unset falls back to the pod's identity (IRSA / web identity / instance profile)."""


class Resources(APIModel):
    gpus_per_node: int = Field(1, ge=0, le=16)
    """GPUs per node (one trainer process each); 0 trains on CPUs."""
    gpu_resource_name: str = "nvidia.com/gpu"
    """Extended resource that counts GPUs on the nodes."""
    gpu_product: LabelValue | None = None
    """Require this GPU model (node label nvidia.com/gpu.product), e.g. NVIDIA-H100-80GB-HBM3."""
    cpu: Quantity | None = None
    """CPU request and limit per node."""
    memory: Quantity | None = None
    """Memory request and limit per node."""
    shared_memory: Quantity = "8Gi"
    """Size of /dev/shm (data loader workers and NCCL need more than the container default)."""
    ephemeral_storage: Quantity = "20Gi"
    """Local disk per node for the model, data and checkpoint cache: the cache volume's size limit and the
    pod's ephemeral-storage request, so the scheduler places it where the disk is and a run that outgrows it
    fails with a reason instead of being evicted and retried forever."""


class Toleration(APIModel):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class Distributed(APIModel):
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    """How several trainer processes split the work. ddp: every GPU holds the whole model and its optimizer
    state; fsdp: FSDP2 shards weights, gradients and optimizer state across all GPUs (full fine-tuning of models
    that do not fit one GPU, LoRA on very large bases; not with qlora or gradual unfreezing); auto: fsdp when the
    training state would not fit comfortably on one GPU, else ddp (always ddp on CPUs)."""


class Scheduling(APIModel):
    node_selector: dict[str, str] | None = None
    """Labels the trainer's nodes must have."""
    tolerations: list[Toleration] | None = None
    """Taints the trainer pods tolerate."""
    affinity: dict[str, Any] | None = Field(None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})
    """A core/v1 Affinity, copied into the trainer pods as it is."""
    priority_class_name: DNSSubdomain | None = None
    """PriorityClass of the trainer pods."""
    queue_name: LabelValue | None = None
    """Kueue LocalQueue to submit to (sets the kueue.x-k8s.io/queue-name label)."""


class RunPolicy(APIModel):
    backoff_limit: int = Field(3, ge=0, le=100)
    """Retries after a failure (preemptions and bad input do not count; bad input never retries)."""
    active_deadline_seconds: int | None = Field(None, ge=1)
    """Fail the run after this many seconds."""
    ttl_seconds_after_finished: int | None = Field(None, ge=0)
    """Delete the run's pods and Job this long after it ends (the FineTuneJob and its status stay)."""


class ClassificationSpec(APIModel):
    labels: list[str] | None = Field(None, min_length=2, max_length=10000)
    """Class names in id order; unset reads them from the training data (sorted)."""
    num_labels: int | None = Field(None, ge=1)
    """Number of outputs; 1 means regression on a numeric label."""
    class_weights: list[float] | None = Field(None, max_length=10000)
    """Loss weight of each class, in label order."""




def _all_in(obj: str, metrics: tuple[str, ...]) -> str:
    """CEL: the promotion's metric (if set) and every bound's metric are among `metrics`."""
    allowed = repr(list(metrics))
    return (f"((!has({obj}.metric) || {obj}.metric in {allowed}) && "
            f"(!has({obj}.bounds) || {obj}.bounds.all(b, b.metric in {allowed})))")


class PromotionBound(APIModel):
    """An absolute floor or ceiling on one test metric, judged on its 95% bootstrap interval: a floor holds when
    the interval's lower bound is at least `min`, a ceiling when its upper bound is at most `max`."""

    metric: Metric
    """The test metric; it must be one the task reports."""
    min: float | None = None
    """Floor: the interval's lower bound must be at least this."""
    max: float | None = None
    """Ceiling: the interval's upper bound must be at most this."""

    __rules__: ClassVar = (
        Rule(
            cel="has(self.min) || has(self.max)",
            message="set min, max or both",
            field="min",
            check=lambda b: b.min is not None or b.max is not None,
        ),
    )


class PromotionOverride(APIModel):
    """A person's decision, on the record (a GitOps commit can carry it): promote a run the gate refused, or roll
    the destination back to an earlier champion. Who and why go into the manifest's history, the status and an
    event."""

    action: Literal["promote", "rollback"]
    """promote: promote run runId although the gate refused it; rollback: make the earlier champion runId (still
    under the destination's runs/) the champion again."""
    run_id: RunID
    """The run promoted or restored (status.runId of the run, or a run id in the destination's history)."""
    requested_by: str = Field(min_length=1, max_length=253)
    """Who decided (a name or an e-mail address)."""
    reason: str = Field(min_length=1, max_length=1024)
    """Why."""


class Promotion(APIModel):
    """Promote the run to a stable destination only when it is shown to be better: every criterion is judged on
    the 95% interval of the test set's paired difference (or, for bounds, of the metric), never on point
    estimates. Not a training field: no run identity includes it, so editing it starts no run."""

    destination: PromotionURI
    """The stable location serving reads (s3://bucket/models/<name>/): manifest.json names the champion, whose
    files are under runs/<runId>/; earlier champions stay there."""
    metric: Metric | None = None
    """The test metric the base-model and champion comparisons are judged on; unset: the early-stopping metric,
    else f1 / mse / loss by task."""
    beat_base_model: bool = True
    """The run must beat the untouched base model (needs evaluation.baseline): the interval of the difference
    lies wholly on the better side of zero."""
    beat_champion: bool = True
    """The run must beat the destination's current champion, scored on the same test rows in the same run; a
    champion of another base model or task is refused as not comparable (the run is then not promoted)."""
    bounds: list[PromotionBound] = Field(default_factory=list, max_length=16)
    """Absolute floors and ceilings per test metric (e.g. exactMatch min 0.2, loss max 1.5)."""
    override: PromotionOverride | None = None
    """A person's override: promote a refused run, or roll back to an earlier champion."""


class FineTuneJobSpec(APIModel):
    task: Task = "causal-lm"
    """causal-lm: supervised fine-tuning on chat, prompt-completion or plain text; sequence-classification:
    a classification (or, with numLabels 1, regression) head."""
    base_model: BaseModelSource
    """The model to start from."""
    dataset: Dataset
    """Training, validation and test data."""
    classification: ClassificationSpec | None = None
    """Labels of a sequence-classification task."""
    method: Method = Field(default_factory=Method)
    """LoRA, QLoRA or full fine-tuning."""
    hyperparameters: Hyperparameters
    """Optimisation settings."""
    evaluation: Evaluation = Field(default_factory=Evaluation)
    """When and what to evaluate."""
    early_stopping: EarlyStopping | None = None
    """Stop when the validation metric stops improving, and ship the best step."""
    checkpoint: Checkpoint = Field(default_factory=Checkpoint)
    """Checkpoints that let a preempted run resume."""
    output: Output
    """Where the artifacts go."""
    storage: Storage = Field(default_factory=Storage)
    """How to reach S3."""
    resources: Resources = Field(default_factory=Resources)
    """Compute per node."""
    nodes: int = Field(1, ge=1, le=512)
    """Number of nodes; more than one runs torchrun across them."""
    distributed: Distributed = Field(default_factory=Distributed)
    """How the trainer processes of a multi-GPU or multi-node run share the model."""
    image: str | None = None
    """Trainer image override; unset uses the operator's default image."""
    scheduling: Scheduling = Field(default_factory=Scheduling)
    """Where and when the trainer pods run."""
    suspend: bool = False
    """Hold the run (or pause it: pods stop, the next start resumes from the last checkpoint)."""
    rerun_token: str | None = Field(None, max_length=253)
    """Set to a new value to run a Failed run again without editing its training spec (a Git commit or the
    Argo CD rerun action changes only this): a new attempt of the same run, which resumes from the run's last
    checkpoint, with a fresh runPolicy.backoffLimit. Any value not yet honoured (status.rerunToken) asks once; the
    same value re-applied, an empty one, or a value given while the run is not Failed (it is recorded, and an
    event says why it was declined) starts nothing. Not a training field: no run identity includes it."""
    run_policy: RunPolicy = Field(default_factory=RunPolicy)
    """Retries, deadline and clean-up."""
    promotion: Promotion | None = None
    """Promote the run to a stable destination when it beats the base model and the current champion (a quality
    gate); unset promotes nothing."""

    __rules__: ClassVar = (
        Rule(
            cel="!has(self.earlyStopping) || has(self.dataset.validation) || self.dataset.validationSplit > 0.0",
            message="earlyStopping needs validation data: set dataset.validation or dataset.validationSplit",
            field="earlyStopping",
            check=lambda s: s.early_stopping is None
            or s.dataset.validation is not None
            or s.dataset.validation_split > 0,
        ),
        Rule(
            cel="!has(self.dataset.validation) || self.dataset.validationSplit == 0.0",
            message="set either dataset.validation or dataset.validationSplit, not both",
            field="dataset.validationSplit",
            check=lambda s: s.dataset.validation is None or s.dataset.validation_split == 0,
        ),
        Rule(
            cel="self.method.type != 'qlora' || self.resources.gpusPerNode >= 1",
            message="qlora needs a GPU (4-bit kernels are CUDA-only): set resources.gpusPerNode >= 1",
            field="resources.gpusPerNode",
            check=lambda s: s.method.type != "qlora" or s.resources.gpus_per_node >= 1,
        ),
        Rule(
            cel="self.hyperparameters.precision != 'fp16' || self.resources.gpusPerNode >= 1",
            message="fp16 needs a GPU: use bf16 or fp32 on CPUs",
            field="hyperparameters.precision",
            check=lambda s: s.hyperparameters.precision != "fp16" or s.resources.gpus_per_node >= 1,
        ),
        Rule(
            cel="!has(self.hyperparameters.weightPrecision) || self.hyperparameters.weightPrecision == 'fp32' || "
                "self.method.type == 'full'",
            message="weightPrecision bf16 applies only when method.type is full (adapters train in fp32)",
            field="hyperparameters.weightPrecision",
            check=lambda s: s.hyperparameters.weight_precision in (None, "fp32") or s.method.type == "full",
        ),
        Rule(
            cel="self.distributed.strategy != 'fsdp' || self.method.type != 'qlora'",
            message="distributed.strategy fsdp does not shard 4-bit weights: use ddp (or auto) with qlora",
            field="distributed.strategy",
            check=lambda s: s.distributed.strategy != "fsdp" or s.method.type != "qlora",
        ),
        Rule(
            cel="self.nodes == 1 || self.resources.gpusPerNode >= 1",
            message="multi-node training needs GPUs: set resources.gpusPerNode >= 1 or nodes: 1",
            field="nodes",
            check=lambda s: s.nodes == 1 or s.resources.gpus_per_node >= 1,
        ),
        Rule(
            cel="self.hyperparameters.batchSize % (self.hyperparameters.microBatchSize * "
            "(self.resources.gpusPerNode > 0 ? self.resources.gpusPerNode : 1) * self.nodes) == 0",
            message="batchSize must be a multiple of microBatchSize x gpusPerNode x nodes (the sequences one "
            "forward pass processes across all devices)",
            field="hyperparameters.batchSize",
            check=lambda s: s.hyperparameters.batch_size
            % (s.hyperparameters.micro_batch_size * max(s.resources.gpus_per_node, 1) * s.nodes)
            == 0,
        ),
        Rule(
            cel="!self.output.mergeAdapter || self.method.type in ['lora', 'qlora']",
            message="output.mergeAdapter applies only to lora and qlora",
            field="output.mergeAdapter",
            check=lambda s: not s.output.merge_adapter or s.method.type in ("lora", "qlora"),
        ),
        Rule(
            cel="self.task == 'causal-lm' || !self.dataset.packing",
            message="dataset.packing applies only to causal-lm (a classifier scores one text per sequence)",
            field="dataset.packing",
            check=lambda s: s.task == "causal-lm" or not s.dataset.packing,
        ),
        Rule(
            cel="!has(self.classification) || self.task == 'sequence-classification'",
            message="classification applies only when task is sequence-classification",
            field="classification",
            check=lambda s: s.classification is None or s.task == "sequence-classification",
        ),
        Rule(
            cel="self.task == 'causal-lm' ? self.dataset.schema != 'classification' : "
            "self.dataset.schema in ['auto', 'classification']",
            message="dataset.schema must fit the task: causal-lm reads chat, prompt-completion or text; "
            "sequence-classification reads classification (auto detects either)",
            field="dataset.schema",
            check=lambda s: s.dataset.schema_ != "classification"
            if s.task == "causal-lm"
            else s.dataset.schema_ in ("auto", "classification"),
        ),
        Rule(
            cel="!has(self.earlyStopping) || (self.task == 'causal-lm' ? self.earlyStopping.metric in "
            + repr(list(CAUSAL_LM_METRICS))
            + " : (has(self.classification) && has(self.classification.numLabels) && "
            "self.classification.numLabels == 1 ? self.earlyStopping.metric in "
            + repr(list(REGRESSION_METRICS))
            + " : self.earlyStopping.metric in "
            + repr(list(CLASSIFICATION_METRICS))
            + "))",
            message="earlyStopping.metric must be one the task reports: causal-lm "
            f"{', '.join(CAUSAL_LM_METRICS)}; classification {', '.join(CLASSIFICATION_METRICS)}; "
            f"regression (numLabels 1) {', '.join(REGRESSION_METRICS)}",
            field="earlyStopping.metric",
            check=lambda s: s.early_stopping is None or s.early_stopping.metric in metrics_for(s),
        ),
        Rule(
            cel="!has(self.promotion) || has(self.dataset.test)",
            message="promotion judges the run on its test set: set dataset.test",
            field="promotion",
            check=lambda s: s.promotion is None or s.dataset.test is not None,
        ),
        Rule(
            cel="!has(self.promotion) || "
            "self.promotion.destination.startsWith('s3://') == self.output.uri.startsWith('s3://')",
            message="promotion.destination and output.uri must both be s3:// or both file:// (the run's files are "
            "copied server-side)",
            field="promotion.destination",
            check=lambda s: s.promotion is None
            or s.promotion.destination.startswith("s3://") == s.output.uri.startswith("s3://"),
        ),
        Rule(
            cel="!has(self.promotion) || !self.promotion.beatBaseModel || self.evaluation.baseline",
            message="promotion.beatBaseModel needs the base model scored: set evaluation.baseline: true",
            field="promotion.beatBaseModel",
            check=lambda s: s.promotion is None or not s.promotion.beat_base_model or s.evaluation.baseline,
        ),
        Rule(
            cel="!has(self.promotion) || (self.task == 'causal-lm' ? "
            + _all_in("self.promotion", CAUSAL_LM_METRICS)
            + " : (has(self.classification) && has(self.classification.numLabels) && "
            "self.classification.numLabels == 1 ? "
            + _all_in("self.promotion", REGRESSION_METRICS)
            + " : "
            + _all_in("self.promotion", CLASSIFICATION_METRICS)
            + "))",
            message="promotion.metric and promotion.bounds[].metric must be ones the task reports: causal-lm "
            f"{', '.join(CAUSAL_LM_METRICS)}; classification {', '.join(CLASSIFICATION_METRICS)}; "
            f"regression (numLabels 1) {', '.join(REGRESSION_METRICS)}",
            field="promotion.metric",
            check=lambda s: s.promotion is None
            or all(m in metrics_for(s)
                   for m in [s.promotion.metric or "loss", *(b.metric for b in s.promotion.bounds)]),
        ),
    )


def metrics_for(spec: FineTuneJobSpec) -> tuple[str, ...]:
    """The validation metrics a job reports, in the order they are logged."""
    if spec.task == "causal-lm":
        return CAUSAL_LM_METRICS
    if spec.classification is not None and spec.classification.num_labels == 1:
        return REGRESSION_METRICS
    return CLASSIFICATION_METRICS
