"""Each speed technique of the trainer leaves the math alone (issue 22), on the tiny random Llama in fp32 on the CPU:

- chunked linear + cross-entropy (linear_ce.py) against cross-entropy on the full logits: the loss and every
  gradient it touches (hidden states, LoRA weights, a trained head), over several chunks, with prompt tokens masked;
  the scoring statistics (per-row loss sums, target counts, correct predictions) likewise;
- padding-free batching (varlen.py) against padded batches: per-example losses and gradients, for examples of
  unequal and of equal lengths (one batched attention call), packed rows (dataset.packing) and under activation checkpointing (its recomputation must see the lengths);
- the whole trainer, one technique at a time and all together (the defaults), against the trainer with every one
  off: the per-step losses of 12 steps (LoRA). test_loss_parity.py holds the defaults against the plain HF Trainer.

Tolerances: losses 2e-5 relative, gradients 1e-4 of the largest gradient (fp32 summation order differs between the
paths; a wrong normalisation or a mask that leaks across examples moves them by 1e-2 or more); trainer losses
5e-5 absolute on losses around 5.5 (our log rounds to 5 decimals).
"""
import pytest
import torch

from tests.trainer.conftest import finetunejob, settings, write_jsonl
from tests.trainer.test_loss_parity import chats

CPU = torch.device("cpu")


def load(model_dir, method: str):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        # B random too (init_lora_weights=False): with B = 0 the gradients of A are all zero and prove nothing.
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                                                 init_lora_weights=False, task_type="CAUSAL_LM"))
    return model


def examples(lengths, vocab: int, prompt: int = 3, seed: int = 0) -> list[dict]:
    """Random token rows whose first `prompt` labels are masked (as a chat's prompt is)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(3, vocab, (n,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return out


def grads(model) -> dict:
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def assert_close_grads(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    scale = max(g.abs().max() for g in b.values())
    worst = max((a[k] - b[k]).abs().max() / scale for k in a)
    assert worst < 1e-4, worst


@pytest.mark.parametrize("method", ["lora", "full"])
def test_chunked_loss_equals_the_full_logits_loss_and_gradients(tiny_model, monkeypatch, method):
    from kubetune.trainer import data as d
    from kubetune.trainer import linear_ce
    from kubetune.trainer.causal_lm import loss_sum, token_losses

    model = load(tiny_model, method)
    vocab = model.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(linear_ce, "CHUNK_LOGITS", vocab * 7)  # 7 tokens a chunk: the batch spans many chunks
    skip = linear_ce.HeadSkip.of(model)
    assert skip is not None and skip.probe(model, vocab, CPU, None)
    batch = d.collate(examples([20, 9, 14], vocab), 0)

    plain = loss_sum(model, batch, CPU, None)
    plain.backward()
    want = grads(model)
    model.zero_grad(set_to_none=True)
    chunked = loss_sum(model, batch, CPU, None, skip)
    chunked.backward()
    assert abs(chunked.item() - plain.item()) < 2e-5 * plain.item()
    got = grads(model)
    if method == "full":
        assert "lm_head.weight" in got  # the head trains: its gradient comes from the chunked function
    assert_close_grads(got, want)

    with torch.no_grad():
        (s1, n1, c1), (s2, n2, c2) = token_losses(model, batch, CPU, None), token_losses(model, batch, CPU, None, skip)
    assert torch.allclose(s1, s2, rtol=2e-5) and n1.tolist() == n2.tolist() == [17, 6, 11]
    assert c1.tolist() == c2.tolist()


def test_the_probe_refuses_a_model_that_changes_logits_after_the_head(tiny_model):
    """A model that soft-caps its logits after the head (as Gemma 2's does) keeps the plain loss."""
    from kubetune.trainer import linear_ce

    model = load(tiny_model, "full")
    vocab = model.get_output_embeddings().weight.shape[0]
    forward = type(model).forward

    def capped(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        out.logits = torch.tanh(out.logits / 2) * 2
        return out

    model.forward = capped.__get__(model)
    assert not linear_ce.HeadSkip(model.get_output_embeddings()).probe(model, vocab, CPU, None)


def packed_rows(exs: list[dict], width: int) -> list[dict]:
    from kubetune.trainer import data as d

    return d.pack(exs, width)


@pytest.mark.parametrize("layout", ["examples", "equal lengths", "packed rows", "checkpointing"])
def test_padding_free_equals_padded_batches(tiny_model, layout):
    from kubetune.trainer import data as d
    from kubetune.trainer import varlen
    from kubetune.trainer.causal_lm import loss_sum, token_losses

    model = load(tiny_model, "lora")
    vocab = model.get_output_embeddings().weight.shape[0]
    rows = examples([21] * 4 if layout == "equal lengths" else [23, 5, 17, 11, 30, 8], vocab)
    if layout == "packed rows":
        rows = packed_rows(rows, 40)
        assert len(rows) < 6 and any(0 in r["position_ids"][1:] for r in rows)
    if layout == "checkpointing":
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()

    padded = d.collate(rows, 0)  # transformers' own SDPA path (a dense block mask for packed rows)
    want_loss = loss_sum(model, padded, CPU, None)
    want_loss.backward()
    want = grads(model)
    with torch.no_grad():
        want_rows = token_losses(model, padded, CPU, None)
    model.zero_grad(set_to_none=True)

    assert varlen.enable(model) and varlen.probe(model, vocab, CPU, None)
    flat = varlen.collate(rows, 0)
    assert flat["input_ids"].shape == (1, sum(len(r["input_ids"]) for r in rows))  # no padding
    got_loss = loss_sum(model, flat, CPU, None)
    got_loss.backward()
    assert abs(got_loss.item() - want_loss.item()) < 2e-5 * want_loss.item()
    assert_close_grads(grads(model), want)
    # The targets are the same tokens: the step's normaliser does not change.
    from kubetune.trainer.causal_lm import CausalLM
    assert CausalLM.targets(flat) == CausalLM.targets(padded) == float(want_rows[1].sum())


def test_padding_free_attention_never_crosses_examples(tiny_model):
    """Changing one example's tokens leaves the other examples' logits exactly as they were."""
    from kubetune.trainer import varlen
    from kubetune.trainer.causal_lm import model_output

    model = load(tiny_model, "full").eval()
    vocab = model.get_output_embeddings().weight.shape[0]
    assert varlen.enable(model)
    rows = examples([12, 9, 15], vocab)
    changed = [rows[0], {"input_ids": [(t + 1) % vocab for t in rows[1]["input_ids"]], "labels": rows[1]["labels"]},
               rows[2]]
    with torch.no_grad():
        a = model_output(model, varlen.collate(rows, 0), CPU, None)[0]
        b = model_output(model, varlen.collate(changed, 0), CPU, None)[0]
    assert torch.equal(a[:12], b[:12]) and torch.equal(a[21:], b[21:])
    assert not torch.allclose(a[12:21], b[12:21])


STEPS = 12


def run_losses(tmp_path, model_dir, technique: str, **dataset) -> tuple[list[float], dict]:
    """Per-step losses of the trainer with one technique on ("all": the defaults; "none": every one off)."""
    from kubetune.trainer.loop import train

    defaults = {"chunked_loss", "fused_optimizer", "prefetch", "padding_free"}
    on = defaults if technique == "all" else defaults | {"compile"} if technique == "compile" else {technique}
    out = tmp_path / technique
    data = write_jsonl(out / "train.jsonl", chats(64))
    job = finetunejob("efficiency", {
        "baseModel": {"uri": f"file://{model_dir}"},
        "dataset": {"train": data, "maxSeqLength": 64, "paddingFree": "padding_free" in on, **dataset},
        "method": {"type": "lora", "lora": {"r": 8, "alpha": 16}},
        "hyperparameters": {"maxSteps": STEPS, "batchSize": 8, "microBatchSize": 4, "learningRate": 3e-3,
                            "warmupRatio": 0.1, "maxGradNorm": 1.0, "seed": 42, "compile": "compile" in on},
        "checkpoint": {"everyMinutes": None},
        "output": {"uri": f"file://{out}/out/"},
        "resources": {"gpusPerNode": 0},
    })
    rows = []
    train(job, "efficiency", settings(out, **{k: k in on for k in ("chunked_loss", "fused_optimizer", "prefetch")}),
          on_log=rows.append)
    (batching,) = [r for r in rows if r["kind"] == "batching"]
    return [r["loss"] for r in rows if r["kind"] == "train"], batching


@pytest.fixture(scope="module")
def unoptimised(tmp_path_factory, tiny_model):
    losses, batching = run_losses(tmp_path_factory.mktemp("none"), tiny_model, "none")
    assert batching == {**batching, "padding_free": False, "chunked_loss": False}
    return losses


@pytest.mark.parametrize("technique", ["chunked_loss", "padding_free", "fused_optimizer", "prefetch", "all"])
def test_trainer_losses_match_the_unoptimised_trainer(tmp_path, tiny_model, unoptimised, technique):
    torch.set_num_threads(2)
    losses, batching = run_losses(tmp_path, tiny_model, technique)
    if technique in ("chunked_loss", "all"):
        assert batching["chunked_loss"]
    if technique in ("padding_free", "all"):
        assert batching["padding_free"]
    assert len(losses) == len(unoptimised) == STEPS
    diffs = [abs(a - b) for a, b in zip(losses, unoptimised)]
    assert max(diffs) < 5e-5, list(zip(losses, unoptimised))
    assert losses[-1] < losses[0] - 0.2  # it learns, so a drifting optimizer would show


def test_packed_training_matches_with_and_without_padding_free(tmp_path, tiny_model):
    """dataset.packing: packed rows trained padding-free (per-example attention) and padded (transformers' block
    mask) give the same losses."""
    torch.set_num_threads(2)
    padded, _ = run_losses(tmp_path / "a", tiny_model, "none", packing=True)
    free, batching = run_losses(tmp_path / "b", tiny_model, "padding_free", packing=True)
    assert batching["padding_free"]
    assert max(abs(a - b) for a, b in zip(free, padded)) < 5e-5, list(zip(free, padded))


@pytest.mark.slow  # inductor compiles C++ kernels for the CPU: about a minute on 2 shared cores
def test_compiled_blocks_match_the_unoptimised_trainer(tmp_path, tiny_model, unoptimised):
    """hyperparameters.compile on top of the defaults. Tolerance 2e-4: inductor's fused kernels sum in another
    order (fp32), and 12 steps of training carry the difference forward."""
    torch.set_num_threads(2)
    losses, _ = run_losses(tmp_path, tiny_model, "compile")
    assert max(abs(a - b) for a, b in zip(losses, unoptimised)) < 2e-4, list(zip(losses, unoptimised))


def test_a_lora_classifiers_trained_head_keeps_fp32_weights_over_a_half_precision_base(tiny_model):
    """Over a bf16 (or fp16) base, peft's copy of the new head trained in the base's dtype: under fp16 GradScaler
    refused to unscale its gradients (the crash on GPUs), under bf16 its weights and AdamW states lost small updates.
    bf16 stands in for fp16 here (fp16 needs a GPU); the head must train in fp32 either way.

    Seen failing before the fix: the score head's weight was torch.bfloat16."""
    from transformers import AutoModelForSequenceClassification

    from kubetune.trainer.model import apply_method

    job = finetunejob("cls", {"task": "sequence-classification", "baseModel": {"uri": f"file://{tiny_model}"},
                              "dataset": {"train": "file:///nowhere.jsonl"},
                              "method": {"type": "lora", "lora": {"r": 4, "alpha": 8}},
                              "hyperparameters": {"maxSteps": 1, "precision": "bf16"},
                              "output": {"uri": "file:///nowhere/"}, "resources": {"gpusPerNode": 0}})
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=3, dtype=torch.bfloat16)
    model = apply_method(job, base)
    trained = {k: p.dtype for k, p in model.named_parameters() if p.requires_grad}
    assert any("score" in k for k in trained) and set(trained.values()) == {torch.float32}, trained
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert frozen == {torch.bfloat16}  # the base stays in half precision


@pytest.mark.parametrize("choice", ["every-2-layers", "offload"])
def test_gradient_checkpointing_choices_keep_the_loss_and_gradients(tiny_model, monkeypatch, choice):
    """hyperparameters.gradientCheckpointingEveryLayers / gradientCheckpointingOffload (issue 22): the loss and the
    gradients are those of training without checkpointing; every N layers recomputes exactly the first and every
    Nth block in the backward (a recomputed block runs its forward twice); offload puts each checkpointed block's
    saved input through torch's save_on_cpu. Without the fields the blocks kept the on/off behaviour (seen failing
    before: both blocks recomputed, and save_on_cpu was never entered)."""
    import transformers.modeling_utils as mu

    from kubetune.trainer import data as d
    from kubetune.trainer.causal_lm import loss_sum
    from kubetune.trainer.model import checkpointing

    hp = {"gradientCheckpointing": True}
    hp.update({"gradientCheckpointingEveryLayers": 2} if choice == "every-2-layers" else
              {"gradientCheckpointingOffload": True})
    job = finetunejob("ckpt", {"baseModel": {"uri": f"file://{tiny_model}"}, "dataset": {"train": "file:///x.jsonl"},
                               "hyperparameters": {"maxSteps": 1, **hp}, "output": {"uri": "file:///nowhere/"},
                               "resources": {"gpusPerNode": 0}})
    model = load(tiny_model, "lora")
    vocab = model.get_output_embeddings().weight.shape[0]
    batch = d.collate(examples([20, 9, 14], vocab), 0)
    loss_sum(model, batch, CPU, None).backward()
    want = grads(model)
    model.zero_grad(set_to_none=True)

    offloads = []
    real = mu.save_on_cpu
    monkeypatch.setattr(mu, "save_on_cpu", lambda *a, **k: offloads.append(k) or real(*a, **k))
    checkpointing(model, job)
    blocks = model.get_base_model().model.layers
    forwards = [0] * len(blocks)
    for i, block in enumerate(blocks):
        block.input_layernorm.register_forward_pre_hook(lambda *_, i=i: forwards.__setitem__(i, forwards[i] + 1))
    model.train()
    loss_sum(model, batch, CPU, None).backward()
    assert_close_grads(grads(model), want)
    if choice == "every-2-layers":
        assert [b.gradient_checkpointing for b in blocks] == [True, False]
        assert forwards == [2, 1]  # block 0 recomputed in the backward, block 1 kept its activations
        assert not offloads
    else:
        assert forwards == [2, 2]
        assert len(offloads) == 2  # each checkpointed block's forward saved its input through save_on_cpu


def test_liger_is_chosen_on_cuda_where_it_is_installed(monkeypatch):
    """linear_ce.kernel: Liger's fused linear cross-entropy on CUDA with liger-kernel installed, the pure-torch
    chunked one otherwise (CPUs, or no liger-kernel)."""
    import importlib.util

    from kubetune.trainer import linear_ce

    real = importlib.util.find_spec
    for installed in (True, False):
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, installed=installed: (
            object() if installed else None) if name == "liger_kernel" else real(name, *a))
        assert linear_ce.kernel(torch.device("cuda", 0)) == ("liger" if installed else "torch")
        assert linear_ce.kernel(CPU) == "torch"


def test_the_liger_kernel_gets_the_targets_and_sums_like_the_torch_one(tiny_model, monkeypatch):
    """Where Liger is chosen, loss_sum hands it the positions that have a target, their labels, the head's weights
    and a summed reduction: a stand-in with Liger's signature (computing in torch) gives the chunked loss and
    gradients."""
    import sys
    import types

    import torch.nn.functional as F

    from kubetune.trainer import data as d
    from kubetune.trainer import linear_ce
    from kubetune.trainer.causal_lm import loss_sum

    calls = []

    def liger_fused_linear_cross_entropy(input, weight, target, bias=None, ce_weight=None, ignore_index=-100,
                                         lse_square_scale=0.0, label_smoothing=0.0, reduction="mean", **kwargs):
        calls.append({"rows": input.shape[0], "ignore_index": ignore_index, "reduction": reduction,
                      "ignored": int((target == ignore_index).sum())})
        return F.cross_entropy(F.linear(input, weight, bias).float(), target, ignore_index=ignore_index,
                               reduction=reduction)

    functional = types.ModuleType("liger_kernel.transformers.functional")
    functional.liger_fused_linear_cross_entropy = liger_fused_linear_cross_entropy
    for name in ("liger_kernel", "liger_kernel.transformers"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers.functional", functional)

    model = load(tiny_model, "full")
    vocab = model.get_output_embeddings().weight.shape[0]
    skip = linear_ce.HeadSkip.of(model)
    batch = d.collate(examples([20, 9, 14], vocab), 0)
    loss_sum(model, batch, CPU, None, skip).backward()
    want, want_calls = grads(model), list(calls)
    model.zero_grad(set_to_none=True)
    monkeypatch.setattr(linear_ce, "kernel", lambda device: "liger")
    got = loss_sum(model, batch, CPU, None, skip)
    got.backward()
    assert not want_calls and calls == [{"rows": 17 + 6 + 11, "ignore_index": -100, "reduction": "sum", "ignored": 0}]
    assert_close_grads(grads(model), want)
