"""Process settings of the trainer (not of the job: that is the FineTuneJob spec), from KUBETUNE_TRAINER_*."""
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from kubetune.api import contract


class TrainerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KUBETUNE_TRAINER_")

    cache_dir: Path = Path.home() / ".cache" / "kubetune" / "trainer"
    """Downloaded models and data (keyed by ETag) and tokenized datasets."""
    metrics_port: int = Field(contract.METRICS_PORT, ge=0, le=65535)
    """Prometheus endpoint; 0 turns it off (local runs, tests)."""
    termination_log: Path = Path(contract.TERMINATION_LOG)
    """Where the ≤4 KB JSON outcome goes for the operator."""
    log_every_steps: int = Field(5, ge=1)
    """Log (and update the gauges) every N optimizer steps, and on the first and last."""
    threads: int | None = Field(None, ge=1)
    """CPU threads for torch; unset lets torch decide."""
    collective_timeout_minutes: int = Field(60, ge=1)
    """How long a rank waits for the others at a collective (barrier, all-reduce) before failing; local rank 0
    downloads the base model while the node's other ranks wait."""
    final_wait_minutes: float = Field(180, gt=0)
    """How long the other ranks wait at the end for rank 0 to test the model and upload the artifacts (a merged
    model of billions of parameters takes a while) before failing with the reason."""
    chunked_loss: bool = True
    """Causal LMs: the output projection and cross-entropy in chunks of tokens on the final hidden states
    (linear_ce.py), never the whole batch's logits; off computes the full logits (the unoptimised path, kept for
    comparisons). The results are the same either way."""
    fused_optimizer: bool = True
    """AdamW's fused kernel on CUDA, its multi-tensor (foreach) path on CPUs and under FSDP; off: torch's
    per-parameter loop."""
    prefetch: bool = True
    """Build the next step's batches in a thread while this step computes."""
