"""hack/images without building: the cache key follows exactly the files that go in, and `ref` needs a build."""
import shutil
import subprocess

import pytest

from tests.images.dockerfiles import ROOT
from tests.images.test_dockerfiles import load_hack_images


@pytest.fixture
def images(tmp_path, monkeypatch):
    """hack/images pointed at a copy of the repo's build inputs, so they can be edited."""
    module = load_hack_images()
    for rel in ("images", "requirements", "kubetune", "pyproject.toml", "README.md", "tests/images/__init__.py"):
        src, dst = ROOT / rel, tmp_path / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    monkeypatch.setattr(module, "ROOT", tmp_path)
    return module


def key(images, name: str) -> str:
    return images.key(name, "sha256:base", images.image_args(name))


@pytest.mark.parametrize("name", ["trainer", "operator"])
def test_key_changes_with_each_input_and_nothing_else(images, name):
    root, before = images.ROOT, key(images, name)
    assert before == key(images, name), "deterministic"
    (root / "tests" / "images" / "__init__.py").write_text("# not an input\n")
    (root / "images" / "README.md").write_text("not an input either\n")
    assert key(images, name) == before
    for rel in ("kubetune/__init__.py", f"requirements/{name}.txt", f"images/{name}/Dockerfile", "pyproject.toml"):
        path = root / rel
        original = path.read_bytes()
        path.write_bytes(original + b"\n# edited\n")
        assert key(images, name) != before, f"{rel} goes into the image"
        path.write_bytes(original)
        assert key(images, name) == before
    assert images.key(name, "sha256:other-base", images.image_args(name)) != before


def test_trainer_and_operator_do_not_share_a_key(images):
    assert key(images, "trainer") != key(images, "operator")


def test_ref_fails_before_a_build(tmp_path):
    done = subprocess.run([str(ROOT / "hack" / "images"), "ref", "trainer"], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "KUBETUNE_CACHE": str(tmp_path)})
    assert done.returncode != 0 and done.stdout == ""
    assert "hack/images build trainer" in done.stderr
