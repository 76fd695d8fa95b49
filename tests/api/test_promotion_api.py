"""spec.promotion decides where a finished run goes, not what it trains: no run identity takes it."""
from kubetune.api import FineTuneJob
from kubetune.api.identity import hashed_wire
from kubetune.operator.runs import template_hash, training_hash
from tests.api.cases import make_job

GATE = {"destination": "s3://models/models/bot/", "bounds": [{"metric": "loss", "max": 1.5}]}
BASE = {"dataset": {"test": "s3://data/test.jsonl"}, "evaluation": {"baseline": True}}


def _job(**promotion) -> FineTuneJob:
    spec = dict(BASE, **({"promotion": promotion} if promotion else {}))
    return FineTuneJob.model_validate(make_job({"spec": spec}))


def test_promotion_starts_no_new_run():
    without, gated = _job(), _job(**GATE)
    overridden = _job(**GATE, override={"action": "promote", "runId": "case-1", "requestedBy": "ann", "reason": "ok"})
    assert "promotion" not in hashed_wire(gated.spec)
    assert training_hash(without) == training_hash(gated) == training_hash(overridden)
    assert template_hash(without) == template_hash(gated) == template_hash(overridden)


def test_promotion_round_trips_in_camel_case():
    wire = _job(**GATE, override={"action": "rollback", "runId": "case-1", "requestedBy": "ann",
                                  "reason": "worse answers"}).spec.to_wire()["promotion"]
    assert wire["override"] == {"action": "rollback", "runId": "case-1", "requestedBy": "ann",
                                "reason": "worse answers"}
    assert wire["destination"] == "s3://models/models/bot/"
