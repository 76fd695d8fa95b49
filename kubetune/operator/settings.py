"""Operator configuration, from the environment (KUBETUNE_OPERATOR_*), so a Deployment or Helm values set it."""
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KUBETUNE_OPERATOR_", frozen=True)

    namespaces: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Namespaces to watch (JSON list or comma-separated); empty watches the whole cluster."""
    trainer_image: str = "ghcr.io/kubetune/trainer:0.1.0"
    """Trainer image for FineTuneJobs without spec.image."""
    image_pull_policy: str = "IfNotPresent"
    progress_interval_seconds: float = Field(10.0, gt=0)
    """How often a running job's trainer metrics are read into its status."""
    scrape_timeout_seconds: float = Field(3.0, gt=0)
    resync_seconds: float = Field(60.0, gt=0)
    """A running job with no new progress is still reconciled this often (events drive everything else)."""
    relist_seconds: float = Field(300.0, gt=0)
    """How often the FineTuneJobs and their children are listed afresh, to evict from the indexes what the
    watches never reported deleted (a watch gap: a 410, a restarted API server)."""
    workers: int = Field(20, ge=1, le=200)
    """Reconciles running at once (the work queue's workers); never two of one object."""
    shutdown_seconds: float = Field(20.0, gt=0)
    """On shutdown, how long running reconciles may finish before the Lease is handed over anyway."""
    retry_delay_seconds: float = Field(30.0, gt=0)
    """How soon a run held up by a refused child (a ResourceQuota...) or a conflicting one is tried again."""
    kueue_workload_timeout_seconds: float = Field(60.0, gt=0)
    """How long a queued Job may be without a Kueue Workload before the status says why (Kueue makes one within a
    second in a namespace it manages)."""
    metrics_port: int = Field(8080, ge=0, le=65535)
    """The operator's own Prometheus endpoint (0: off)."""
    health_port: int = Field(8081, ge=0, le=65535)
    """kopf's liveness endpoint /healthz (0: off)."""
    leader_election: bool = True
    """Run only while holding the Lease, so several replicas never reconcile at once."""
    lease_name: str = "kubetune-operator"
    lease_namespace: str = "kubetune-system"
    lease_duration_seconds: int = Field(15, ge=2)
    identity: str = ""
    """This replica's name in the Lease (default: hostname and pid)."""
    trainer_service_account: str = ""
    """ServiceAccount of trainer pods (its token is never mounted; it carries cloud identity such as IRSA or EKS
    Pod Identity for S3). Empty: the namespace's default. It must exist in every namespace jobs run in."""
    run_as_user: int = Field(1000, ge=1)
    """UID of trainer pods (non-root, restricted PodSecurity)."""
    pod_annotation_prefixes: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """FineTuneJob annotations with these prefixes are copied onto its trainer pods (e.g. `sidecar.istio.io/`,
    `cluster-autoscaler.kubernetes.io/`); comma-separated."""
    rendezvous_port: int = 29500
    # What a platform adds to every trainer pod (chart values trainer.*); the chart's admission policy admits
    # exactly these. Lists and maps are JSON.
    trainer_image_pull_secrets: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Pull secrets of trainer pods (names, comma-separated): the image lives in a private registry."""
    trainer_env: list[dict] = Field(default_factory=list)
    """Extra environment variables (core/v1 EnvVar), e.g. HTTPS_PROXY, AWS_CA_BUNDLE, NCCL_*. The operator's own
    variables win over same-named ones."""
    trainer_volumes: list[dict] = Field(default_factory=list)
    """Extra volumes (core/v1 Volume), e.g. a CA bundle ConfigMap."""
    trainer_volume_mounts: list[dict] = Field(default_factory=list)
    """Mounts of the extra volumes in the trainer container (core/v1 VolumeMount)."""
    trainer_node_selector: dict[str, str] = Field(default_factory=dict)
    """Default node selector of trainer pods; a FineTuneJob's spec.scheduling.nodeSelector wins per key."""
    trainer_tolerations: list[dict] = Field(default_factory=list)
    """Tolerations added to every trainer pod's (core/v1 Toleration)."""
    trainer_multi_node_resources: dict[str, str] = Field(default_factory=dict)
    """Extended resources each pod of a multi-node run requests (= limits), e.g. {"vpc.amazonaws.com/efa": "4"}
    or {"rdma/ib": "1"}: the interconnect NCCL needs between nodes."""
    max_runs_kept: int = Field(10, ge=1, le=10)
    """Earlier runs remembered in status.runs."""

    @field_validator("namespaces", "pod_annotation_prefixes", "trainer_image_pull_secrets", mode="before")
    @classmethod
    def _comma_separated(cls, value):
        if isinstance(value, str):
            return [n.strip() for n in value.split(",") if n.strip()]
        return value
