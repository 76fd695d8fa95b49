"""A valid base manifest and a table of invalid variants, each with the field its error must name.

The same table runs through the offline validator (tests/api) and the real API server (tests/cluster), so the
CRD's schema and CEL rules are held to the model's behaviour.
"""
from dataclasses import dataclass

from kubetune.testing import BASE_MANIFEST as BASE  # noqa: F401 (the shared home of what hack/ uses too)
from kubetune.testing import DELETE  # noqa: F401
from kubetune.testing import job_manifest as make_job  # noqa: F401
from kubetune.testing import merge as _merge  # noqa: F401


@dataclass(frozen=True)
class Case:
    name: str
    patch: dict
    field: str
    """The path the error must name."""


def spec(**patch) -> dict:
    return {"spec": patch}


INVALID = [
    Case("unknown-spec-field", spec(bogus=1), "spec.bogus"),
    Case("inline-secret", spec(storage={"accessKeyId": "AKIA0000"}), "spec.storage.accessKeyId"),
    Case("model-http-uri", spec(baseModel={"uri": "http://example.com/model"}), "spec.baseModel.uri"),
    Case("dataset-hf-uri", spec(dataset={"train": "hf://org/data"}), "spec.dataset.train"),
    Case("output-bad-bucket", spec(output={"uri": "s3://A_B/out/"}), "spec.output.uri"),
    Case("missing-train", spec(dataset={"train": DELETE}), "spec.dataset.train"),
    Case("missing-output", spec(output=DELETE), "spec.output"),
    Case("epochs-and-maxsteps", spec(hyperparameters={"epochs": 2}), "spec.hyperparameters.epochs"),
    Case("neither-epochs-nor-maxsteps", spec(hyperparameters={"maxSteps": DELETE}), "spec.hyperparameters.epochs"),
    Case("epochs-not-a-number", spec(hyperparameters={"maxSteps": DELETE, "epochs": "three"}),
         "spec.hyperparameters.epochs"),
    Case("lora-block-on-full", spec(method={"type": "full", "lora": {"r": 8}}), "spec.method.lora"),
    Case("freeze-on-lora", spec(method={"type": "lora", "freeze": {"embeddings": True}}), "spec.method.freeze"),
    Case("fsdp-with-qlora", spec(method={"type": "qlora"}, distributed={"strategy": "fsdp"}), "spec.distributed.strategy"),
    Case("distributed-bad-strategy", spec(distributed={"strategy": "deepspeed"}), "spec.distributed.strategy"),
    Case("qlora-without-gpu", spec(method={"type": "qlora"}, resources={"gpusPerNode": 0}),
         "spec.resources.gpusPerNode"),
    Case("fp16-on-cpu", spec(hyperparameters={"precision": "fp16"}, resources={"gpusPerNode": 0}),
         "spec.hyperparameters.precision"),
    Case("batch-not-divisible", spec(hyperparameters={"batchSize": 10, "microBatchSize": 4}),
         "spec.hyperparameters.batchSize"),
    Case("batch-not-divisible-across-gpus", spec(hyperparameters={"batchSize": 8, "microBatchSize": 4},
                                                 resources={"gpusPerNode": 4}), "spec.hyperparameters.batchSize"),
    Case("early-stopping-without-validation", spec(dataset={"validation": DELETE}, earlyStopping={}),
         "spec.earlyStopping"),
    Case("validation-and-split", spec(dataset={"validationSplit": 0.1}), "spec.dataset.validationSplit"),
    Case("unknown-method", spec(method={"type": "prefix-tuning"}), "spec.method.type"),
    Case("unknown-task", spec(task="translation"), "spec.task"),
    # values a Job's label or pod spec would refuse (a 422 for the operator), refused at apply instead
    Case("queue-name-not-a-label-value", spec(scheduling={"queueName": "team a"}), "spec.scheduling.queueName"),
    Case("priority-class-not-a-dns-name", spec(scheduling={"priorityClassName": "High"}),
         "spec.scheduling.priorityClassName"),
    Case("gpu-product-too-long", spec(resources={"gpuProduct": "H" * 64}), "spec.resources.gpuProduct"),
    Case("ephemeral-storage-not-a-quantity", spec(resources={"ephemeralStorage": "lots"}),
         "spec.resources.ephemeralStorage"),
    Case("negative-learning-rate", spec(hyperparameters={"learningRate": -0.001}), "spec.hyperparameters.learningRate"),
    Case("lora-rank-zero", spec(method={"lora": {"r": 0}}), "spec.method.lora.r"),
    Case("warmup-over-one", spec(hyperparameters={"warmupRatio": 1.5}), "spec.hyperparameters.warmupRatio"),
    Case("split-too-large", spec(dataset={"validation": DELETE, "validationSplit": 0.51}),
         "spec.dataset.validationSplit"),
    Case("merge-adapter-on-full", spec(method={"type": "full"}, output={"mergeAdapter": True}),
         "spec.output.mergeAdapter"),
    Case("classification-on-causal-lm", spec(classification={"numLabels": 3}), "spec.classification"),
    Case("classification-schema-on-causal-lm", spec(dataset={"schema": "classification"}), "spec.dataset.schema"),
    Case("chat-schema-on-classifier", spec(task="sequence-classification", dataset={"schema": "chat"}),
         "spec.dataset.schema"),
    Case("accuracy-on-causal-lm", spec(earlyStopping={"metric": "accuracy"}), "spec.earlyStopping.metric"),
    Case("mse-on-classifier", spec(task="sequence-classification", earlyStopping={"metric": "mse"}),
         "spec.earlyStopping.metric"),
    Case("unfreeze-by-steps-and-epochs", spec(method={"type": "full", "freeze": {"unfreezeEverySteps": 10,
                                                                                 "unfreezeEveryEpochs": 1}}),
         "spec.method.freeze.unfreezeEveryEpochs"),
    Case("packing-on-classifier", spec(task="sequence-classification", dataset={"packing": True}),
         "spec.dataset.packing"),
    Case("multi-node-on-cpu", spec(nodes=2, resources={"gpusPerNode": 0}), "spec.nodes"),
    Case("cpu-not-a-quantity", spec(resources={"cpu": "lots"}), "spec.resources.cpu"),
    Case("bad-toleration-effect", spec(scheduling={"tolerations": [{"key": "a", "effect": "Sometimes"}]}),
         "spec.scheduling.tolerations[0].effect"),
    Case("secret-name-not-dns", spec(storage={"secretRef": {"name": "S3_Creds"}}), "spec.storage.secretRef.name"),
    Case("endpoint-without-scheme", spec(storage={"endpoint": "minio:9000"}), "spec.storage.endpoint"),
    Case("seq-length-too-short", spec(dataset={"maxSeqLength": 8}), "spec.dataset.maxSeqLength"),
    Case("name-too-long", {"metadata": {"name": "n" * 46}}, "metadata.name"),
    Case("promotion-without-test", spec(promotion={"destination": "s3://models/bot/", "beatBaseModel": False}),
         "spec.promotion"),
    Case("promotion-base-without-baseline", spec(dataset={"test": "s3://data/test.jsonl"},
                                                 promotion={"destination": "s3://models/bot/"}),
         "spec.promotion.beatBaseModel"),
    Case("promotion-destination-not-prefix", spec(dataset={"test": "s3://data/test.jsonl"},
                                                  evaluation={"baseline": True},
                                                  promotion={"destination": "s3://models/bot"}),
         "spec.promotion.destination"),
    Case("promotion-metric-of-other-task", spec(dataset={"test": "s3://data/test.jsonl"}, evaluation={"baseline": True},
                                                promotion={"destination": "s3://models/bot/", "metric": "f1"}),
         "spec.promotion.metric"),
    Case("promotion-bound-without-limit", spec(dataset={"test": "s3://data/test.jsonl"}, evaluation={"baseline": True},
                                               promotion={"destination": "s3://models/bot/",
                                                          "bounds": [{"metric": "loss"}]}),
         "spec.promotion.bounds[0].min"),
    Case("promotion-file-destination-for-s3-output", spec(dataset={"test": "s3://data/test.jsonl"},
                                                          evaluation={"baseline": True},
                                                          promotion={"destination": "file:///models/bot/"}),
         "spec.promotion.destination"),
    Case("promotion-override-bad-run-id", spec(dataset={"test": "s3://data/test.jsonl"}, evaluation={"baseline": True},
                                               promotion={"destination": "s3://models/bot/", "override": {
                                                   "action": "rollback", "runId": "runs/../x", "requestedBy": "ann",
                                                   "reason": "x"}}),
         "spec.promotion.override.runId"),
    Case("promotion-override-without-who", spec(dataset={"test": "s3://data/test.jsonl"}, evaluation={"baseline": True},
                                                promotion={"destination": "s3://models/bot/", "override": {
                                                    "action": "promote", "runId": "r1", "reason": "x"}}),
         "spec.promotion.override.requestedBy"),
    Case("checkpointing-every-without-checkpointing", spec(hyperparameters={"gradientCheckpointingEveryLayers": 2}),
         "spec.hyperparameters.gradientCheckpointing"),
    Case("checkpointing-offload-without-checkpointing", spec(hyperparameters={"gradientCheckpointingOffload": True}),
         "spec.hyperparameters.gradientCheckpointing"),
    Case("pure-bf16-on-lora", spec(hyperparameters={"weightPrecision": "bf16"}),
         "spec.hyperparameters.weightPrecision"),
    Case("weight-precision-fp16", spec(method={"type": "full"}, hyperparameters={"weightPrecision": "fp16"}),
         "spec.hyperparameters.weightPrecision"),
    Case("checkpointing-every-zero", spec(hyperparameters={"gradientCheckpointing": True,
                                                           "gradientCheckpointingEveryLayers": 0}),
         "spec.hyperparameters.gradientCheckpointingEveryLayers"),
]

# Valid variants beyond examples/: each flips a rule's condition without breaking it.
VALID = [
    Case("epochs-only", spec(hyperparameters={"maxSteps": DELETE, "epochs": 1}), ""),
    Case("fsdp-full", spec(method={"type": "full"}, distributed={"strategy": "fsdp"}, resources={"gpusPerNode": 2}), ""),
    Case("qlora-on-gpu", spec(method={"type": "qlora", "lora": {"r": 4}}, resources={"gpusPerNode": 1}), ""),
    Case("cpu-lora", spec(resources={"gpusPerNode": 0}, hyperparameters={"precision": "bf16"}), ""),
    Case("split-and-early-stopping", spec(dataset={"validation": DELETE, "validationSplit": 0.2},
                                         earlyStopping={"metric": "perplexity"}), ""),
    Case("regression", spec(task="sequence-classification", classification={"numLabels": 1},
                            earlyStopping={"metric": "r2", "mode": "max"}), ""),
    Case("full-with-freeze", spec(method={"type": "full", "freeze": {"trainableTopLayers": 2}}), ""),
    Case("merge-lora", spec(output={"mergeAdapter": True}), ""),
    Case("gradual-unfreezing", spec(method={"type": "full", "freeze": {"trainableTopLayers": 0,
                                                                       "unfreezeEveryEpochs": 1}}), ""),
    Case("exact-match-early-stopping", spec(earlyStopping={"metric": "exactMatch"}), ""),
    # Integer zeros: the API server once compared an integer with a truncated float exclusive bound.
    Case("integer-zeros", spec(dataset={"validationSplit": 0}, hyperparameters={"warmupRatio": 0, "weightDecay": 0}),
         ""),
    Case("multi-node", spec(nodes=2, resources={"gpusPerNode": 2}, hyperparameters={"batchSize": 16}), ""),
    Case("promotion-gate", spec(dataset={"test": "s3://data/test.jsonl"}, evaluation={"baseline": True},
                                promotion={"destination": "s3://models/models/bot/", "metric": "exactMatch",
                                           "bounds": [{"metric": "exactMatch", "min": 0.2},
                                                      {"metric": "loss", "max": 1.5}],
                                           "override": {"action": "rollback", "runId": "bot-1a2b3c",
                                                        "requestedBy": "ann",
                                                        "reason": "answers got worse"}}), ""),
    Case("checkpointing-choices", spec(hyperparameters={"gradientCheckpointing": True,
                                                        "gradientCheckpointingEveryLayers": 2,
                                                        "gradientCheckpointingOffload": True}), ""),
    Case("pure-bf16-full", spec(method={"type": "full"}, hyperparameters={"weightPrecision": "bf16"}), ""),
    Case("fp32-weights-on-lora", spec(hyperparameters={"weightPrecision": "fp32"}), ""),
    Case("checkpointing-offload-false", spec(hyperparameters={"gradientCheckpointingOffload": False}), ""),
]
