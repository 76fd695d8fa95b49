"""What the trainer tells the world while it runs: Prometheus gauges (the operator scrapes them for live
status), one JSON log line per logged step, and metrics.jsonl for the artifacts."""
import json
import sys
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from kubetune.api import contract as c


class Telemetry:
    def __init__(self, port: int | None, on_log=None, katib=None):
        self.katib = katib  # a katib.Reporter when this rank reports a Katib trial's metrics
        self.registry = CollectorRegistry()
        g = lambda name, doc, labels=(): Gauge(name, doc, labels, registry=self.registry)  # noqa: E731
        self.step = g(c.METRIC_STEP, "Optimizer steps done")
        self.total_steps = g(c.METRIC_TOTAL_STEPS, "Optimizer steps planned")
        self.epoch = g(c.METRIC_EPOCH, "Fractional epoch")
        self.train_loss = g(c.METRIC_TRAIN_LOSS, "Training loss per target token, last logged step")
        self.eval_loss = g(c.METRIC_EVAL_LOSS, "Validation loss per target token, last evaluation")
        self.lr = g(c.METRIC_LEARNING_RATE, "Learning rate")
        self.tokens_per_second = g(c.METRIC_TOKENS_PER_SECOND, "Training tokens per second, all devices")
        self.eta = g(c.METRIC_ETA_SECONDS, "Estimated seconds left")
        self.best = g(c.METRIC_BEST, "Best value of the monitored validation metric", ["metric"])
        self.eval_loss_at_step = g(c.METRIC_EVAL_LOSS_AT_STEP, "Validation loss of each recent evaluation", ["step"])
        self.eval_steps: list[int] = []
        self.grad_norm = g("kubetune_grad_norm", "Gradient norm before clipping")
        self.samples_per_second = g("kubetune_samples_per_second", "Training sequences per second")
        self.checkpoint_seconds = g("kubetune_checkpoint_seconds", "Duration of the last checkpoint write")
        self.memory_bytes = g("kubetune_device_memory_bytes", "Peak accelerator memory allocated by this process")
        self.mfu = g("kubetune_mfu", "Model FLOPs utilisation: model matmul FLOPs per second over the devices' "
                     "bf16 peak (only where the device's peak is known)")
        self.eval_metric = g("kubetune_eval_metric", "Validation metrics of the last evaluation", ["metric"])
        self.test_metric = g("kubetune_test_metric", "Final test metrics; metric names ending in Low/High are the "
                             "95% bootstrap interval; model is fine-tuned, baseModel or majorityClass/trainMean",
                             ["model", "metric"])
        self.test_difference = g("kubetune_test_difference", "Fine-tuned minus baseline test metric, with its 95% "
                                 "paired-bootstrap interval (bound value/low/high)", ["against", "metric", "bound"])
        # Checkpoint uploads run in the background; these say whether they keep succeeding and how long they take
        # (alerts: docs/alerts.md). The Checkpointer reports each upload through checkpoint_uploaded/_failed.
        self.upload_seconds = g("kubetune_checkpoint_upload_seconds", "Duration of the last checkpoint upload")
        self.upload_last_success = g("kubetune_checkpoint_last_success_timestamp_seconds",
                                     "Unix time of the last checkpoint upload that completed")
        self.upload_failures = Counter("kubetune_checkpoint_upload_failures", "Checkpoint uploads that failed",
                                       registry=self.registry)
        self.records: list[dict] = []
        self.on_log = on_log
        if port:
            start_http_server(port, registry=self.registry)

    def log(self, kind: str, **values) -> dict:
        """A structured line on stdout and a row of metrics.jsonl."""
        row = {"kind": kind, "time": round(time.time(), 3), **values}
        self.records.append(row)
        if self.on_log:
            self.on_log(row)
        else:
            print(json.dumps(row), file=sys.stdout, flush=True)
        if self.katib:
            self.katib.observe(row)
        return row

    def train_step(self, step: int, total: int, epoch: float, loss: float, lr: float, grad_norm: float,
                   tokens_per_s: float, samples_per_s: float, eta: float, mfu: float | None = None,
                   memory_bytes: int | None = None) -> dict:
        for gauge, v in ((self.step, step), (self.total_steps, total), (self.epoch, epoch), (self.train_loss, loss),
                         (self.lr, lr), (self.grad_norm, grad_norm), (self.tokens_per_second, tokens_per_s),
                         (self.samples_per_second, samples_per_s), (self.eta, eta), (self.mfu, mfu),
                         (self.memory_bytes, memory_bytes)):
            if v is not None:
                gauge.set(v)
        device = {k: v for k, v in (("mfu", mfu and round(mfu, 4)), ("memory_bytes", memory_bytes)) if v is not None}
        return self.log("train", step=step, total_steps=total, epoch=round(epoch, 4), loss=round(loss, 5),
                        lr=lr, grad_norm=round(grad_norm, 4), tokens_per_s=round(tokens_per_s, 1),
                        eta_s=round(eta), **device)

    def evaluation(self, step: int, metrics: dict, best_name: str, best_value: float | None, tag: str = "eval"):
        if tag == "eval":
            self.eval_loss.set(metrics["loss"])
            self.eval_loss_at_step.labels(step=str(step)).set(metrics["loss"])
            self.eval_steps = [s for s in self.eval_steps if s != step] + [step]
            while len(self.eval_steps) > c.EVAL_HISTORY_POINTS:
                self.eval_loss_at_step.remove(str(self.eval_steps.pop(0)))
            for k, v in metrics.items():
                self.eval_metric.labels(metric=k).set(v)
            if best_value is not None:
                self.best.labels(metric=best_name).set(best_value)
        return self.log(tag, step=step, **{k: round(v, 5) for k, v in metrics.items()})

    def test(self, report: dict) -> None:
        """The test-set results (evaluation.report) as gauges and metrics.jsonl rows."""
        models = {"fine-tuned": report["test"], **{k: v["test"] for k, v in report.get("comparison", {}).items()}}
        for model, values in models.items():
            for k, v in values.items():
                self.test_metric.labels(model=model, metric=k).set(v)
            self.log("test", model=model, **{k: round(v, 5) for k, v in values.items()})
        for against, baseline in report.get("comparison", {}).items():
            for k, diff in baseline["difference"].items():
                for bound in ("value", "low", "high"):
                    self.test_difference.labels(against=against, metric=k, bound=bound).set(diff[bound])
            self.log("comparison", against=against, **{k: {b: (round(x, 5) if isinstance(x, float) else x)
                                                            for b, x in diff.items()}
                                                        for k, diff in baseline["difference"].items()})

    def checkpoint_uploaded(self, step: int, seconds: float) -> None:
        self.upload_seconds.set(seconds)
        self.upload_last_success.set(time.time())

    def checkpoint_upload_failed(self, step: int, error: BaseException) -> None:
        self.upload_failures.inc()
        self.log("checkpoint-upload-failed", step=step, error=type(error).__name__)

    def jsonl(self) -> str:
        return "".join(json.dumps(r) + "\n" for r in self.records)
