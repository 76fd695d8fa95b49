"""requirements/*.txt (hack/images lock) against pyproject.toml: a pin changed on one side only fails here."""
import re
import subprocess
import tomllib

import pytest

from tests.images.dockerfiles import ROOT, stages

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
LOCKS = {"operator": ["operator"], "trainer": ["trainer", "katib"]}  # lock file -> pyproject extras
CUDA_ONLY = re.compile(r"^(nvidia-|cuda-|triton$)")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(requirements: list[str]) -> dict[str, str]:
    out = {}
    for req in requirements:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?==([^;\s]+)", req.strip())
        assert m, f"pyproject.toml pins exactly: {req!r}"
        out[norm(m.group(1))] = m.group(2)
    return out


def lock_entries(text: str) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) from a pip-compile/uv lock with hashes."""
    out, current = {}, None
    for line in text.splitlines():
        if m := re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line):
            current = norm(m.group(1))
            out[current] = (m.group(2), 0)
        elif current and "--hash=sha256:" in line:
            version, n = out[current]
            out[current] = (version, n + 1)
    return out


def lock(name: str) -> dict[str, tuple[str, int]]:
    return lock_entries((ROOT / "requirements" / f"{name}.txt").read_text())


@pytest.mark.parametrize("name", LOCKS)
def test_every_pyproject_pin_is_the_locked_version(name):
    wanted = pins(PYPROJECT["dependencies"] + [req for extra in LOCKS[name]
                                               for req in PYPROJECT["optional-dependencies"][extra]])
    locked = lock(name)
    drift = {pkg: (version, locked.get(pkg, ("missing",))[0]) for pkg, version in wanted.items()
             if locked.get(pkg, (None,))[0] != version}
    assert not drift, f"pyproject vs requirements/{name}.txt (run hack/images lock): {drift}"


@pytest.mark.parametrize("name", LOCKS)
def test_lock_pins_every_package_with_hashes(name):
    text = (ROOT / "requirements" / f"{name}.txt").read_text()
    assert "hack/images lock" in text.splitlines()[1], "the header names the command that regenerates it"
    entries = lock(name)
    assert len(entries) > len(PYPROJECT["dependencies"])
    requirement_lines = [l for l in text.splitlines() if l and not l[0].isspace() and not l.startswith("#")]
    assert len(requirement_lines) == len(entries), "every requirement is name==version"
    assert all(n > 0 for _, n in entries.values()), "pip --require-hashes needs a hash for every package"


def test_operator_lock_has_no_training_stack():
    locked = lock("operator")
    for pkg in ("torch", "transformers", "peft", "triton", "safetensors"):
        assert pkg not in locked
    assert not [p for p in locked if CUDA_ONLY.match(p)]
    assert "kopf" in locked


def test_cpu_selection_in_the_trainer_dockerfile_drops_only_cuda_wheels(tmp_path):
    """Runs the Dockerfile's own awk filter on the trainer lock."""
    run = next(r for r in stages("trainer")[1][0].all("RUN") if "awk" in r)
    program = re.search(r"awk '([^']+)'", run).group(1)
    text = (ROOT / "requirements" / "trainer.txt").read_text()
    selected = subprocess.run(["awk", program], input=text, capture_output=True, text=True, check=True).stdout
    full, cpu = lock_entries(text), lock_entries(selected)
    dropped = set(full) - set(cpu)
    assert dropped and all(CUDA_ONLY.match(p) for p in dropped), dropped
    assert {p for p in full if CUDA_ONLY.match(p)} == dropped
    assert {k: v for k, v in full.items() if k in cpu} == cpu, "kept entries keep their versions and hashes"
    assert "torch" in cpu and "transformers" in cpu and "peft" in cpu
