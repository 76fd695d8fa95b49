"""Speed must not change the math (issue 12): our trainer and the plain Hugging Face Trainer, given the same tiny
random Llama, the same token rows in the same order and the same optimizer settings, log the same training loss at
every one of the first 20 steps.

What makes the two comparable (each a setting both sides share, not a tweak of ours):
- one step = 8 rows as 2 micro-batches of 4 (HF: per-device batch 4, gradient accumulation 2); both normalise the
  step's loss by the target tokens of the whole step (HF: `num_items_in_batch`), so rows of unequal length weigh the
  same on both sides;
- AdamW (torch's, betas 0.9/0.999, eps 1e-8) with weight decay 0.01, on 2-D weights only (the LoRA case trains
  nothing else; the full case uses no decay: HF's rule for which 1-D weights decay is by module type, ours by
  rank), gradient clipping at norm 1.0, transformers' cosine schedule with 2 warm-up steps;
- no dropout anywhere (the model has none; LoRA dropout 0, our default since issue 22: the spec leaves it out), fp32
  on the CPU, no packing;
- the rows: our encoding of the same chat records, in the order our trainer consumes them (HF's sequential
  sampler over that order); HF's batches are padded with an attention mask, ours are padding-free with our
  defaults (each micro-batch one row, attention per example) and our loss is the chunked linear + cross-entropy.
  Causal attention never looks right, so the losses are equal up to float rounding;
- LoRA weights are drawn by peft from the same seed (set just before the model is loaded, as our setup does).

Tolerance: 5e-5 absolute on losses around 5.3-5.8. Measured: at most 5.1e-6 over the 20 steps, LoRA and full (our
log rounds to 5 decimals; the rest is fp32 summation order between the two attention paths). Normalising each
micro-batch by its own tokens instead (HF without `num_items_in_batch`) moves the losses by 2.5e-3 at step 1 and
3.1e-2 by step 18, so a change in the math of that size or a tenth of it fails here.
"""
import random

import pytest
import torch

from tests.trainer.conftest import WORDS, finetunejob, settings, write_jsonl

STEPS, BATCH, MICRO, SEED = 20, 8, 4, 42
TOLERANCE = 5e-5


def chats(n: int) -> list[dict]:
    """Chats whose answers vary from 1 to 8 words: unequal target counts per row make the normalisation matter."""
    rng = random.Random(7)
    rows = []
    for _ in range(n):
        w = rng.choice(WORDS)
        rows.append({"messages": [{"role": "user", "content": f"please say {w} now"},
                                  {"role": "assistant", "content": " ".join([w] * rng.randint(1, 8))}]})
    return rows


def ours(tmp_path, model, data: str, method: dict, lr: float, weight_decay: float) -> list[float]:
    from kubetune.trainer.loop import train

    job = finetunejob("parity", {
        "baseModel": {"uri": f"file://{model}"},
        "dataset": {"train": data, "maxSeqLength": 64},
        "method": method,
        "hyperparameters": {"maxSteps": STEPS, "batchSize": BATCH, "microBatchSize": MICRO, "learningRate": lr,
                            "warmupRatio": 0.1, "scheduler": "cosine", "weightDecay": weight_decay,
                            "maxGradNorm": 1.0, "seed": SEED},
        "checkpoint": {"everyMinutes": None},
        "output": {"uri": f"file://{tmp_path}/out/"},
        "resources": {"gpusPerNode": 0},
    })
    rows = []
    train(job, "parity", settings(tmp_path), on_log=rows.append)
    losses = [r["loss"] for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in rows if r["kind"] == "train"] == list(range(1, STEPS + 1))
    return losses


def hugging_face(tmp_path, model_dir, data_path, method: dict, lr: float, weight_decay: float) -> list[float]:
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    from kubetune.api.spec import Dataset
    from kubetune.trainer import data as d
    from kubetune.trainer.rows import rows_of_step  # the loop's order (rows.py: equal to loop.rows_of_step)

    tok = AutoTokenizer.from_pretrained(model_dir)
    spec = Dataset.model_validate({"train": f"file://{data_path}", "maxSeqLength": 64})
    records = d.read_records(data_path, "auto", str(data_path))
    examples = d.encode(records, d.detect_schema(records, spec), tok, spec, d.Stats())
    order = [i for step in range(STEPS) for i in rows_of_step(step, BATCH, len(examples), SEED)]
    rows = [{"input_ids": examples[i]["input_ids"], "labels": examples[i]["labels"]} for i in order]

    def pad(batch):  # what a padding collator gives a plain Trainer user
        width = max(len(r["input_ids"]) for r in batch)
        ids = torch.full((len(batch), width), tok.pad_token_id)
        labels = torch.full((len(batch), width), d.IGNORE)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, r in enumerate(batch):
            n = len(r["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if method["type"] == "lora":
        from peft import LoraConfig, get_peft_model

        lora = method["lora"]
        model = get_peft_model(model, LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=0.0,
                                                 target_modules="all-linear", task_type="CAUSAL_LM"))

    class Recording(Trainer):
        micro_losses: list[float] = []

        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)
            self.micro_losses.append(float(loss))  # scaled for accumulation: a step's micro losses add up
            return loss

    args = TrainingArguments(output_dir=str(tmp_path / "hf"), per_device_train_batch_size=MICRO,
                             gradient_accumulation_steps=BATCH // MICRO, max_steps=STEPS, learning_rate=lr,
                             lr_scheduler_type="cosine", warmup_steps=2, weight_decay=weight_decay,
                             max_grad_norm=1.0, optim="adamw_torch", train_sampling_strategy="sequential",
                             dataloader_num_workers=0, logging_steps=1, report_to=[], save_strategy="no",
                             use_cpu=True, disable_tqdm=True, seed=SEED)
    trainer = Recording(model=model, args=args, train_dataset=rows, data_collator=pad)
    trainer.micro_losses = []
    trainer.train()
    k = BATCH // MICRO
    return [sum(trainer.micro_losses[i: i + k]) for i in range(0, len(trainer.micro_losses), k)]


@pytest.mark.parametrize("method, lr, weight_decay", [
    ({"type": "lora", "lora": {"r": 8, "alpha": 16}}, 3e-3, 0.01),  # our default dropout: HF's 0.0 below
    ({"type": "full"}, 1e-3, 0.0),
], ids=["lora", "full"])
def test_per_step_losses_match_the_plain_trainer(tmp_path, tiny_model, method, lr, weight_decay):
    data_path = tmp_path / "data/train.jsonl"
    data = write_jsonl(data_path, chats(96))
    torch.set_num_threads(2)
    theirs = hugging_face(tmp_path, tiny_model, data_path, method, lr, weight_decay)
    mine = ours(tmp_path, tiny_model, data, method, lr, weight_decay)
    assert len(theirs) == len(mine) == STEPS
    assert theirs[-1] < theirs[0] - 0.3, f"the run must learn for the comparison to mean anything: {theirs}"
    diffs = [abs(a - b) for a, b in zip(mine, theirs)]
    assert max(diffs) < TOLERANCE, "\n".join(f"step {s + 1}: ours {a:.5f} HF {b:.5f} diff {abs(a - b):.2e}"
                                            for s, (a, b) in enumerate(zip(mine, theirs)))
