"""The kubetune Grafana dashboard, generated with grafana-foundation-sdk (typed builders, not hand-edited JSON).

    python -m hack.observability.dashboard charts/kubetune/files/dashboards/kubetune.json   (make generate)

Three rows: the fleet (operator metrics, filtered by namespace), sweeps (operator metrics of FineTuneSweeps, by
namespace) and one job (trainer metrics, filtered by namespace and FineTuneJob). Label contract, which the chart's
monitors must provide: trainer series carry `namespace`, `finetunejob` and `pod` (PodMonitor relabelling); operator
series carry the jobs' own `namespace` label (ServiceMonitor with honorLabels: true) and `finetunejob`,
`finetunesweep`, `trial`, `phase`, `reason` where the metric has them.
"""
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import bargauge, common, dashboard, prometheus, stat, table, timeseries, trend
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import BigValueColorMode, BigValueGraphMode, GraphDrawStyle, \
    LegendDisplayMode, StackingMode, VizOrientation
from grafana_foundation_sdk.models.dashboard import DashboardCursorSync, DataSourceRef, DataTransformerConfig, \
    VariableRefresh, VariableSort

UID = "kubetune"
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
NS = 'namespace=~"$namespace"'
JOB = f'{NS}, finetunejob=~"$finetunejob"'
# Test metrics worth a bar each; the ...Low/...High bounds are the table's business.
HEADLINE = "loss|perplexity|tokenAccuracy|exactMatch|accuracy|f1|precision|recall|mse|mae|r2"


def query(expr: str, legend: str = "", ref: str = "A", instant: bool = False) -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).legend_format(legend or "__auto").ref_id(ref).datasource(DS)
    return q.instant() if instant else q.range()


def series(title: str, unit: str, *queries: prometheus.Dataquery, description: str = "",
           w: int = 8, h: int = 8) -> timeseries.Panel:
    p = (timeseries.Panel().title(title).description(description).datasource(DS).unit(unit).span(w).height(h)
         .legend(common.VizLegendOptions().display_mode(LegendDisplayMode.LIST).placement("bottom").show_legend(True))
         .line_width(2).fill_opacity(5))
    for q in queries:
        p = p.with_target(q)
    return p


def big_number(title: str, unit: str, *queries: prometheus.Dataquery, description: str = "", w: int = 4,
               h: int = 6) -> stat.Panel:
    p = (stat.Panel().title(title).description(description).datasource(DS).unit(unit).span(w).height(h)
         .graph_mode(BigValueGraphMode.AREA).color_mode(BigValueColorMode.VALUE)
         .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False)))
    for q in queries:
        p = p.with_target(q)
    return p


def bars(title: str, unit: str, *queries: prometheus.Dataquery, description: str = "", w: int = 8,
         h: int = 8) -> bargauge.Panel:
    p = (bargauge.Panel().title(title).description(description).datasource(DS).unit(unit).span(w).height(h)
         .orientation(VizOrientation.HORIZONTAL)
         .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False)))
    for q in queries:
        p = p.with_target(q)
    return p

def bounds_table(title: str, expr: str, row_field: str, description: str = "", w: int = 24,
                 h: int = 8) -> table.Panel:
    """An instant query's series as a matrix: a row per `row_field`, a column per `bound` label (value, low,
    high: an estimate and its interval)."""
    return (table.Panel().title(title).description(description).datasource(DS).span(w).height(h)
            .with_target(query(expr, "", "A", instant=True).format("table"))
            .with_transformation(DataTransformerConfig(id_val="groupingToMatrix", options={
                "columnField": "bound", "rowField": row_field, "valueField": "Value"})))


def fleet() -> list:
    def quantiles(metric: str) -> list[prometheus.Dataquery]:
        return [query(f"histogram_quantile({q}, sum by (le) (increase({metric}_bucket[$__range])))",
                      f"p{int(q * 100)}", ref) for q, ref in ((0.5, "A"), (0.95, "B"))]

    return [
        big_number("Queue wait", "s", *quantiles("kubetune_operator_queue_wait_seconds"), w=6,
                   description="How long runs' Jobs waited suspended for admission (Kueue), over the time range; "
                               "all namespaces."),
        big_number("Time to Running", "s", *quantiles("kubetune_operator_time_to_running_seconds"), w=6,
                   description="From a run's Job creation to its trainer running (scheduling, image pull, "
                               "admission), over the time range; all namespaces."),
        big_number("GPU-hours", "h",
                   query(f"sum(increase(kubetune_operator_gpu_seconds_total{{{NS}}}[$__range])) / 3600", "GPU-hours"),
                   w=6,
                   description="GPUs requested by Running runs x time Running, over the time range."),
        big_number("GPUs in use", "short",
                   query(f"sum(kubetune_operator_gpus_running{{{NS}}})", "GPUs"), w=6,
                   description="GPUs requested by Running runs now."),
        series("Jobs by phase", "short",
               query(f"sum by (phase) (kubetune_operator_finetunejobs{{{NS}}})", "{{phase}}"),
               description="FineTuneJobs per phase (kubectl get ftj), stacked."
               ).stacking(common.StackingConfig().mode(StackingMode.NORMAL)).fill_opacity(40),
        bars("Failures by reason", "short",
             query(f"sum by (reason) (kubetune_operator_finetunejob_phase{{{NS}, phase=\"Failed\"}})", "{{reason}}",
                   instant=True),
             description="FineTuneJobs whose current run failed, by the condition's reason (docs/troubleshooting.md)."),
        series("Runs finished", "short",
               query(f"sum by (phase, reason) (kubetune_operator_runs_finished_total{{{NS}}})", "{{phase}} {{reason}}"),
               description="Runs that ended since the operator (leader) started, by outcome and reason."),
        series("Reconcile duration", "s",
               query("histogram_quantile(0.95, sum by (le) "
                     "(rate(kubetune_operator_reconcile_duration_seconds_bucket[$__rate_interval])))", "p95"),
               description="The operator's reconcile latency (all FineTuneJobs)."),
    ]


def one_job() -> list:
    by_pod = "{{finetunejob}} {{pod}}"
    loss_vs_step = (
        trend.Panel().title("Loss and eval loss vs step").datasource(DS).span(12).height(9).x_field("step")
        .description("Training loss (last logged step) and validation loss (last evaluation) against the optimizer "
                     "step. One run at a time: pick a single FineTuneJob.")
        .with_target(query(f"max(kubetune_train_step{{{JOB}}} > 0)", "step", "A"))  # gauges read 0 before step 1
        .with_target(query(f"max(kubetune_train_loss{{{JOB}}})", "loss", "B"))
        .with_target(query(f"max(kubetune_eval_loss{{{JOB}}} > 0)", "eval loss", "C"))
        .with_transformation(DataTransformerConfig(id_val="joinByField", options={"byField": "Time", "mode": "outer"}))
        .with_transformation(DataTransformerConfig(id_val="organize", options={"excludeByName": {"Time": True}}))
        .line_width(2).show_points("auto").span_nulls(True))
    return [
        loss_vs_step,
        series("Loss over time", "none",
               query(f"kubetune_train_loss{{{JOB}}} and on (namespace, finetunejob, pod) "
                     f"kubetune_train_step{{{JOB}}} > 0", f"loss {by_pod}", "A"),
               query(f"kubetune_eval_loss{{{JOB}}} > 0", f"eval loss {by_pod}", "B"),
               description="The same losses against wall-clock time (all selected jobs).", w=12, h=9),
        series("Learning rate", "none", query(f"kubetune_learning_rate{{{JOB}}}", by_pod)),
        series("Gradient norm", "none", query(f"kubetune_grad_norm{{{JOB}}}", by_pod),
               description="Before clipping (hyperparameters.maxGradNorm)."),
        series("Throughput", "none",
               query(f"kubetune_tokens_per_second{{{JOB}}}", f"tokens/s {by_pod}", "A"),
               query(f"kubetune_samples_per_second{{{JOB}}}", f"samples/s {by_pod}", "B")),
        series("MFU", "percentunit", query(f"kubetune_mfu{{{JOB}}}", by_pod),
               description="Model FLOPs utilisation: 0 on devices whose bf16 peak the trainer does not know (CPUs)."),
        series("Checkpoint seconds", "s",
               query(f"kubetune_checkpoint_seconds{{{JOB}}}", f"blocked {by_pod}", "A"),
               query(f"kubetune_checkpoint_upload_seconds{{{JOB}}}", f"upload {by_pod}", "B"),
               description="Training blocked by the last checkpoint write, and the last background upload to S3."),
        series("Device memory", "bytes", query(f"kubetune_device_memory_bytes{{{JOB}}}", by_pod),
               description="Peak accelerator memory allocated by the trainer (0 on CPUs)."),
        big_number("Progress", "percentunit",
                   query(f"max(kubetune_train_step{{{JOB}}} / kubetune_train_total_steps{{{JOB}}})", "progress"), w=6,
                   h=10,
                   description="step / totalSteps of the selected run."),
        big_number("ETA", "s", query(f"max(kubetune_eta_seconds{{{JOB}}})", "ETA"), w=6, h=10,
                   description="Estimated seconds left, from this process' own step rate."),
        bars("Test metrics vs baseline", "none",
             query(f'kubetune_test_metric{{{JOB}, metric=~"{HEADLINE}"}}', "{{metric}} {{model}}", instant=True),
             description="Final test-set metrics of the fine-tuned model and each baseline (baseModel, "
                         "majorityClass or trainMean).", w=12, h=10),
        bounds_table("Difference to baseline (95% interval)", f'kubetune_test_difference{{{JOB}}}', "metric",
                     description="Fine-tuned minus baseline on the test set, with the paired-bootstrap interval: "
                                 "an interval that excludes zero is not chance."),
    ]


def sweeps() -> list:
    objective = "kubetune_operator_sweep_trial_objective"
    return [
        bars("Objective by trial", "none",
             query(f'{objective}{{{NS}, bound="value"}}', "{{finetunesweep}} {{trial}} ({{vs_best}})",
                   instant=True),
             description="Each finished trial's objective (status.trials[].objective): best, indistinguishable "
                         "from the best (95% intervals overlap), worse (apart) or unknown (no interval). "
                         "docs/sweeps.md says why overlap is a conservative test.", w=12, h=9),
        bounds_table("Trial intervals (95%)", f"{objective}{{{NS}}}", "trial", w=12, h=9,
                     description="Each finished trial's objective with the bounds of the 95% interval the ranking "
                                 "compared (paired with the base model when the trainer compared against it)."),
        series("Trials by phase", "short",
               query(f"sum by (finetunesweep, phase) (kubetune_operator_sweep_trials{{{NS}}})",
                     "{{finetunesweep}} {{phase}}"),
               description="Trials of each FineTuneSweep per phase (kubectl get fts), stacked.", w=12
               ).stacking(common.StackingConfig().mode(StackingMode.NORMAL)).fill_opacity(40),
        bars("Pruned trials", "short",
             query(f'sum by (finetunesweep) (kubetune_operator_sweep_trials{{{NS}, phase="Pruned"}})',
                   "{{finetunesweep}}", "A", instant=True),
             query(f"sum(increase(kubetune_operator_sweep_trials_pruned_total{{{NS}}}[$__range]))",
                   "pruned in the time range", "B", instant=True),
             description="Trials stopped early on their eval loss, per sweep now, and how many the operator "
                         "pruned over the time range.", w=12),
    ]


def build() -> dashboard.Dashboard:
    variables = [
        dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus"),
        (dashboard.QueryVariable("namespace").label("Namespace").datasource(DS)
         .query("label_values(kubetune_operator_finetunejobs, namespace)").multi(True).include_all(True)
         .all_value(".*").refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC)),
        (dashboard.QueryVariable("finetunejob").label("FineTuneJob").datasource(DS)
         .query('label_values(kubetune_train_step{namespace=~"$namespace"}, finetunejob)').multi(True)
         .include_all(True).all_value(".*").refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
         .sort(VariableSort.ALPHABETICAL_ASC)),
    ]
    b = (dashboard.Dashboard("kubetune: fine-tuning jobs").uid(UID).tags(["kubetune", "fine-tuning"])
         .description("FineTuneJobs: the fleet (operator), sweeps (operator) and one job's training (trainer). "
                      "Generated by hack/observability/dashboard.py; do not edit the JSON.")
         .refresh("30s").time("now-6h", "now").timezone("browser").tooltip(DashboardCursorSync.CROSSHAIR)
         .variables(variables))
    b = b.with_row(dashboard.Row("Fleet"))
    for p in fleet():
        b = b.with_panel(p)
    b = b.with_row(dashboard.Row("Sweeps"))
    for p in sweeps():
        b = b.with_panel(p)
    b = b.with_row(dashboard.Row("Job: $finetunejob"))
    for p in one_job():
        b = b.with_panel(p)
    return b.build()


def render() -> str:
    return json.dumps(json.loads(JSONEncoder(sort_keys=True, indent=2).encode(build())), indent=2,
                      sort_keys=True) + "\n"


if __name__ == "__main__":
    text = render()
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(text)
    else:
        sys.stdout.write(text)
