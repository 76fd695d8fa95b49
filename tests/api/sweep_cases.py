"""A table of invalid FineTuneSweeps, each with the field its error must name, and valid variants that flip each
rule's condition; the offline validator and the CEL parity test read it."""
from kubetune.testing import DELETE
from kubetune.testing import sweep_manifest as make_sweep  # noqa: F401
from tests.api.cases import Case


def spec(**patch) -> dict:
    return {"spec": patch}


def space(*params: dict) -> dict:
    return spec(searchSpace=list(params))


LR = "hyperparameters.learningRate"

SWEEP_INVALID = [
    Case("no-search-space", spec(searchSpace=[]), "spec.searchSpace"),
    Case("unknown-algorithm", spec(algorithm="bayes"), "spec.algorithm"),
    Case("grid-with-range", space({"path": LR, "floatRange": {"min": 1e-5, "max": 1e-3}}), "spec.algorithm"),
    Case("random-without-max-trials", spec(algorithm="random"), "spec.maxTrials"),
    Case("two-kinds-of-values", space({"path": LR, "values": [1e-4], "floatRange": {"min": 1e-5, "max": 1e-3}}),
         "spec.searchSpace[0].values"),
    Case("no-values", space({"path": LR}), "spec.searchSpace[0].values"),
    Case("values-and-choices", space({"path": LR, "values": [1e-4], "choices": ["x"]}), "spec.searchSpace[0].values"),
    Case("strings-in-values", space({"path": "hyperparameters.scheduler", "values": ["cosine"]}),
         "spec.searchSpace[0].values[0]"),
    Case("range-upside-down", space({"path": "method.lora.r", "intRange": {"min": 8, "max": 4}}),
         "spec.searchSpace[0].intRange.max"),
    Case("log-from-zero", space({"path": "hyperparameters.weightDecay",
                                 "floatRange": {"min": 0.0, "max": 0.1, "log": True}}),
         "spec.searchSpace[0].floatRange.log"),
    Case("int-log-with-step", space({"path": "method.lora.r", "intRange": {"min": 4, "max": 64, "step": 4,
                                                                           "log": True}}),
         "spec.searchSpace[0].intRange.log"),
    Case("path-not-camel-dotted", space({"path": "hyperparameters/learning_rate", "values": [1e-4]}),
         "spec.searchSpace[0].path"),
    Case("test-objective-without-test-data", spec(objective={"dataset": "test"}), "spec.objective.dataset"),
    Case("pruning-without-validation", spec(pruning={}, template={"spec": {"dataset": {"validation": DELETE}}}),
         "spec.pruning"),
    Case("parallelism-zero", spec(parallelism=0), "spec.parallelism"),
    Case("max-trials-over-999", spec(maxTrials=1000), "spec.maxTrials"),
    Case("template-invalid", spec(template={"spec": {"hyperparameters": {"epochs": 2}}}),
         "spec.template.spec.hyperparameters.epochs"),
    Case("name-too-long", {"metadata": {"name": "s" * 41}}, "metadata.name"),
]

# Python-only (CEL cannot see into the FineTuneJob model): the path and its values must fit the spec.
SWEEP_INVALID_PATHS = [
    Case("unknown-path", space({"path": "hyperparameters.learningRat", "values": [1e-4]}), "spec"),
    Case("value-out-of-range", space({"path": LR, "values": [2.0]}), "spec"),
    Case("range-out-of-range", {**space({"path": LR, "floatRange": {"min": 1e-5, "max": 2.0}}),
                                "spec": {**space({"path": LR, "floatRange": {"min": 1e-5, "max": 2.0}})["spec"],
                                         "algorithm": "random", "maxTrials": 4}}, "spec"),
    Case("suspend-not-searchable", space({"path": "suspend", "choices": ["true"]}), "spec"),
    Case("choice-not-a-number", space({"path": LR, "choices": ["fast"]}), "spec"),
]

SWEEP_VALID = [
    Case("random-log-uniform", {"spec": {"algorithm": "random", "maxTrials": 6, "searchSpace": [
        {"path": LR, "floatRange": {"min": 1e-5, "max": 1e-3, "log": True}},
        {"path": "method.lora.r", "intRange": {"min": 4, "max": 64, "step": 4}}]}}, ""),
    Case("tpe-with-median-pruning", {"spec": {"algorithm": "tpe", "maxTrials": 12, "pruning": {"type": "median"},
                                              "searchSpace": [{"path": "hyperparameters.scheduler",
                                                               "choices": ["cosine", "linear"]},
                                                              {"path": LR, "floatRange": {"min": 1e-5,
                                                                                          "max": 1e-3}}]}}, ""),
    Case("test-objective", spec(objective={"dataset": "test", "metric": "loss"},
                                template={"spec": {"dataset": {"test": "s3://datasets/chat/test.jsonl"}}}), ""),
    Case("pruning-on-split", spec(pruning={"type": "successiveHalving", "minResource": 10},
                                  template={"spec": {"dataset": {"validation": DELETE, "validationSplit": 0.1}}}), ""),
    Case("grid-capped", spec(maxTrials=3), ""),
    Case("grid-of-choices", space({"path": "hyperparameters.scheduler", "choices": ["cosine", "linear"]},
                                  {"path": "dataset.packing", "choices": ["true", "false"]}), ""),
    Case("int-log", {"spec": {"algorithm": "random", "maxTrials": 3, "searchSpace": [
        {"path": "method.lora.r", "intRange": {"min": 4, "max": 64, "log": True}}]}}, ""),
]
