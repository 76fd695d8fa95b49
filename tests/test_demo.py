"""hack/demo.py (`make demo`) as a newcomer reads it: no library line (a warning, a progress bar) reaches its
output."""
import subprocess
import sys
from pathlib import Path

from tests.trainer.conftest import tiny_model  # noqa: F401 (pytest fixture)

ROOT = Path(__file__).resolve().parents[1]


def test_the_demo_prints_no_library_line(tmp_path, tiny_model):  # noqa: F811
    """The demo's own process loads the base model and the adapter (peft imports bitsandbytes, whose CPU backend
    warned "No module named 'kernels'" on CPUs with AVX512-BF16; transformers drew a "Loading weights" bar per load,
    and a plain tqdm bar converting the GGUF file): nothing comes out, and the bitsandbytes logger is quiet whatever
    this machine's CPU."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    adapter = tmp_path / "adapter"
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), LoraConfig(r=4, target_modules=["q_proj"])) \
        .save_pretrained(adapter)
    code = f"""
import logging
import hack.demo as demo
from pathlib import Path
for adapter in (None, Path({str(adapter)!r})):
    demo.answer(Path({str(tiny_model)!r}), adapter, "please say red now")
import bitsandbytes  # imported by peft above
from tqdm.auto import tqdm  # as transformers draws its GGUF conversion's bar (the first demo on a machine)
list(tqdm(range(3), desc="Converting"))
print(logging.getLogger("bitsandbytes.backends.cpu.ops").getEffectiveLevel() > logging.WARNING)
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", f"a library line reaches the demo's output:\n{done.stderr}"
    assert done.stdout == "True\n"
