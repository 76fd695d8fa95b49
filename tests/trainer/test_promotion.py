"""Promotion end to end on a tiny model with a file:// destination: a first run is promoted, a worse one is scored
against the champion in the same run and refused without touching the destination, a better one replaces the
champion (the previous stays addressable by run id), overrides promote and roll back on the record, and two
racing promotions cannot both win."""
import json
import threading
from pathlib import Path

import pytest

from kubetune.api import FineTuneJob
from kubetune.api.spec import Storage
from kubetune.trainer import promotion
from kubetune.trainer.loop import train
from kubetune.trainer.storage import Store
from tests.trainer.conftest import chat_rows, settings, write_jsonl
from tests.trainer.test_classification import tiny_bert  # noqa: F401 (the fixture)
from tests.trainer.test_train import make_job


def gated_job(tmp_path: Path, model: Path, steps: int, lr: float = 3e-3, **promotion_patch) -> FineTuneJob:
    return make_job(tmp_path, model, hyperparameters={"maxSteps": steps, "learningRate": lr},
                    dataset={"test": write_jsonl(tmp_path / "data/test.jsonl", chat_rows(48, seed=3))},
                    promotion={"destination": f"file://{tmp_path}/models/bot/", **promotion_patch})


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def manifest(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "models/bot/manifest.json").read_text())


def test_gate_champion_challenger_and_overrides(tmp_path, tiny_model):
    dest = tmp_path / "models/bot"
    a = train(gated_job(tmp_path, tiny_model, 6), "run-a", settings(tmp_path))
    first = a["promotion"]
    assert first["verdict"] == "Promoted" and first["championRunId"] is None, first
    assert first["modelUri"] == f"file://{dest}/runs/run-a/model/"
    m = manifest(tmp_path)
    assert m["champion"]["runId"] == "run-a" and m["history"] == [] and m["champion"]["how"] == "gate"
    assert (dest / "runs/run-a/model/adapter_model.safetensors").is_file()
    assert (dest / "runs/run-a/summary.json").is_file() and not (dest / "runs/run-a/checkpoints").exists()
    assert (dest / "runs/run-a/report.html").is_file() and "override" not in first

    # A run that barely trains: scored against run-a on the same rows, refused, the destination untouched.
    before = snapshot(dest)
    worse = train(gated_job(tmp_path, tiny_model, 1, lr=1e-5), "run-b", settings(tmp_path))
    verdict = worse["promotion"]
    assert verdict["verdict"] == "Rejected" and verdict["reason"] == "GateFailed", verdict
    assert verdict["championRunId"] == "run-a"
    assert worse["comparison"]["champion"]["runId"] == "run-a"
    # The champion, reloaded from the destination and scored in run-b, scores what run-a reported on those rows.
    assert worse["comparison"]["champion"]["test"]["loss"] == pytest.approx(a["test"]["loss"], rel=1e-4)
    assert any("does not beat champion run-a on test loss" in r and "95% interval" in r for r in verdict["reasons"])
    assert snapshot(dest) == before
    assert json.loads((tmp_path / "out/run-b/promotion.json").read_text()) == verdict
    # report.html is rewritten with the outcome, beside the comparison with the champion.
    page = (tmp_path / "out/run-b/report.html").read_text()
    assert 'class="verdict bad">Rejected' in page and "vs champion" in page and "does not beat champion" in page

    # A better run replaces the champion; run-a stays addressable by run id.
    better = train(gated_job(tmp_path, tiny_model, 30), "run-c", settings(tmp_path))["promotion"]
    assert better["verdict"] == "Promoted" and better["replacedRunId"] == "run-a", better
    m = manifest(tmp_path)
    assert m["champion"]["runId"] == "run-c" and [e["runId"] for e in m["history"]] == ["run-a"]
    for key, data in before.items():  # nothing that existed was overwritten, except the manifest
        if key != "manifest.json":
            assert (dest / key).read_bytes() == data, key

    # An override promotes a run the gate refuses, on the record.
    forced = train(gated_job(tmp_path, tiny_model, 1, lr=1e-5, override={
        "action": "promote", "runId": "run-d", "requestedBy": "ann", "reason": "needed for the demo"}),
        "run-d", settings(tmp_path))["promotion"]
    assert forced["verdict"] == "Overridden" and forced["requestedBy"] == "ann", forced
    assert forced["override"] == {"action": "promote", "runId": "run-d", "requestedBy": "ann"}  # what it saw
    assert manifest(tmp_path)["champion"]["how"] == "override"
    assert manifest(tmp_path)["champion"]["reason"] == "needed for the demo"

    # A rollback restores run-a; this run promotes nothing, every object but the manifest stays as it was.
    before = snapshot(dest)
    back = train(gated_job(tmp_path, tiny_model, 30, override={
        "action": "rollback", "runId": "run-a", "requestedBy": "bob", "reason": "run-d answers badly"}),
        "run-e", settings(tmp_path))["promotion"]
    assert back["verdict"] == "RolledBack" and back["replacedRunId"] == "run-d", back
    m = manifest(tmp_path)
    assert m["champion"]["runId"] == "run-a" and m["champion"]["requestedBy"] == "bob"
    assert [e["runId"] for e in m["history"]] == ["run-d", "run-c", "run-a"]
    after = snapshot(dest)
    assert {k for k in after if after[k] != before.get(k)} == {"manifest.json"}


def test_racing_promotions_cannot_both_win(tmp_path):
    store = Store(Storage(), tmp_path / "cache")
    dest = f"file://{tmp_path}/models/bot/"
    for run in ("run-1", "run-2"):
        (tmp_path / "out" / run / "model").mkdir(parents=True)
        (tmp_path / "out" / run / "model/weights").write_text(run)
    manifest_, version = promotion.read_manifest(store, dest)
    results = {}
    barrier = threading.Barrier(2)

    def promote(run: str) -> None:
        barrier.wait()
        results[run] = promotion.publish(store, dest, f"file://{tmp_path}/out/{run}/",
                                         {"runId": run, "uri": promotion.run_prefix(dest, run)}, manifest_, version)

    threads = [threading.Thread(target=promote, args=(r,)) for r in ("run-1", "run-2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results.values()) == [False, True]
    winner = next(r for r, won in results.items() if won)
    assert json.loads((tmp_path / "models/bot/manifest.json").read_text())["champion"]["runId"] == winner


def test_a_classifier_champion_reloads_with_its_head_and_another_task_is_not_comparable(tmp_path, tiny_bert,
                                                                                       tiny_model):
    from tests.trainer.test_classification import make_job as classifier_job

    dest = {"destination": f"file://{tmp_path}/models/bot/", "metric": "accuracy"}
    lora = {"type": "lora", "lora": {"r": 8, "alpha": 16}}
    a = train(classifier_job(tmp_path, tiny_bert, method=lora, hyperparameters={"maxSteps": 30},
                             promotion=dest), "cls-a", settings(tmp_path))
    assert a["promotion"]["verdict"] == "Promoted", a["promotion"]
    b = train(classifier_job(tmp_path, tiny_bert, method=lora, hyperparameters={"maxSteps": 1, "learningRate": 1e-5},
                             promotion=dest), "cls-b", settings(tmp_path))
    champion = b["comparison"]["champion"]
    assert champion["runId"] == "cls-a"
    # The adapter and its classification head, reloaded from the destination, predict what run cls-a reported.
    assert champion["test"]["accuracy"] == pytest.approx(a["test"]["accuracy"], abs=1e-9)
    assert champion["test"]["f1"] == pytest.approx(a["test"]["f1"], abs=1e-9)
    before = snapshot(tmp_path / "models/bot")
    other = train(gated_job(tmp_path, tiny_model, 6, metric="loss", destination=dest["destination"]), "lm-c",
                  settings(tmp_path))["promotion"]
    assert other["verdict"] == "Rejected" and other["reason"] == "ChampionIncomparable", other
    assert "trained for task sequence-classification" in other["reasons"][0]
    assert snapshot(tmp_path / "models/bot") == before


def test_kubetune_override_promotes_a_finished_run_and_rolls_back_on_the_record(tmp_path):
    """`kubetune override FILE` carries out spec.promotion.override for runs that have already finished."""
    import yaml
    from typer.testing import CliRunner

    from kubetune.cli import app

    for run_id in ("run-1", "run-2"):
        (tmp_path / "out" / run_id / "model").mkdir(parents=True)
        (tmp_path / "out" / run_id / "model/weights").write_text(run_id)
        (tmp_path / "out" / run_id / "summary.json").write_text(json.dumps(
            {"runId": run_id, "specHash": "abc", "test": {"loss": 1.0}}))

    def override(action: str, run_id: str) -> tuple[int, dict]:
        job = make_job(tmp_path, tmp_path, dataset={"test": "file:///data/test.jsonl"}, promotion={
            "destination": f"file://{tmp_path}/models/bot/", "override": {
                "action": action, "runId": run_id, "requestedBy": "ann", "reason": f"{action} {run_id}"}})
        (tmp_path / "job.yaml").write_text(yaml.safe_dump(job.to_wire()))
        result = CliRunner().invoke(app, ["override", str(tmp_path / "job.yaml"), "--cache-dir", str(tmp_path / "c")])
        return result.exit_code, json.loads(result.stdout)

    assert override("promote", "run-1")[0] == 0
    code, second = override("promote", "run-2")
    assert code == 0 and second["verdict"] == "Overridden" and second["replacedRunId"] == "run-1"
    code, back = override("rollback", "run-1")
    assert code == 0 and back["verdict"] == "RolledBack" and back["replacedRunId"] == "run-2"
    m = manifest(tmp_path)
    assert m["champion"]["runId"] == "run-1" and m["champion"]["how"] == "rollback"
    assert m["champion"]["reason"] == "rollback run-1" and [e["runId"] for e in m["history"]] == ["run-2", "run-1"]
    assert (tmp_path / "models/bot/runs/run-2/model/weights").read_text() == "run-2"  # still addressable
    code, refused = override("rollback", "run-9")
    assert code == 1 and refused["verdict"] == "Rejected" and "no earlier champion run-9" in refused["reasons"][0]
