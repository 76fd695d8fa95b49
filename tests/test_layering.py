"""Each process imports only its own side: checked statically (import-linter) and at run time."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 4 kept, 0 broken" in result.stdout


def test_cli_and_api_load_without_torch_or_kopf():
    code = "import sys, kubetune.cli, kubetune.api; print(sorted({'torch', 'kopf', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_operator_and_trainer_load_without_each_others_stack():
    operator = "import sys, kubetune.operator.handlers, kubetune.operator.__main__; print(sorted({'torch', 'transformers', 'peft', 'kubetune.trainer'} & set(sys.modules)))"
    trainer = "import sys, kubetune.trainer.loop, kubetune.trainer.__main__; print(sorted({'kopf', 'kubernetes', 'kubetune.operator'} & set(sys.modules)))"
    for code in (operator, trainer):
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "[]", code


# Tools under hack/ share test helpers through kubetune/testing.py, never by importing tests/ (whose fixtures and
# privates change with the tests). Pending: the health capture tool drives the operator fixture (issue 26, items 1-2).
HACK_MAY_IMPORT_TESTS = {"hack/observability/capture_health_testdata.py"}


def test_hack_imports_nothing_from_tests():
    import re

    scripts = [p for p in (ROOT / "hack").rglob("*") if p.is_file() and (
        p.suffix == ".py" or (not p.suffix and p.read_bytes()[:30].startswith(b"#!/usr/bin/env python")))]
    offenders = sorted(str(p.relative_to(ROOT)) for p in scripts
                       if re.search(r"^\s*(from|import) tests\b", p.read_text(errors="replace"), re.M))
    assert scripts and set(offenders) <= HACK_MAY_IMPORT_TESTS, offenders
