"""The pure parts of multi-process training: which strategy a job gets, and which exit code the launcher keeps."""
import json

import pytest

from kubetune.trainer import launch, parallel
from kubetune.trainer.errors import BadInput
from tests.api.cases import make_job
from tests.trainer.conftest import finetunejob

GIB = 2**30


def job(method: str = "lora", strategy: str = "auto", freeze: dict | None = None):
    doc = make_job({"spec": {"method": {"type": method, **({"freeze": freeze} if freeze else {})},
                             "distributed": {"strategy": strategy}, "resources": {"gpusPerNode": 2},
                             "hyperparameters": {"batchSize": 8}}})
    return finetunejob("j", doc["spec"])


@pytest.mark.parametrize("method, strategy, world, params, gpu, expected", [
    ("lora", "auto", 1, 70e9, 80 * GIB, "none"),      # one process: nothing to split
    ("full", "auto", 2, 70e9, None, "ddp"),           # CPUs: always DDP
    ("full", "auto", 8, 1e9, 80 * GIB, "ddp"),        # 16 GB of weights, grads and AdamW state fit an 80 GB GPU
    ("full", "auto", 8, 7e9, 80 * GIB, "fsdp"),       # 112 GB do not
    ("lora", "auto", 16, 70e9, 80 * GIB, "fsdp"),     # a 70B bf16 base alone is 140 GB
    ("lora", "auto", 8, 8e9, 80 * GIB, "ddp"),
    ("qlora", "auto", 8, 70e9, 80 * GIB, "ddp"),      # 4-bit weights are never sharded
    ("full", "ddp", 8, 70e9, 80 * GIB, "ddp"),        # what the spec says, when it says it
    ("lora", "fsdp", 2, 1e6, None, "fsdp"),
])
def test_strategy(method, strategy, world, params, gpu, expected):
    assert parallel.strategy(job(method, strategy), world, int(params), gpu) == expected


def test_fsdp_refuses_gradual_unfreezing_and_auto_leaves_it_to_ddp():
    with pytest.raises(BadInput, match="distributed.strategy fsdp: gradual unfreezing"):
        parallel.strategy(job("full", "fsdp", freeze={"unfreezeEverySteps": 5}), 2, 1000, None)
    assert parallel.strategy(job("full", "auto", freeze={"unfreezeEverySteps": 5}), 8, int(70e9), 80 * GIB) == "ddp"


def test_launcher_keeps_the_first_failure(tmp_path):
    for rank, code, t in ((0, 75, 2.0), (1, 64, 1.0), (2, 0, 0.5), (3, 137, 3.0)):
        (tmp_path / f"rank-{rank}.json").write_text(json.dumps({"code": code, "time": t}))
    (tmp_path / "rank-4.json").write_text("{trunc")  # a worker killed mid-write is skipped
    assert launch.first_failure(tmp_path) == 64
    assert launch.first_failure(tmp_path / "none") is None
    assert (launch.signal_code(-9), launch.signal_code(65)) == (137, 65)
