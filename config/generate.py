"""Writes config/ from the Helm chart, so the operator's RBAC, admission policy and Deployment are written once.

`python config/generate.py` rewrites the files; `--check` exits 1 naming the files that drifted. The plain
manifests are the chart rendered as release `kubetune` in `kubetune-system` with default values, minus the CRD
(crds/ has it) and the dashboards, and minus Helm's own labels (nothing here is managed by Helm).
`namespace.yaml` and the kustomizations are written by hand.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "kubetune"
HEADER = "# Generated from charts/kubetune by `python config/generate.py`; do not edit.\n"
# Chart template -> config file (several templates may share a file; order is the template order below).
LAYOUT = {
    "serviceaccount.yaml": "rbac/service_account.yaml",
    "rbac.yaml": "rbac/role.yaml",
    "flowschema.yaml": "rbac/flowschema.yaml",
    "userroles.yaml": "rbac/user_roles.yaml",
    "admissionpolicy.yaml": "admission/operator_policy.yaml",
    "deployment.yaml": "manager/operator.yaml",
    "pdb.yaml": "manager/operator.yaml",
    "service.yaml": "manager/operator.yaml",
    "networkpolicy.yaml": "manager/operator.yaml",
}
HELM_ONLY_LABELS = re.compile(r"^\s+(helm\.sh/chart|app\.kubernetes\.io/managed-by): .*\n", re.M)


def helm() -> str:
    if os.environ.get("KUBETUNE_HELM"):
        return os.environ["KUBETUNE_HELM"]
    tools = subprocess.run([ROOT / "hack" / "tools.sh"], check=True, capture_output=True, text=True)
    return str(Path(tools.stdout.strip().splitlines()[-1]) / "helm")


def render() -> dict[str, str]:
    """The config files' contents, from `helm template`."""
    out = subprocess.run(
        [helm(), "template", "kubetune", str(CHART), "--namespace", "kubetune-system",
         "--set", "crds.install=false", "--set", "dashboards.enabled=false"],
        check=True, capture_output=True, text=True).stdout
    # helm prints each template's documents after a `# Source: kubetune/templates/<file>` line.
    parts: dict[str, list[str]] = {}
    for doc in out.split("\n---\n"):
        match = re.match(r"-*\s*# Source: kubetune/templates/(\S+)\n", doc)
        if not match:
            continue
        body = HELM_ONLY_LABELS.sub("", doc[match.end():]).strip("\n")
        parts.setdefault(match.group(1), []).append(body)
    unknown = set(parts) - set(LAYOUT)
    if unknown:
        raise SystemExit(f"config/generate.py: no config file for templates {sorted(unknown)}")
    files: dict[str, list[str]] = {}
    for template, target in LAYOUT.items():
        files.setdefault(target, []).extend(parts.get(template, []))
    return {target: HEADER + "\n---\n".join(docs) + "\n" for target, docs in files.items()}


def main(argv: list[str]) -> int:
    check = "--check" in argv
    drifted = []
    for target, text in render().items():
        path = ROOT / "config" / target
        if check:
            if not path.exists() or path.read_text() != text:
                drifted.append(target)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if drifted:
        print(f"config/ differs from charts/kubetune: {', '.join(drifted)} (run python config/generate.py)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
