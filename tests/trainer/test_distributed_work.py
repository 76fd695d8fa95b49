"""The distributed work of issue 22 on two gloo processes (torch.multiprocessing, the CPU), each against one process:

- FSDP2 with gradient accumulation reduce-scatters every micro-batch: after the first micro-batch each rank holds
  its shard of the gradient (never the full unsharded one until the last micro-batch), and the step's gradients
  equal one process's over the same rows (tolerance 1e-5 of the largest gradient; fp32 summation order).
- Evaluation is split: each rank scores half the rows, and every rank gets every row's score in the rows' order,
  equal to one process scoring them all (per-row losses within 1e-5 relative: batches differ, so BLAS sums
  differ in the last bits), under DDP-style scoring and under FSDP (equal shares, every forward gathered).
- The other ranks wait for rank 0 at the end, and give up after a timeout naming what they waited for.
- One tokenize per job: rank 0 tokenizes while the others wait; a rank on another node (its own cache) downloads
  rank 0's build from the run's prefix instead of tokenizing the same data at the same moment.
"""
import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch

from tests.trainer.conftest import chat_rows, write_jsonl

WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(fn, *args, nodes: int = 1) -> None:
    """Runs fn(rank, dist, *args) on two gloo ranks (each its own process), on one node or each as the first
    process of a node of its own (LOCAL_RANK 0)."""
    import torch.multiprocessing as mp

    mp.start_processes(_entry, args=(fn, free_port(), nodes, *args), nprocs=WORLD, join=True, start_method="spawn")


def _entry(rank: int, fn, port: int, nodes: int, *args) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank % (WORLD // nodes)))
    torch.set_num_threads(1)
    from kubetune.trainer import dist as dist_

    d = dist_.init(cuda=False, timeout_minutes=2)
    try:
        fn(rank, d, *args)
    finally:
        dist_.close(d)


def tiny(model_dir):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def micro_batches(vocab: int) -> list[dict]:
    """Four micro-batches of two rows (prompt tokens masked): rank r trains on batches 2r and 2r + 1."""
    from kubetune.trainer import data as d
    from tests.trainer.test_efficiency import examples

    rows = examples([20, 9, 14, 11, 17, 6, 12, 19], vocab)
    return [d.collate(rows[i: i + 2], 0) for i in range(0, 8, 2)]


# --- FSDP2: a reduce-scatter per micro-batch --------------------------------------------------------------------

def _fsdp_accumulate(rank, dist, model_dir, out: Path):
    from kubetune.trainer import parallel
    from kubetune.trainer.causal_lm import CausalLM, loss_sum

    model = parallel.shard(tiny(model_dir), dist, None)
    vocab = model.get_output_embeddings().weight.shape[0]
    batches = micro_batches(vocab)
    n_targets = sum(CausalLM.targets(b) for b in batches)
    mine = batches[2 * rank: 2 * rank + 2]
    params = dict(model.named_parameters())
    held_after_first = {}
    for k, batch in enumerate(mine):
        with parallel.no_sync(model, sync=k == len(mine) - 1):
            (loss_sum(model, batch, dist.device, None) / n_targets * dist.world).backward()
        if k == 0:  # what each rank holds between micro-batches
            held_after_first = {name: None if p.grad is None else (p.grad.to_local().numel(), p.numel())
                                for name, p in params.items()}
    full = {name: p.grad.full_tensor() for name, p in params.items()}
    if dist.main:
        torch.save({"held": held_after_first, "grads": full}, out)


def test_fsdp_reduce_scatters_every_micro_batch_and_keeps_the_gradients(tmp_path, tiny_model):
    """Seen failing before (set_requires_gradient_sync(False) on all but the last micro-batch): after the first
    micro-batch no parameter had a (sharded) gradient; FSDP held each block's full unsharded one instead."""
    from kubetune.trainer.causal_lm import CausalLM, loss_sum

    out = tmp_path / "fsdp.pt"
    spawn(_fsdp_accumulate, str(tiny_model), out)
    got = torch.load(out)
    held = got["held"]
    assert held and all(h is not None for h in held.values()), [k for k, h in held.items() if h is None]
    assert all(local <= -(-whole // WORLD) for local, whole in held.values())  # shards, not the whole

    model = tiny(tiny_model)
    batches = micro_batches(model.get_output_embeddings().weight.shape[0])
    n_targets = sum(CausalLM.targets(b) for b in batches)
    for batch in batches:
        (loss_sum(model, batch, torch.device("cpu"), None) / n_targets).backward()
    want = {k: p.grad for k, p in model.named_parameters()}
    assert got["grads"].keys() == want.keys()
    scale = max(g.abs().max() for g in want.values())
    worst = max((got["grads"][k] - want[k]).abs().max() / scale for k in want)
    assert worst < 1e-5, worst


# --- Evaluation split across ranks ---------------------------------------------------------------------------

def _score(rank, dist, model_dir, rows, sharded: bool, out: Path):
    from kubetune.trainer import parallel
    from kubetune.trainer.causal_lm import CausalLM
    from kubetune.trainer.run import score_shared

    model = tiny(model_dir)
    if sharded:
        model = parallel.shard(model, dist, None)
    task, seen = CausalLM(), []

    def score(part):
        seen.append(len(part))
        return task.score(model, part, 2, 0, dist.device, None)

    scored = score_shared(dist, rows, score, even=sharded)
    torch.save({"seen": seen, "loss": scored.loss, "weight": scored.weight, "correct": scored.correct},
               out / f"rank-{rank}.pt")


@pytest.mark.parametrize("sharded", [False, True], ids=["replicated", "fsdp"])
def test_each_rank_scores_its_share_and_every_rank_gets_every_row_in_order(tmp_path, tiny_model, sharded):
    """Seen failing before: no score_shared; each rank scored every row (Run.score)."""
    from kubetune.trainer.causal_lm import CausalLM
    from tests.trainer.test_efficiency import examples

    model = tiny(tiny_model)
    rows = examples([20, 9, 14, 11, 17, 6, 12, 19, 25, 8, 15], model.get_output_embeddings().weight.shape[0])
    spawn(_score, str(tiny_model), rows, sharded, tmp_path)
    one = CausalLM().score(model, rows, 2, 0, torch.device("cpu"), None)
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank-{rank}.pt", weights_only=False)
        # 11 rows: 6 and 5, or 6 each under FSDP (a copy tops the short share up; its score is dropped)
        assert got["seen"] == ([6] if sharded else [6 - rank])
        assert got["weight"].tolist() == one.weight.tolist() and got["correct"].tolist() == one.correct.tolist()
        assert got["loss"] == pytest.approx(one.loss, rel=1e-5)


# --- Ranks wait for rank 0 -----------------------------------------------------------------------------------

def _wait(rank, dist, out: Path, rank0_seconds: float, timeout_minutes: float):
    from kubetune.trainer.errors import TrainerError

    if dist.main:
        time.sleep(rank0_seconds)  # testing and uploading
        (out / "rank-0-done").write_text(str(time.time()))
        if rank0_seconds < 10:
            dist.wait_for_main("testing and uploading the artifacts", timeout_minutes)
        return
    try:
        dist.wait_for_main("testing and uploading the artifacts", timeout_minutes)
        (out / "rank-1-left").write_text(str(time.time()))
    except TrainerError as exc:
        (out / "rank-1-error").write_text(str(exc))


def test_other_ranks_leave_only_after_rank_0_is_done(tmp_path):
    spawn(_wait, tmp_path, 3.0, 1.0)
    assert float((tmp_path / "rank-1-left").read_text()) >= float((tmp_path / "rank-0-done").read_text())


def test_a_rank_waiting_for_rank_0_gives_up_after_its_timeout_and_says_what_it_waited_for(tmp_path):
    spawn(_wait, tmp_path, 12.0, 2 / 60)
    error = (tmp_path / "rank-1-error").read_text()
    assert "rank 1 waited 0.0333333 minutes for rank 0 to finish testing and uploading the artifacts" in error
    assert not (tmp_path / "rank-1-left").exists()


# --- One tokenize per job ------------------------------------------------------------------------------------

def _load(rank, dist, job_json: str, work: Path):
    """Each rank as the first process of its own node: its own cache directory, as on two nodes."""
    from kubetune.api import FineTuneJob
    from kubetune.trainer import data as d
    from kubetune.trainer.model import load_tokenizer
    from kubetune.trainer.run import load_run_data
    from kubetune.trainer.storage import Store

    from kubetune.trainer import tokenized

    build = tokenized.build

    def slow_build(*args, **kwargs):  # a dataset that takes a while: the other node would not find it built yet
        time.sleep(3)
        return build(*args, **kwargs)

    tokenized.build = slow_build
    job = FineTuneJob.model_validate_json(job_json)
    store = Store(job.spec.storage, work / f"node-{rank}")
    tok = load_tokenizer(job, job.spec.base_model.uri.removeprefix("file://"), {})
    events = []
    train, val, _ = load_run_data(job, store, tok, d.Stats(), None, dist, job.spec.output.uri + "run",
                                  on_event=lambda kind, **_: events.append((kind, time.time())))
    (work / f"rank-{rank}.json").write_text(json.dumps({"events": events, "train": len(train), "val": len(val),
                                                        "first": train[0]["input_ids"]}))


def test_rank_0_tokenizes_once_per_job_and_the_other_node_reads_its_result(tmp_path, tiny_model):
    """Seen failing before (each node's local rank 0 tokenized at once): two builds, one per node."""
    from tests.trainer.test_train import make_job

    job = make_job(tmp_path, tiny_model, dataset={"train": write_jsonl(tmp_path / "data/train.jsonl",
                                                                       chat_rows(64, seed=1))})
    spawn(_load, job.model_dump_json(by_alias=True), tmp_path, nodes=2)
    got = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(WORLD)]
    kinds = [[k for k, _ in g["events"]] for g in got]
    assert kinds == [["build", "build"], ["download", "download"]]  # train and validation: built once, by rank 0
    assert got[1]["events"][0][1] >= got[0]["events"][-1][1]  # after rank 0 had built both
    assert got[0]["train"] == got[1]["train"] == 64 and got[0]["first"] == got[1]["first"]

