"""hack/demo.py (`make demo`) as a newcomer reads it: the FineTuneJob it applies carries a promotion gate, the final
status is printed as tables with their headers (the gate's verdict with its checks, report.html's URI among the
artifacts), and no library line (a warning, a progress bar) reaches its output."""
import json
import re
import subprocess
import sys
from pathlib import Path

from hack import demo
from kubetune.api import FineTuneJob
from kubetune.api.status import Artifacts, Comparison, FineTuneJobStatus, Metrics, PromotionCheck, PromotionStatus
from tests.trainer.conftest import tiny_model  # noqa: F401 (pytest fixture)

ROOT = Path(__file__).resolve().parents[1]
RUN = "g1-14f87a28"
DEST = "s3://kubetune-demo/models/smollm2-chat/"


def final_status() -> dict:
    """A Succeeded run's status as the operator writes it (the API's own models, in wire form)."""
    status = FineTuneJobStatus(
        phase="Succeeded", run_id=RUN,
        metrics=Metrics(comparisons=[Comparison(against="baseModel", metric="loss", baseline=3.047, fine_tuned=1.394,
                                                difference=-1.654, low=-2.108, high=-1.281, excludes_zero=True)]),
        artifacts=Artifacts(uri=f"s3://kubetune-demo/artifacts/smollm2-chat/{RUN}",
                            model_uri=f"s3://kubetune-demo/artifacts/smollm2-chat/{RUN}/model",
                            summary_uri=f"s3://kubetune-demo/artifacts/smollm2-chat/{RUN}/summary.json",
                            report_uri=f"s3://kubetune-demo/artifacts/smollm2-chat/{RUN}/report.html"),
        promotion=PromotionStatus(
            verdict="Promoted", destination=DEST, model_uri=f"{DEST}runs/{RUN}/model/",
            checks=[PromotionCheck(criterion="beatBaseModel", metric="loss", passed=True, value=-1.654, low=-2.108,
                                   high=-1.281, message="beats the base model on test loss")],
            reasons=["every criterion held (1)"]))
    return json.loads(json.dumps(status.to_wire()))


def columns(text: str) -> list[list[str]]:
    """A printed table's cells, split on the runs of spaces between columns."""
    return [re.split(r" {2,}", line.strip()) for line in text.splitlines() if line.strip()]


def test_the_demo_job_is_chat_lora_for_a_cpu_behind_a_promotion_gate():
    splits = {s: f"s3://kubetune-demo/datasets/c/{s}.jsonl" for s in ("train", "validation", "test")}
    wire = demo.manifest("s3://kubetune-demo/models/smollm2/", splits, "http://10.0.0.1:9000", "us-east-1")
    job = FineTuneJob.model_validate(wire)  # the API's validation, every rule included
    gate = job.spec.promotion
    assert gate.destination == DEST and gate.beat_base_model and not gate.beat_champion and gate.bounds == []
    assert job.spec.evaluation.baseline and job.spec.dataset.test == splits["test"]  # what beatBaseModel judges
    assert job.spec.output.uri == "s3://kubetune-demo/artifacts/smollm2-chat/"
    assert job.metadata.name == demo.NAME and job.spec.hyperparameters.max_steps == 30


def test_the_final_status_prints_as_tables_with_their_headers():
    status = final_status()
    comparison = columns(demo.comparison_table(status))
    assert comparison == [["AGAINST", "TEST METRIC", "BASELINE", "FINE-TUNED", "DIFFERENCE", "95% INTERVAL",
                           "EXCLUDES 0"],
                          ["baseModel", "loss", "3.047", "1.394", "-1.654", "[-2.108, -1.281]", "yes"]]
    promotion = demo.promotion_tables(status)
    verdict, checks = promotion.split("\n\n")
    assert columns(verdict) == [["VERDICT", "DESTINATION", "MODEL URI", "REPLACED RUN"],
                                ["Promoted", DEST, f"{DEST}runs/{RUN}/model/", "-"]]
    assert columns(checks) == [["CHECK", "METRIC", "PASSED", "VALUE", "95% INTERVAL", "THRESHOLD"],
                               ["beatBaseModel", "loss", "yes", "-1.654", "[-2.108, -1.281]", "-"],
                               ["every criterion held (1)"]]
    artifacts = columns(demo.artifacts_table(status))
    assert artifacts[0] == ["ARTIFACT", "URI"]
    assert ["reportUri", f"s3://kubetune-demo/artifacts/smollm2-chat/{RUN}/report.html"] in artifacts
    # Every cell starts under its header.
    for text in (demo.comparison_table(status), verdict):
        head, *rows = text.splitlines()
        starts = [head.index(h) for h in columns(head)[0]]
        for row in rows:
            assert [row.index(c, s) for c, s in zip(columns(row)[0], starts)] == starts, row


def test_a_rejected_run_prints_each_failed_check_with_its_threshold_and_why():
    status = final_status()
    status["promotion"] = {"verdict": "Rejected", "destination": DEST, "championRunId": "g1-0b9e",
                           "checks": [{"criterion": "beatBaseModel", "metric": "loss", "passed": True,
                                       "value": -0.2, "low": -0.3, "high": -0.1},
                                      {"criterion": "max", "metric": "loss", "passed": False, "value": 1.4,
                                       "low": 1.3, "high": 1.6, "threshold": 1.5}],
                           "reasons": ["test loss's 95% interval [1.3, 1.6] is not at most 1.5"]}
    rows = columns(demo.promotion_tables(status))
    assert rows[1] == ["Rejected", DEST, "-", "-"]
    assert ["max", "loss", "no", "1.400", "[+1.300, +1.600]", "1.500"] in rows
    assert rows[-1] == ["test loss's 95% interval [1.3, 1.6] is not at most 1.5"]
    del status["promotion"]
    assert demo.promotion_tables(status) == "no verdict in the status: the run ended without one"


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
