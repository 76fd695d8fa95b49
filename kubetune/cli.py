"""The `kubetune` command line: validate manifests offline, print the CRD, and (with the extras) render or run.

Only the API is imported at start-up; commands that need the operator or the trainer import them when called.
"""
from pathlib import Path

import typer
from rich.console import Console

from kubetune.api.crd import crd_yaml
from kubetune.api.validate import is_finetunejob, is_kubetune, load_documents, validate_any, validate_manifest

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__.splitlines()[0])
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


@app.command()
def validate(files: list[Path] = typer.Argument(..., exists=True, dir_okay=False, readable=True)) -> None:
    """Validate FineTuneJob and FineTuneSweep manifests with the same models the operator uses; print every
    error, one per line."""
    failed = False
    for file in files:
        try:
            docs = load_documents(file.read_text())
        except ValueError as exc:
            err.print(f"{file}: {exc}", markup=False)
            failed = True
            continue
        jobs = [d for d in docs if is_kubetune(d)]
        if not jobs:
            err.print(f"{file}: no FineTuneJob or FineTuneSweep (apiVersion: kubetune.io/v1alpha1) in the file",
                      markup=False)
            failed = True
        for doc in jobs:
            _, errors = validate_any(doc)
            name = doc.get("metadata", {}).get("name", "?") if isinstance(doc.get("metadata"), dict) else "?"
            for e in errors:
                err.print(f"{file}: {e}", markup=False)
            if errors:
                failed = True
            else:
                out.print(f"{file}: {doc['kind']}/{name} is valid", markup=False)
    raise typer.Exit(1 if failed else 0)


@app.command()
def crd(kind: str = typer.Option("FineTuneJob", help="FineTuneJob or FineTuneSweep.")) -> None:
    """Print a kind's CustomResourceDefinition (the file in crds/ is exactly this)."""
    if kind not in ("FineTuneJob", "FineTuneSweep"):
        err.print(f"--kind: must be FineTuneJob or FineTuneSweep (got {kind})", markup=False)
        raise typer.Exit(2)
    print(crd_yaml(kind), end="")


PLACEHOLDER_UID = "00000000-0000-0000-0000-000000000000"


@app.command()
def render(file: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True)) -> None:
    """Print the Kubernetes objects the operator creates for each FineTuneJob in FILE (same builder, no cluster),
    and for each FineTuneSweep its first trials (as many FineTuneJobs as its parallelism allows, by the same
    planner; their own Jobs come once they exist)."""
    from datetime import datetime, timezone

    import yaml

    from kubetune.operator.children import render as render_children
    from kubetune.operator.settings import OperatorSettings
    from kubetune.operator.sweep_plan import plan as plan_sweep

    docs = [d for d in load_documents(file.read_text()) if is_kubetune(d)]
    settings, failed, objects = OperatorSettings(), False, []
    for doc in docs:
        doc.setdefault("metadata", {}).setdefault("namespace", "default")
        obj, errors = validate_any(doc)
        for e in errors:
            err.print(f"{file}: {e}", markup=False)
        if errors:
            failed = True
            continue
        obj.metadata.uid = obj.metadata.uid or PLACEHOLDER_UID
        obj.metadata.generation = obj.metadata.generation or 1
        if doc["kind"] == "FineTuneSweep":
            objects += plan_sweep(obj, [], datetime.now(timezone.utc)).create
        else:
            objects += render_children(obj, settings)
    if not docs:
        err.print(f"{file}: no FineTuneJob or FineTuneSweep in the file", markup=False)
        failed = True
    yaml.SafeDumper.add_representer(str, lambda dumper, value: dumper.represent_scalar(
        "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None))  # the spec file stays readable
    print(f"# uids are placeholders ({PLACEHOLDER_UID}): the API server assigns them\n"
          + yaml.safe_dump_all(objects, sort_keys=False), end="")
    raise typer.Exit(1 if failed else 0)


@app.command()
def run(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True),
    output_dir: Path | None = typer.Option(None, help="Write the artifacts under this local directory instead of "
                                           "spec.output.uri."),
    run_id: str | None = typer.Option(None, help="Artifacts go under <output>/<run id>/. Reusing an id resumes an "
                                      "interrupted run, or does nothing if it finished. Default: local-<UTC time>."),
    name: str | None = typer.Option(None, help="Which FineTuneJob, when FILE holds several."),
    threads: int | None = typer.Option(None, min=1, help="CPU threads for torch (default: torch decides)."),
    cache_dir: Path | None = typer.Option(None, help="Downloads and scratch space (default ~/.cache/kubetune/trainer)."),
) -> None:
    """Run FILE's FineTuneJob here, with the trainer the pod runs; exit codes are the trainer's (64 bad input,
    65 out of memory, 75 retry)."""
    import time

    from kubetune.api import contract

    docs = [d for d in load_documents(file.read_text()) if is_finetunejob(d)]
    if name:
        docs = [d for d in docs if (d.get("metadata") or {}).get("name") == name]
    if len(docs) != 1:
        err.print(f"{file}: {len(docs)} FineTuneJobs{f' named {name}' if name else ''}; "
                  "run needs exactly one (choose with --name)", markup=False)
        raise typer.Exit(contract.EXIT_BAD_INPUT)
    doc = docs[0]
    if output_dir is not None:
        doc.setdefault("spec", {}).setdefault("output", {})["uri"] = f"file://{output_dir.resolve()}/"
    job, errors = validate_manifest(doc)
    for e in errors:
        err.print(f"{file}: {e}", markup=False)
    if errors:
        raise typer.Exit(contract.EXIT_BAD_INPUT)

    import warnings

    from transformers.utils import logging as hf_logging

    from kubetune.trainer.__main__ import known_error  # torch and transformers load only now
    from kubetune.trainer.loop import train
    from kubetune.trainer.settings import TrainerSettings

    hf_logging.disable_progress_bar()  # one progress bar on the screen: ours
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")

    run_id = run_id or time.strftime("local-%Y%m%dT%H%M%SZ", time.gmtime())
    settings = TrainerSettings(metrics_port=0, threads=threads, **({"cache_dir": cache_dir} if cache_dir else {}))
    out.print(f"FineTuneJob/{job.metadata.name}, run {run_id} → {job.spec.output.uri.rstrip('/')}/{run_id}/",
              markup=False)
    progress = RunProgress()
    try:
        with progress.bar:
            summary = train(job, run_id, settings, on_log=progress)
    except Exception as exc:
        error = known_error(exc)
        if error is None:
            raise
        err.print(f"{file}: {error.reason}: {error}", markup=False)
        if error.reason == "Preempted":
            err.print(f"resume with: kubetune run {file} --run-id {run_id}", markup=False)
        raise typer.Exit(error.exit_code)
    report(summary)


class RunProgress:
    """Draws the trainer's log rows (train()'s on_log): a bar with step/total, loss, eval loss, tokens/s, ETA."""

    def __init__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.bar = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]}  eval {task.fields[eval]}  {task.fields[rate]} tok/s"
                                       "  ETA {task.fields[eta]}"), console=out)
        self.task = self.bar.add_task("train", total=None, loss="-", eval="-", rate="-", eta="-")

    def __call__(self, row: dict) -> None:
        kind, say = row["kind"], self.bar.console.print
        if kind == "train":
            self.bar.update(self.task, completed=row["step"], total=row["total_steps"], loss=f"{row['loss']:.4f}",
                            rate=f"{row['tokens_per_s']:.0f}", eta=_duration(row["eta_s"]))
            if not self.bar.console.is_terminal:  # a log file or a pipe gets no live bar: a line per logged step
                say(f"step {row['step']}/{row['total_steps']}  loss {row['loss']:.4f}  "
                    f"{row['tokens_per_s']:.0f} tok/s  ETA {_duration(row['eta_s'])}", markup=False)
        elif kind == "eval":
            self.bar.update(self.task, eval=f"{row['loss']:.4f}")
        elif kind == "baseline":
            say(f"baseline (untouched model): validation loss {row['loss']:.4f}", markup=False)
        elif kind == "resume":
            self.bar.update(self.task, completed=row["step"])
            say(f"resumed from the checkpoint of step {row['step']}", markup=False)
        elif kind == "data":
            say(f"data: {row['train_rows']} training rows, {row['validation_examples']} validation and "
                f"{row['test_examples']} test examples; longer than maxSeqLength {row['max_seq_length']}: "
                f"{row['truncated']} truncated, {row['dropped_too_long']} dropped", markup=False)


@app.command()
def override(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True),
    name: str | None = typer.Option(None, help="Which FineTuneJob, when FILE holds several."),
    cache_dir: Path | None = typer.Option(None, help="Scratch space (default ~/.cache/kubetune/trainer)."),
) -> None:
    """Carry out FILE's spec.promotion.override now, for a run that has already finished: promote the named run
    (no gate) or roll the destination back to it, with requestedBy and reason in the manifest. S3 credentials
    come from the environment, as for `kubetune run`. Prints the outcome as JSON."""
    import json

    from kubetune.api import FineTuneJob, contract
    from kubetune.trainer import promotion
    from kubetune.trainer.errors import TrainerError
    from kubetune.trainer.storage import Store

    docs = [d for d in load_documents(file.read_text()) if is_finetunejob(d)
            and (not name or (d.get("metadata") or {}).get("name") == name)]
    if len(docs) != 1:
        err.print(f"{file}: {len(docs)} FineTuneJobs; override needs exactly one (choose with --name)", markup=False)
        raise typer.Exit(contract.EXIT_BAD_INPUT)
    job = FineTuneJob.model_validate(docs[0])
    store = Store(job.spec.storage, cache_dir or Path.home() / ".cache" / "kubetune" / "trainer")
    try:
        outcome = promotion.apply_override(job, store)
    except TrainerError as exc:
        err.print(f"{file}: {exc}", markup=False)
        raise typer.Exit(exc.exit_code)
    print(json.dumps(outcome, indent=2))
    raise typer.Exit(0 if outcome["verdict"] in ("Overridden", "RolledBack") else 1)


def _duration(seconds: float) -> str:
    minutes, s = divmod(int(seconds), 60)
    return f"{minutes}:{s:02d}"


def report(summary: dict) -> None:
    """Baseline against fine-tuned, then where the artifacts are."""
    from rich.table import Table

    table = Table("metric", "baseline", "fine-tuned", title=f"validation: {summary['stopReason']} after "
                  f"{summary['steps']} steps, shipped step {summary['shippedStep']}")
    for key, value in summary["eval"].items():
        base = summary["baseline"].get(key)
        table.add_row(key, "-" if base is None else f"{base:.4f}", f"{value:.4f}")
    out.print(table if summary["eval"] else "no validation set: nothing to compare", markup=False)
    if summary.get("test"):
        out.print(test_table(summary), markup=False)
    out.print(f"artifacts: {summary['artifacts']['uri']}/ (model: {summary['artifacts']['modelUri']})", markup=False)


def test_table(summary: dict):
    """Each test metric with its 95% interval, against each baseline with the paired difference."""
    from rich.table import Table

    test, comparison = summary["test"], summary.get("comparison", {})
    names = [k for k in test if f"{k}Low" in test]
    ci = lambda d, k: f"{d[k]:.4f} [{d[k + 'Low']:.4f}, {d[k + 'High']:.4f}]"  # noqa: E731
    table = Table("metric", "fine-tuned [95% CI]", *(f"{key} → difference [95% CI]" for key in comparison),
                  title=f"test set: {summary['data']['testExamples']} examples")
    for name in names:
        cells = []
        for c in comparison.values():
            diff = c["difference"].get(name)
            cells.append("-" if diff is None else f"{c['test'][name]:.4f} → {diff['value']:+.4f} "
                         f"[{diff['low']:+.4f}, {diff['high']:+.4f}]{'' if diff['excludesZero'] else ' (n.s.)'}")
        table.add_row(name, ci(test, name), *cells)
    return table


if __name__ == "__main__":
    app()
