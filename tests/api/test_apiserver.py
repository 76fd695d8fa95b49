"""The CRD on the real API server refuses what the model refuses, names the same field, and defaults alike."""
import json
import re

import pytest
import yaml

from kubetune.api import FineTuneJob
from tests.api.cases import INVALID, VALID, make_job
from tests.api.test_validation import EXAMPLES

pytestmark = pytest.mark.cluster


def server_dry_run(cluster, namespace, doc):
    return cluster.kubectl("apply", "--server-side", "--dry-run=server", "-n", namespace, "-o", "json", "-f", "-",
                           input=json.dumps(doc), check=False)


def test_invalid_corpus_is_refused_with_the_field_named(finetunejob_crd, namespace):
    wrong = []
    for case in INVALID:
        result = server_dry_run(finetunejob_crd, namespace, make_job(case.patch, name=f"c{INVALID.index(case)}"))
        if result.returncode == 0 or case.field not in result.stderr:
            wrong.append(f"{case.name}: rc={result.returncode} expected {case.field!r} in: {result.stderr.strip()}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("doc", [make_job(c.patch, name=c.name) for c in VALID]
                         + [yaml.safe_load(p.read_text()) for p in EXAMPLES],
                         ids=[c.name for c in VALID] + [p.stem for p in EXAMPLES])
def test_valid_manifests_are_accepted_and_defaulted_like_the_model(finetunejob_crd, namespace, doc):
    result = server_dry_run(finetunejob_crd, namespace, doc)
    assert result.returncode == 0, result.stderr
    stored = json.loads(result.stdout)
    assert stored["spec"] == FineTuneJob.model_validate(doc).to_wire()["spec"]


def test_explain_shows_the_model_docs(finetunejob_crd):
    out = finetunejob_crd.kubectl("explain", "ftj.spec.hyperparameters.batchSize").stdout
    assert "Global batch: sequences per optimizer step across all devices." in out


# --- FineTuneSweep ----------------------------------------------------------------------------------------

def test_sweep_crd_refuses_the_invalid_corpus_naming_the_field(finetunesweep_crd, namespace):
    """The schema's and CEL's part of the table (the path checks are Python's: tests/api/test_sweep.py)."""
    from tests.api.sweep_cases import SWEEP_INVALID, make_sweep

    wrong = []
    for i, case in enumerate(SWEEP_INVALID):
        result = server_dry_run(finetunesweep_crd, namespace, make_sweep(case.patch, name=f"s{i}")
                                if case.name != "name-too-long" else make_sweep(case.patch))
        # Server-side apply names a list-map item by its key (searchSpace[path="..."]); each case's is the first.
        said = re.sub(r'\[path="[^"]*"\]', "[0]", result.stderr)
        if result.returncode == 0 or case.field not in said:
            wrong.append(f"{case.name}: rc={result.returncode} expected {case.field!r} in: {result.stderr.strip()}")
    assert not wrong, "\n".join(wrong)


def test_sweep_crd_accepts_and_defaults_like_the_model(finetunesweep_crd, namespace):
    from kubetune.api.sweep import FineTuneSweep
    from tests.api.sweep_cases import SWEEP_VALID, make_sweep
    from tests.api.test_sweep import SWEEP_EXAMPLES

    docs = [make_sweep(c.patch, name=c.name) for c in SWEEP_VALID] + [yaml.safe_load(p.read_text())
                                                                      for p in SWEEP_EXAMPLES]
    for doc in docs:
        result = server_dry_run(finetunesweep_crd, namespace, doc)
        assert result.returncode == 0, f"{doc['metadata']['name']}: {result.stderr}"
        assert json.loads(result.stdout)["spec"] == FineTuneSweep.model_validate(doc).to_wire()["spec"]
