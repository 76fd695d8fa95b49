"""Masking, EOS, truncation, packing and loss normalisation on inputs small enough to check by hand."""

import pytest
import torch

from kubetune.api.spec import Dataset
from kubetune.trainer import data as d
from kubetune.trainer.errors import BadInput


@pytest.fixture(scope="module")
def tok(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def ds(**kw) -> Dataset:
    return Dataset.model_validate({"train": "file:///x.jsonl", **kw})


def rec(**fields) -> d.Record:
    return d.Record("train.jsonl line 7", fields)


def test_chat_trains_only_assistant_turns_and_their_end_token(tok):
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "please say red now"},
            {"role": "assistant", "content": "red red"}, {"role": "user", "content": "please say dog now"},
            {"role": "assistant", "content": "dog dog"}]
    ids, labels = d._chat(rec(messages=msgs), tok, ds())
    trained = tok.decode([t for t, l in zip(ids, labels) if l != d.IGNORE])
    assert trained == "red red<|end|>\ndog dog<|end|>\n"
    masked = tok.decode([t for t, l in zip(ids, labels) if l == d.IGNORE])
    assert "please say red now" in masked and "be brief" in masked and "red red" not in masked


def test_prompt_completion_masks_prompt_and_keeps_eos(tok):
    ids, labels = d._prompt_completion(rec(prompt="please say cat now", completion=" cat cat"), tok, ds())
    assert ids[-1] == tok.eos_token_id and labels[-1] == tok.eos_token_id
    assert tok.decode([t for t, l in zip(ids, labels) if l != d.IGNORE]) == " cat cat<eos>"
    ids2, labels2 = d._prompt_completion(rec(prompt="p", completion="c"), tok, ds(maskPrompt=False))
    assert labels2 == ids2


def test_long_sequences_truncate_or_drop_with_counts(tok):
    long = [rec(text="one two three " * 40), rec(text="red")]
    stats = d.Stats()
    out = d.encode(long, "text", tok, ds(maxSeqLength=16), stats)
    assert [len(e["input_ids"]) <= 16 for e in out] == [True, True] and stats.truncated == 1
    stats = d.Stats()
    out = d.encode(long, "text", tok, ds(maxSeqLength=16, longSequences="drop"), stats)
    assert len(out) == 1 and stats.dropped_too_long == 1


def test_bad_records_name_the_file_and_line(tok, tmp_path):
    with pytest.raises(BadInput, match=r"train.jsonl line 7: message 1 has unknown role 'bot'; allowed: system"):
        d._chat(rec(messages=[{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]), tok, ds())
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "broken\n')
    with pytest.raises(BadInput, match=r"train.jsonl line 2: not valid JSON"):
        d.read_records(path, "auto", "s3://b/train.jsonl")
    with pytest.raises(BadInput, match="missing column 'completion'"):
        d._prompt_completion(rec(prompt="x"), tok, ds())


def test_formats_and_gzip(tmp_path):
    import gzip

    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(b'{"text": "one"}\n{"text": "two"}\n'))
    (tmp_path / "b.csv").write_text("text,label\nthree,x\n")
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"text": ["four"]}), tmp_path / "c.parquet")
    records = d.read_records(tmp_path, "auto", "s3://b/data/")
    assert [r.fields["text"] for r in records] == ["one", "two", "three", "four"]
    assert records[2].source == "s3://b/data/b.csv line 2"


def test_packing_resets_positions_and_never_predicts_across_examples():
    examples = [{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}, {"input_ids": [4, 5], "labels": [4, 5]},
                {"input_ids": [6, 7, 8, 9], "labels": [6, 7, 8, 9]}]
    packed = d.pack(examples, max_len=6)
    assert [p["input_ids"] for p in packed] == [[1, 2, 3, 4, 5], [6, 7, 8, 9]]
    assert packed[0]["position_ids"] == [0, 1, 2, 0, 1]
    assert packed[0]["labels"] == [d.IGNORE, 2, 3, d.IGNORE, 5]


def test_packed_logits_equal_separate_logits(tiny_model):
    """No attention leaks across packed examples: each example's logits match running it alone."""
    from transformers import AutoModelForCausalLM

    from kubetune.trainer.loop import forward_logits

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    a, b = [5, 9, 14, 20, 7], [30, 11, 8]
    packed = d.collate(d.pack([{"input_ids": a, "labels": a}, {"input_ids": b, "labels": b}], 16), 0)
    with torch.no_grad():
        together = forward_logits(model, packed, torch.device("cpu"), None)[0]
        alone_b = model(input_ids=torch.tensor([b])).logits[0]
    assert torch.allclose(together[len(a):], alone_b, atol=1e-5)


def test_accumulated_loss_equals_one_big_batch(tiny_model):
    """Sum of token losses over micro-batches / total target tokens == the loss of the whole batch at once,
    even when micro-batches hold very different numbers of target tokens."""
    from transformers import AutoModelForCausalLM

    from kubetune.trainer.loop import token_losses

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    rows = [{"input_ids": list(range(3, 3 + n)), "labels": list(range(3, 3 + n))} for n in (4, 20, 6, 9)]
    cpu = torch.device("cpu")
    whole_sum, whole_n, _ = token_losses(model, d.collate(rows, 0), cpu, None)
    parts = [token_losses(model, d.collate(rows[i:i + 2], 0), cpu, None) for i in (0, 2)]
    total_n = sum(int(n.sum()) for _, n, _ in parts)
    accumulated = sum(float(s.sum()) for s, _, _ in parts) / total_n
    assert total_n == int(whole_n.sum())
    assert accumulated == pytest.approx(float(whole_sum.sum()) / int(whole_n.sum()), rel=1e-5)


def test_data_order_is_a_function_of_the_step():
    from kubetune.trainer.loop import rows_of_step

    steps = [rows_of_step(s, 4, 10, seed=3) for s in range(5)]  # two epochs of 10 rows
    flat = [i for s in steps for i in s]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    assert flat[:10] != flat[10:20]  # each epoch reshuffles
    assert rows_of_step(3, 4, 10, seed=3) == steps[3]
