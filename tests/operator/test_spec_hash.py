"""Pinned spec hashes of fixed manifests: a run's identity survives an operator upgrade.

The operator recognises a running run by the hash its Job and status recorded (kubetune/operator/runs.py),
and the trainer refuses to overwrite a finished run whose summary holds another hash (kubetune/trainer/
artifacts.py). Every hash is taken over the spec as written back with its defaults, so a new default, a renamed
field or a changed serialisation changes the hash of every existing FineTuneJob: on upgrade every running job
would restart from step 0 under a new run id. Comparing today's function with itself cannot see that; these
values were computed once and must only change deliberately (docs/operator-fields.md, "How hashes evolve").
"""
import pytest

from kubetune.api import FineTuneJob
from kubetune.operator import runs as identity
from kubetune.trainer.artifacts import spec_hash as trainer_spec_hash

# Written out in full, not built from test helpers: a helper's new default must not move the pins.
CHAT_LORA = {
    "baseModel": {"uri": "s3://models/tiny/"},
    "dataset": {"train": "s3://datasets/chat/train.jsonl", "validation": "s3://datasets/chat/val.jsonl"},
    "hyperparameters": {"maxSteps": 10, "batchSize": 8, "microBatchSize": 4},
    "output": {"uri": "s3://artifacts/case/"},
}
CLASSIFIER_FULL = {
    "task": "sequence-classification",
    "baseModel": {"uri": "s3://models/bert/"},
    "dataset": {"train": "s3://datasets/cls/train.jsonl", "test": "s3://datasets/cls/test.jsonl",
                "validationSplit": 0.1},
    "classification": {"labels": ["negative", "neutral", "positive"]},
    "method": {"type": "full", "freeze": {"embeddings": True, "trainableTopLayers": 2}},
    "hyperparameters": {"epochs": 3, "batchSize": 32, "microBatchSize": 8, "learningRate": 3e-5},
    "earlyStopping": {"metric": "f1", "patience": 2},
    "output": {"uri": "s3://artifacts/cls/", "mergeAdapter": False},
}
MULTI_NODE_QUEUED = {
    "baseModel": {"uri": "s3://models/llama/"},
    "dataset": {"train": "s3://datasets/chat/train.jsonl"},
    "method": {"type": "lora", "lora": {"r": 32, "alpha": 64, "useRslora": True, "bias": "lora_only"}},
    "hyperparameters": {"maxSteps": 1000, "batchSize": 64, "microBatchSize": 4, "gradientCheckpointing": True},
    "checkpoint": {"everySteps": 100},
    "output": {"uri": "s3://artifacts/big/", "mergeAdapter": True},
    "storage": {"endpoint": "http://minio.storage:9000", "secretRef": {"name": "s3"}},
    "resources": {"gpusPerNode": 8, "memory": "512Gi", "gpuResourceName": "amd.com/gpu"},
    "nodes": 2,
    "image": "registry.example/trainer:1.2",
    "scheduling": {"queueName": "team-a", "priorityClassName": "batch-low"},
    "runPolicy": {"backoffLimit": 4, "activeDeadlineSeconds": 86400},
}

# (training_hash, legacy_training_hash, template_hash, the trainer's summary specHash)
PINNED = {
    "chat-lora": (CHAT_LORA, "4ab7320a1e953e29", "16bb4192df9b79a3", "28e204dbba79e3f9",
                  "24045b720c7222d7"),
    "classifier-full": (CLASSIFIER_FULL, "03d560f190ade801", "d69551d40cd2b837", "28e204dbba79e3f9",
                        "bfdcb947ca85e2df"),
    "multi-node-queued": (MULTI_NODE_QUEUED, "c48d9b603c9c20bc", "fa30984d4bc56496", "0ea85f5203ca710a",
                          "52fa8885ae4e71f5"),
}


def job(spec: dict) -> FineTuneJob:
    return FineTuneJob.model_validate({"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
                                       "metadata": {"name": "pinned", "namespace": "team-a"}, "spec": spec})


@pytest.mark.parametrize("name", PINNED)
def test_hashes_of_fixed_manifests_are_pinned(name):
    spec, training, legacy, template, summary = PINNED[name]
    ftj = job(spec)
    got = (identity.training_hash(ftj), identity.legacy_training_hash(ftj), identity.template_hash(ftj),
           trainer_spec_hash(ftj))
    assert got == (training, legacy, template, summary), (
        "a spec hash moved: every running FineTuneJob would restart on upgrade (docs/operator-fields.md, "
        f"'How hashes evolve'); got {got}")


def test_a_run_recorded_with_a_pinned_hash_keeps_its_run_id():
    """What the pins protect, in the pure builder: the object was edited in place since its run started
    (generation 2) and its status carries the pinned hash, as an operator of this version wrote it; after an
    upgrade the run goes on under its run id, it does not start over as g2."""
    spec, training, *_ = PINNED["multi-node-queued"]
    status = {"runId": "g1-0f1e2d3c", "specHash": training, "jobName": "pinned-g1", "phase": "Running"}
    # The object as the API server holds it: the applied manifest (not today's model written back with today's
    # defaults, which an older operator never saw).
    ftj = FineTuneJob.model_validate({"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "spec": spec,
                                      "status": status, "metadata": {
        "name": "pinned", "namespace": "team-a", "uid": "0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9", "generation": 2}})
    assert identity.current_run(ftj).run_id == "g1-0f1e2d3c"


def test_added_fields_and_changed_defaults_are_hashed_as_before(monkeypatch):
    """The rule that keeps the pins when the API grows (kubetune/api/identity.py): a field added later is left out
    at the default it came with; a changed default is hashed as its earlier value where the spec leaves it unset,
    and as written where it sets it."""
    from kubetune.api import identity as hashing
    spec, training, *_ = PINNED["multi-node-queued"]
    ftj = job(spec)
    monkeypatch.setattr(hashing, "EARLIER_DEFAULTS", {})
    monkeypatch.setattr(hashing, "ADDED_FIELDS", {("method", "lora", "bias"): "lora_only"})  # as if bias were new
    assert "bias" not in hashing.hashed_wire(ftj.spec)["method"]["lora"]
    other = job({**spec, "method": {"type": "lora", "lora": {**spec["method"]["lora"], "bias": "all"}}})
    assert hashing.hashed_wire(other.spec)["method"]["lora"]["bias"] == "all"
    monkeypatch.setattr(hashing, "ADDED_FIELDS", {})
    monkeypatch.setattr(hashing, "EARLIER_DEFAULTS", {("method", "lora", "dropout"): 0.25})  # unset in this spec
    assert hashing.hashed_wire(ftj.spec)["method"]["lora"]["dropout"] == 0.25
    assert identity.training_hash(ftj) != training
    explicit = job({**spec, "method": {"type": "lora", "lora": {**spec["method"]["lora"], "dropout": 0.05}}})
    assert hashing.hashed_wire(explicit.spec)["method"]["lora"]["dropout"] == 0.05


def test_gradient_checkpointing_choices_are_hashed_only_when_they_change_the_run():
    """hyperparameters.gradientCheckpointingEveryLayers / gradientCheckpointingOffload / weightPrecision (issue 22)
    are optional with no default, so live objects do not change and the pins hold; a value that behaves as unset
    (every 1 layer, no offload, fp32 weights) keeps the run; another value is a new run, like any
    hyperparameter."""
    spec, training, *_ = PINNED["multi-node-queued"]
    hp = spec["hyperparameters"]
    same = [job({**spec, "hyperparameters": {**hp, **extra}}) for extra in (
        {"gradientCheckpointingEveryLayers": 1}, {"gradientCheckpointingOffload": False},
        {"gradientCheckpointingEveryLayers": 1, "gradientCheckpointingOffload": False}, {"weightPrecision": "fp32"})]
    assert [identity.training_hash(j) for j in same] == [training] * 4
    for extra in ({"gradientCheckpointingEveryLayers": 2}, {"gradientCheckpointingOffload": True}):
        assert identity.training_hash(job({**spec, "hyperparameters": {**hp, **extra}})) != training, extra
