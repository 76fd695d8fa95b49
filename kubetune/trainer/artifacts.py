"""What a finished run leaves under its output prefix: the model (adapter, or merged), the tokenizer, metrics.jsonl,
errors.jsonl, the spec, a model card, report.html, and summary.json last (its presence marks a complete run)."""
import hashlib
import json
import time
from pathlib import Path

from kubetune.api import FineTuneJob, contract
from kubetune.api.identity import hashed_wire
from kubetune.trainer import parallel, report
from kubetune.trainer.run import Run, RunState
from kubetune.trainer.storage import join


def spec_hash(job: FineTuneJob) -> str:
    return hashlib.sha256(json.dumps(hashed_wire(job.spec), sort_keys=True).encode()).hexdigest()[:16]


def ship(run: Run, state: RunState, shipped: int, final: dict, tested: dict, errors: list) -> dict:
    """The summary, and (rank 0) every artifact."""
    job, hp, es = run.job, run.job.spec.hyperparameters, state.early
    weights = parallel.full_state(run.model, trained_only=job.spec.method.type != "full") if run.sharded else None
    if not run.dist.main:
        return {}
    preview = state.challenge.preview() if state.challenge is not None else None
    return finish(job, run.run_id, run.store, run.run_uri, run.model, run.tok, run.telemetry, run.scratch,
                  errors=errors, weights=weights, report_of=lambda s: page(run, state, s, errors, preview), summary={
        "runId": run.run_id, "specHash": spec_hash(job), "stopReason": state.stop_reason, "steps": state.step,
        "totalSteps": run.total, "shippedStep": shipped, "epochs": round(state.step * hp.batch_size / len(run.train_rows), 4),
        "trainTokens": state.tokens, "wallSeconds": round(time.time() - run.started, 1),
        "deviceSeconds": round((time.time() - run.started) * run.dist.world, 1),
        "eval": final, "baseline": state.baseline, **tested,
        "best": {"name": es.metric, "value": es.best_value, "step": es.best_step} if es.best_value is not None else None,
        "data": {"trainRows": len(run.train_rows), "validationExamples": len(run.val), "testExamples": len(run.test),
                 "truncated": run.stats.truncated, "droppedTooLong": run.stats.dropped_too_long,
                 "droppedNoTarget": run.stats.dropped_no_target},
    })


def finish(job, run_id, store, run_uri, model, tok, telemetry, scratch: Path, summary: dict,
           errors: list[dict] = (), weights: dict | None = None, report_of=None) -> dict:
    """Writes every artifact, then summary.json last: its presence marks a complete run. `weights`: the full
    (trainable) state gathered from FSDP shards, saved in place of the model's own. `report_of(summary)`: the
    text of report.html, or None (not written; the run goes on)."""
    out = scratch / "artifacts"
    model = parallel.unwrap(model)
    model_dir = out / contract.MODEL_DIR
    model.save_pretrained(model_dir, **({"state_dict": weights} if weights is not None else {}))
    tok.save_pretrained(model_dir)
    if job.spec.task == "sequence-classification" and hasattr(model, "peft_config"):
        model.get_base_model().config.save_pretrained(model_dir)  # the label names travel with the adapter
    artifacts = {"uri": run_uri, "modelUri": join(run_uri, contract.MODEL_DIR),
                 "summaryUri": join(run_uri, contract.SUMMARY_FILE), "metricsUri": join(run_uri, contract.METRICS_FILE)}
    if errors:
        (out / contract.ERRORS_FILE).write_text("".join(json.dumps(r) + "\n" for r in errors))
        artifacts["errorsUri"] = join(run_uri, contract.ERRORS_FILE)
    if job.spec.output.merge_adapter:
        merged = merged_model(job, model, model_dir) if weights is not None else model.merge_and_unload()
        merged.save_pretrained(out / contract.MERGED_DIR)
        tok.save_pretrained(out / contract.MERGED_DIR)
        artifacts["mergedUri"] = join(run_uri, contract.MERGED_DIR)
    summary["artifacts"] = artifacts
    (out / contract.METRICS_FILE).write_text(telemetry.jsonl())
    (out / contract.SPEC_COPY_FILE).write_text(json.dumps(job.to_wire(), indent=2))
    (out / contract.MODEL_CARD_FILE).write_text(model_card(job, summary))
    html = report_of(summary) if report_of else None
    if html is not None:
        (out / report.REPORT_FILE).write_text(html)
        artifacts["reportUri"] = join(run_uri, report.REPORT_FILE)
    store.put_dir(out, run_uri)
    store.put_text(json.dumps(summary, indent=2), artifacts["summaryUri"])
    return summary


def merged_model(job: FineTuneJob, model, adapter_dir: Path):
    """Under FSDP the base weights are shards: merge the saved adapter into a host copy of the base model."""
    from peft import PeftModel

    base = type(model.get_base_model()).from_pretrained(model.peft_config["default"].base_model_name_or_path,
                                                        dtype="auto")
    return PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()


def model_card(job: FineTuneJob, s: dict) -> str:
    spec = job.spec
    auto = "AutoModelForSequenceClassification" if spec.task == "sequence-classification" else "AutoModelForCausalLM"
    lines = [f"# {job.metadata.name} (run {s['runId']})", "",
             f"Fine-tuned from `{spec.base_model.uri}` with {spec.method.type} on `{spec.dataset.train}` by kubetune.",
             "", f"- Stopped: {s['stopReason']} after {s['steps']} of {s['totalSteps']} steps; weights of step "
             f"{s['shippedStep']}.", f"- Validation: {json.dumps(s['eval'])}", f"- Baseline: {json.dumps(s['baseline'])}",
             f"- Test: {json.dumps(s['test'])}", "", "Load the adapter with "
             "`PeftModel.from_pretrained(base, \"model/\")`." if spec.method.type != "full" else
             f"Load with `{auto}.from_pretrained(\"model/\")`."]
    return "\n".join(lines) + "\n"


def fingerprints(run: Run) -> dict[str, str]:
    """Each split's tokenized-data key: a hash of the data (file contents, or S3 ETags), the tokenizer and the
    tokenization settings (tokenized.cache_key). Sequence classification keeps its rows in memory: none."""
    out = {}
    for split, rows in (("training", run.train_rows), ("validation", run.val), ("test", run.test)):
        root = getattr(getattr(rows, "data", None), "root", None)
        if root is not None:
            out[split] = root.name
    return out


def page(run: Run, state: RunState, summary: dict, errors: list, promotion: dict | None = None) -> str | None:
    """report.html's text for this run (None, with a warning, if it cannot be drawn)."""
    return report.render_safe(run.job.to_wire(), summary, run.telemetry.records, errors, state.samples, promotion,
                              fingerprints(run))


def update_report(run: Run, state: RunState, summary: dict, errors: list) -> None:
    """report.html again, with the promotion's outcome (known only after the artifacts are written, as the
    promotion copies them); a failure is a warning: the run's artifacts and verdict stand."""
    uri = (summary.get("artifacts") or {}).get("reportUri")
    html = page(run, state, summary, errors, summary.get("promotion")) if uri else None
    if html is None:
        return
    try:
        run.store.put_text(html, uri)
    except Exception as exc:  # noqa: BLE001
        report.log.warning("report.html was not updated with the promotion: %s: %s", type(exc).__name__, exc)
