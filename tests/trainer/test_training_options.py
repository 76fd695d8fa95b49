"""hyperparameters.gradientCheckpointing and earlyStopping.minDelta, each shown by what it changes in a real
run on the tiny Llama: blocks recomputed in the backward pass with unchanged losses; an earlier stop."""
from collections import Counter

import pytest

from kubetune.trainer import dist as dist_
from kubetune.trainer.loop import train, train_steps
from kubetune.trainer.run import resume, setup
from kubetune.trainer.unfreeze import transformer_blocks
from tests.api.cases import DELETE
from tests.trainer.conftest import chat_rows, settings, write_jsonl
from tests.trainer.test_lora_options import make_job


@pytest.mark.parametrize("method", [{"type": "lora"}, {"type": "full", "lora": DELETE}], ids=["lora", "full"])
def test_gradient_checkpointing_recomputes_every_block_and_trains_the_same(tmp_path, tiny_model, method):
    """With checkpointing each block runs its forward again in the backward pass (once more per trained
    micro-batch); gradients still reach every trained weight inside the blocks, so the losses are the same. No
    evaluation runs before the first step: the model trains in train mode from the start (from_pretrained
    returns it in eval mode, where transformers skips checkpointing and dropout)."""
    def run(checkpointing: bool) -> tuple[Counter, list[float]]:
        job = make_job(tmp_path, tiny_model, method=method,
                       hyperparameters={"maxSteps": 3, "batchSize": 8, "microBatchSize": 4,
                                        "gradientCheckpointing": checkpointing})
        rows = []
        prepared = setup(job, f"gc-{checkpointing}", settings(tmp_path), rows.append)
        calls = Counter()
        for i, block in enumerate(transformer_blocks(prepared.model)):
            # A submodule, not the block: transformers checkpoints inside the block's forward, so the block's own
            # hooks fire once either way while its submodules run again in the recompute.
            next(block.children()).register_forward_pre_hook(
                lambda module, _, i=i: calls.update([i] if module.training else ["eval"]))
        try:
            train_steps(prepared, resume(prepared))
        finally:
            dist_.close(prepared.dist)
        return calls, [r["loss"] for r in rows if r["kind"] == "train"]

    plain_calls, plain_losses = run(False)
    checkpointed_calls, checkpointed_losses = run(True)
    micro_batches = 3 * 8 // 4
    assert set(plain_calls) == {0, 1}  # no forward in eval mode
    assert {i: checkpointed_calls[i] - plain_calls[i] for i in plain_calls} == {0: micro_batches, 1: micro_batches}
    assert len(plain_losses) == 3 and plain_losses[-1] < plain_losses[0]  # it trains
    assert checkpointed_losses == pytest.approx(plain_losses, rel=1e-5)


def test_min_delta_stops_a_run_whose_gains_are_too_small_to_count(tmp_path, tiny_model):
    """The same improving run twice: with minDelta 0 every evaluation is an improvement and it runs to maxSteps;
    with a minDelta no gain reaches, the first evaluation is the best and patience (2) runs out two later."""
    def run(min_delta: float) -> dict:
        job = make_job(tmp_path, tiny_model, hyperparameters={"maxSteps": 12},
                       dataset={"validation": write_jsonl(tmp_path / "data/val.jsonl", chat_rows(16, seed=2))},
                       evaluation={"everySteps": 2},
                       earlyStopping={"metric": "loss", "patience": 2, "minDelta": min_delta})
        return train(job, f"delta-{min_delta}", settings(tmp_path))

    every_gain = run(0.0)
    assert every_gain["stopReason"] == "MaxStepsReached" and every_gain["steps"] == 12
    assert every_gain["best"]["step"] == 12
    strict = run(1.0)
    assert strict["stopReason"] == "EarlyStopped"
    assert (strict["steps"], strict["best"]["step"]) == (6, 2)
    # The gains it refused to count were real: the loss at step 6 is lower than at the shipped step 2.
    assert strict["best"]["value"] > every_gain["best"]["value"]


def test_pure_bf16_full_fine_tuning_keeps_weights_and_adamw_states_in_bf16(tmp_path, tiny_model):
    """hyperparameters.weightPrecision bf16 (issue 22: offer the anchor's choice beside our fp32 masters): the
    trained weights, their gradients and AdamW's states are bf16, and the run trains as the fp32-master run does
    to bf16's precision (first-step loss within 1%: the same bf16 matmuls, norms in bf16 instead of fp32; later
    steps drift apart by the updates bf16 rounds away)."""
    import torch

    def run(weights: str | None):
        hp = {"maxSteps": 4, "batchSize": 8, "microBatchSize": 8, "precision": "bf16", "learningRate": 1e-3}
        job = make_job(tmp_path, tiny_model, method={"type": "full", "lora": DELETE},
                       hyperparameters={**hp, **({"weightPrecision": weights} if weights else {})})
        rows = []
        prepared = setup(job, f"weights-{weights}", settings(tmp_path), rows.append)
        try:
            train_steps(prepared, resume(prepared))
        finally:
            dist_.close(prepared.dist)
        trained = [p for p in prepared.model.parameters() if p.requires_grad]
        states = {t.dtype for s in prepared.opt.state.values() for k, t in s.items() if k != "step"}
        return {p.dtype for p in trained}, states, [r["loss"] for r in rows if r["kind"] == "train"]

    masters, master_states, master_losses = run(None)
    pure, pure_states, pure_losses = run("bf16")
    assert masters == master_states == {torch.float32}
    assert pure == pure_states == {torch.bfloat16}
    assert pure_losses[0] == pytest.approx(master_losses[0], rel=1e-2)
    assert pure_losses[-1] < pure_losses[0]  # it trains
