"""hack/demo_sweep.py (the README's real sweep) builds a FineTuneSweep that the API accepts: the example it sizes
for a CPU and the demo's CPU sizing can drift apart, and the sweep would then be refused at `kubectl apply`."""
from hack.demo_sweep import LEARNING_RATES, sweep_manifest
from kubetune.api.validate import validate_manifest


def test_the_readme_sweep_is_valid_and_searches_the_learning_rates_one_at_a_time():
    data = {split: f"s3://kubetune-demo/datasets/{split}.jsonl" for split in ("train", "validation", "test")}
    doc = sweep_manifest("s3://kubetune-demo/models/m/", data, "http://10.88.0.1:16900", "us-east-1")
    sweep, errors = validate_manifest(doc, "FineTuneSweep")
    assert not errors, errors
    assert sweep.spec.parallelism == 1 and sweep.spec.pruning is None
    assert sweep.spec.grid_size() == sweep.spec.trial_budget() == len(LEARNING_RATES) == 3
    template = sweep.spec.template.spec
    assert template.dataset.test and template.evaluation.baseline  # ranked on the test loss with intervals
    assert template.resources.gpus_per_node == 0 and template.scheduling.node_selector == {
        "kubetune.io/real-node": "true"}
