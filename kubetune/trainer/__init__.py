"""The trainer: the pod's entry point (__main__), the loop and everything it runs on (see loop.py)."""
import logging

# bitsandbytes' CPU backend (imported by peft) warns at import, on CPUs with AVX512-BF16, that an optional Hub kernel
# for 4-bit matmuls ("No module named 'kernels'") is missing. 4-bit (qlora) runs are refused on CPUs before any
# model loads, so that kernel is never used: the line only confused the demo's output.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
