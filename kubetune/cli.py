"""The `kubetune` command line: validate manifests offline, print the CRD, and (with the extras) render or run.

Only the API is imported at start-up; commands that need the operator or the trainer import them when called.
"""
from pathlib import Path

import typer
from rich.console import Console

from kubetune.api.crd import crd_yaml
from kubetune.api.validate import is_finetunejob, load_documents, validate_manifest

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__.splitlines()[0])
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


@app.command()
def validate(files: list[Path] = typer.Argument(..., exists=True, dir_okay=False, readable=True)) -> None:
    """Validate FineTuneJob manifests with the same model the operator uses; print every error, one per line."""
    failed = False
    for file in files:
        try:
            docs = load_documents(file.read_text())
        except ValueError as exc:
            err.print(f"{file}: {exc}", markup=False)
            failed = True
            continue
        jobs = [d for d in docs if is_finetunejob(d)]
        if not jobs:
            err.print(f"{file}: no FineTuneJob (kind: FineTuneJob, apiVersion: kubetune.io/v1alpha1) in the file",
                      markup=False)
            failed = True
        for doc in jobs:
            _, errors = validate_manifest(doc)
            name = doc.get("metadata", {}).get("name", "?") if isinstance(doc.get("metadata"), dict) else "?"
            for e in errors:
                err.print(f"{file}: {e}", markup=False)
            if errors:
                failed = True
            else:
                out.print(f"{file}: FineTuneJob/{name} is valid", markup=False)
    raise typer.Exit(1 if failed else 0)


@app.command()
def crd() -> None:
    """Print the FineTuneJob CustomResourceDefinition (the file in crds/ is exactly this)."""
    print(crd_yaml(), end="")


PLACEHOLDER_UID = "00000000-0000-0000-0000-000000000000"


@app.command()
def render(file: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True)) -> None:
    """Print the Kubernetes objects the operator creates for each FineTuneJob in FILE (same builder, no cluster)."""
    import yaml

    from kubetune.operator.children import render as render_children
    from kubetune.operator.settings import OperatorSettings

    docs = [d for d in load_documents(file.read_text()) if is_finetunejob(d)]
    settings, failed, objects = OperatorSettings(), False, []
    for doc in docs:
        doc.setdefault("metadata", {}).setdefault("namespace", "default")
        job, errors = validate_manifest(doc)
        for e in errors:
            err.print(f"{file}: {e}", markup=False)
        if errors:
            failed = True
            continue
        job.metadata.uid = job.metadata.uid or PLACEHOLDER_UID
        job.metadata.generation = job.metadata.generation or 1
        objects += render_children(job, settings)
    if not docs:
        err.print(f"{file}: no FineTuneJob in the file", markup=False)
        failed = True
    yaml.SafeDumper.add_representer(str, lambda dumper, value: dumper.represent_scalar(
        "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None))  # the spec file stays readable
    print(f"# uids are placeholders ({PLACEHOLDER_UID}): the API server assigns them\n"
          + yaml.safe_dump_all(objects, sort_keys=False), end="")
    raise typer.Exit(1 if failed else 0)


if __name__ == "__main__":
    app()
