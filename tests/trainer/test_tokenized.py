"""Tokenized data in memory maps (tokenized.py, rows.py) against the list code it replaces (data.py and the
old loop.load_data / rows_of_step, restated here): the same ids, labels, sources, Stats, rows and errors;
builds cached and shared; the parallel path equal to the serial one; readers that do not grow with the data."""
import gzip
import json
import random
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kubetune.api.spec import Storage
from kubetune.trainer import data as d
from kubetune.trainer import rows, tokenized
from kubetune.trainer.errors import BadInput
from kubetune.trainer.storage import Store
from tests.trainer.conftest import chat_rows, finetunejob, write_jsonl

LONG = " ".join(["the quick brown fox jumps over the lazy dog"] * 6)


@pytest.fixture(scope="module")
def tok(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def job(tiny_model, **dataset):
    return finetunejob("t", {"baseModel": {"uri": f"file://{tiny_model}"}, "output": {"uri": "file:///tmp/out"},
                             "hyperparameters": {"seed": 7, "epochs": 1}, "dataset": dataset})


def mixed_chat(n: int, seed: int = 0) -> list[dict]:
    """Chat rows, some long enough to be truncated, some whose answer truncation cuts off entirely."""
    out = chat_rows(n, seed)
    for i in range(0, n, 7):
        out[i] = {"messages": [{"role": "user", "content": "please say it"}, {"role": "assistant", "content": LONG}]}
    for i in range(3, n, 11):
        out[i] = {"messages": [{"role": "user", "content": LONG}, {"role": "assistant", "content": "red"}]}
    return out


def old_encoded(store, uri, what, tok, ds, stats):
    records = d.read_records(store.fetch(uri, what), ds.format, uri)
    if not records:
        raise BadInput(f"{what} {uri}: no records")
    return d.encode(records, d.detect_schema(records, ds), tok, ds, stats)


def old_load_data(job, store, tok, stats):
    """loop.load_data before rows.py, for causal LMs."""
    ds = job.spec.dataset
    train = old_encoded(store, ds.train, "dataset.train", tok, ds, stats)
    if ds.max_samples:
        random.Random(job.spec.hyperparameters.seed).shuffle(train)
        train = train[: ds.max_samples]
    val = old_encoded(store, ds.validation, "dataset.validation", tok, ds, stats) if ds.validation else []
    if ds.validation_split > 0:
        train, val = d.split(train, ds.validation_split, job.spec.hyperparameters.seed)
    test = old_encoded(store, ds.test, "dataset.test", tok, ds, stats) if ds.test else []
    return (d.pack(train, ds.max_seq_length) if ds.packing else train), val, test


def old_rows_of_step(step: int, batch: int, n: int, seed: int) -> list[int]:
    out, perms = [], {}
    for g in range(step * batch, (step + 1) * batch):
        epoch, pos = divmod(g, n)
        if epoch not in perms:
            perm = list(range(n))
            random.Random(seed * 100003 + epoch).shuffle(perm)
            perms[epoch] = perm
        out.append(perms[epoch][pos])
    return out


def store_for(tmp_path: Path) -> Store:
    return Store(Storage(), tmp_path / "store-cache")


def files(tmp_path: Path, kind: str) -> str:
    """The same kind of data in each format the reader takes."""
    base = tmp_path / kind
    if kind == "chat.jsonl":
        return write_jsonl(base, mixed_chat(60))
    if kind == "chat.jsonl.gz":
        base.parent.mkdir(parents=True, exist_ok=True)
        base.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in mixed_chat(40)).encode()))
        return f"file://{base}"
    if kind == "dir/":
        write_jsonl(base / "a.jsonl", mixed_chat(20, 1))
        write_jsonl(base / "b" / "c.jsonl", mixed_chat(25, 2))
        return f"file://{base}/"
    if kind == "pc.csv":
        base.parent.mkdir(parents=True, exist_ok=True)
        base.write_text("prompt,completion\n" + "".join(f'"{q}\nplease",{a}\n' for q, a in
                                                         [(r["messages"][0]["content"], r["messages"][1]["content"])
                                                          for r in mixed_chat(30)]))
        return f"file://{base}"
    if kind == "text.parquet":
        base.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"text": [r["messages"][1]["content"] for r in mixed_chat(30)]}), base)
        return f"file://{base}"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["chat.jsonl", "chat.jsonl.gz", "dir/", "pc.csv", "text.parquet"])
@pytest.mark.parametrize("settings", [{"maxSeqLength": 24}, {"maxSeqLength": 24, "longSequences": "drop"},
                                      {"maskPrompt": False, "maxSeqLength": 40}])
def test_same_ids_labels_sources_and_stats_as_encode(tok, tmp_path, kind, settings):
    uri = files(tmp_path, kind)
    ds = job(tmp_path, train=uri, **settings).spec.dataset
    store, want_stats = store_for(tmp_path), d.Stats()
    want = old_encoded(store, uri, "dataset.train", tok, ds, want_stats)
    got = tokenized.prepare(store, uri, "dataset.train", tok, ds, tmp_path / "cache", workers=1)
    assert [got.example(i) for i in range(len(got))] == want
    assert got.stats == want_stats
    assert (want_stats.truncated or want_stats.dropped_too_long) and want_stats.examples > 10


def test_parallel_chunks_equal_serial(tok, tmp_path):
    uri = write_jsonl(tmp_path / "t.jsonl", mixed_chat(300))
    (tmp_path / "t.jsonl").write_text((tmp_path / "t.jsonl").read_text().replace("\n", "\r\n", 50) + "\n\n")
    ds = job(tmp_path, train=uri, maxSeqLength=24).spec.dataset
    serial = tokenized.prepare(store_for(tmp_path), uri, "t", tok, ds, tmp_path / "a", workers=1)
    parallel = tokenized.prepare(store_for(tmp_path), uri, "t", tok, ds, tmp_path / "b", workers=2, chunk_bytes=999)
    assert parallel.meta["workers"] == 2
    for name in tokenized.FILES:
        assert (serial.root / name).read_bytes() == (parallel.root / name).read_bytes(), name
    assert [parallel.source(i) for i in (0, len(parallel) - 1)] == [f"{uri} line 1", f"{uri} line 300"]


def test_load_data_rows_equal_the_list_code(tiny_model, tok, tmp_path):
    store = store_for(tmp_path)
    for spec in ({"train": write_jsonl(tmp_path / "t.jsonl", mixed_chat(120)), "maxSamples": 90,
                  "validationSplit": 0.2, "maxSeqLength": 24, "packing": True,
                  "test": write_jsonl(tmp_path / "test.jsonl", mixed_chat(15, 3))},
                 {"train": f"file://{tmp_path}/t.jsonl", "maxSeqLength": 64,
                  "validation": write_jsonl(tmp_path / "v.jsonl", mixed_chat(9, 4))}):
        j = job(tiny_model, **spec)
        want_stats, got_stats = d.Stats(), d.Stats()
        want = old_load_data(j, store, tok, want_stats)
        got = rows.load_data(j, store, tok, got_stats, cache_dir=tmp_path / "cache", workers=1)
        assert got_stats == want_stats
        for w, g in zip(want, got):
            assert len(g) == len(w) and [g[i] for i in range(len(g))] == w
        assert d.length_order(got[1]) == d.length_order(want[1])
        assert [got[1][:3][i] for i in range(3)] == want[1][:3]


def test_rows_of_step_equal_the_old_sampler():
    for n, batch in ((7, 3), (50, 8), (1000, 32)):
        for step in (0, 1, 2, 5, 31, 200):
            assert rows.rows_of_step(step, batch, n, 42) == old_rows_of_step(step, batch, n, 42)


def test_cache_hit_does_not_tokenize_again(tok, tmp_path, monkeypatch):
    uri = write_jsonl(tmp_path / "t.jsonl", mixed_chat(40))
    ds = job(tmp_path, train=uri).spec.dataset
    events = []
    first = tokenized.prepare(store_for(tmp_path), uri, "t", tok, ds, tmp_path / "cache", workers=1,
                              on_event=lambda kind, **_: events.append(kind))

    def no_encoding(*args, **kwargs):
        raise AssertionError("encoded again")

    monkeypatch.setattr(d, "encode", no_encoding)
    again = tokenized.prepare(store_for(tmp_path), uri, "t", tok, ds, tmp_path / "cache", workers=1,
                              on_event=lambda kind, **_: events.append(kind))
    assert events == ["build", "hit"] and again.root == first.root and len(again) == 40


def test_cache_key_follows_data_tokenizer_and_settings(tiny_model, tok, tmp_path):
    from transformers import AutoTokenizer

    path = tmp_path / "t.jsonl"
    uri = write_jsonl(path, mixed_chat(10))
    ds = job(tmp_path, train=uri).spec.dataset
    store = store_for(tmp_path)

    def key(dataset=ds, tokenizer=tok):
        return tokenized.cache_key(uri, tokenized.data_fingerprint(store, uri, "t"),
                                   tokenized.tokenizer_fingerprint(tokenizer), dataset)

    base = key()
    other_tok = AutoTokenizer.from_pretrained(tiny_model)
    assert key(tokenizer=other_tok) == base  # the same tokenizer loaded again
    other_tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    changed = {"template": key(tokenizer=other_tok)}
    for name, patch in {"maxSeqLength": {"maxSeqLength": 512}, "maskPrompt": {"maskPrompt": False},
                        "longSequences": {"longSequences": "drop"}, "schema": {"schema": "chat"},
                        "columns": {"columns": {"messages": "conversation"}}}.items():
        changed[name] = key(job(tmp_path, train=uri, **patch).spec.dataset)
    write_jsonl(path, mixed_chat(10, seed=1))
    changed["content"] = key()
    assert base not in changed.values() and len(set(changed.values())) == len(changed)
    for same in ({"packing": True}, {"validationSplit": 0.1}, {"maxSamples": 3}):  # they only choose rows
        write_jsonl(path, mixed_chat(10))
        assert key(job(tmp_path, train=uri, **same).spec.dataset) == base


CHAT_OK = json.dumps(chat_rows(1)[0])
BAD = {
    "not json after an unknown role": ("t.jsonl", [CHAT_OK, '{"messages": [{"role": "bot", "content": "x"}]}'] +
                                       [CHAT_OK] * 40 + ['{"messages": ['] + [CHAT_OK] * 5),
    "not an object": ("t.jsonl", [CHAT_OK] * 30 + ["[1, 2]"]),
    "no assistant": ("t.jsonl", [CHAT_OK] * 30 + ['{"messages": [{"role": "user", "content": "hi"}]}']),
    "schema undetectable": ("t.jsonl", ['{"question": "q"}', CHAT_OK]),
    "not causal": ("t.jsonl", ['{"text": "a", "label": "x"}']),
    "empty": ("t.jsonl", ["", "  "]),
    "csv ragged": ("t.csv", ["prompt,completion", "a,b", '"two\nlines",ok', "a,b,c"]),
    "unknown extension": ("t.txt", [CHAT_OK]),
}


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize("workers", [1, 2])
def test_bad_data_gives_the_serial_error(tok, tmp_path, case, workers):
    name, lines = BAD[case]
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines))
    uri = f"file://{path}"
    ds = job(tmp_path, train=uri).spec.dataset
    with pytest.raises(BadInput) as want:
        old_encoded(store_for(tmp_path), uri, "dataset.train", tok, ds, d.Stats())
    with pytest.raises(BadInput) as got:
        tokenized.prepare(store_for(tmp_path), uri, "dataset.train", tok, ds, tmp_path / "cache", workers=workers,
                          chunk_bytes=200)
    assert str(got.value) == str(want.value)
    assert not list((tmp_path / "cache" / "tokenized").glob("*/")), "a failed build leaves nothing behind"


def test_share_uri_lets_a_new_pod_skip_tokenizing(tok, tmp_path):
    uri = write_jsonl(tmp_path / "t.jsonl", mixed_chat(30))
    ds = job(tmp_path, train=uri).spec.dataset
    share = tmp_path / "out" / "run" / "tokenized"
    (share / "unrelated.txt").parent.mkdir(parents=True)
    (share / "unrelated.txt").write_text("not ours")
    events = []
    first = tokenized.prepare(store_for(tmp_path), uri, "t", tok, ds, tmp_path / "pod1", share_uri=f"file://{share}",
                              workers=1, on_event=lambda kind, **_: events.append(kind))
    second = tokenized.prepare(store_for(tmp_path), uri, "t", tok, ds, tmp_path / "pod2",
                               share_uri=f"file://{share}", workers=1, on_event=lambda kind, **_: events.append(kind))
    assert events == ["build", "download"]
    assert [second.example(i) for i in range(len(second))] == [first.example(i) for i in range(len(first))]
    assert (share / "unrelated.txt").read_text() == "not ours"
    assert sorted(p.name for p in (share / first.root.name).iterdir()) == sorted((*tokenized.FILES, "meta.json"))


def test_reader_memory_does_not_grow_with_the_data(tiny_model, tok, tmp_path):
    """Opening the data and picking rows allocates a few bytes of index per row, not the examples (the list
    code holds ~1 KB of Python objects per example)."""
    peaks = {}
    for n in (200, 4000):
        uri = write_jsonl(tmp_path / f"{n}.jsonl", chat_rows(n))
        j = job(tiny_model, train=uri, validationSplit=0.1)
        rows.load_data(j, store_for(tmp_path), tok, d.Stats(), cache_dir=tmp_path / "cache")  # build
        tracemalloc.start()
        train, val, _ = rows.load_data(j, store_for(tmp_path), tok, d.Stats(), cache_dir=tmp_path / "cache")
        for step in range(20):
            [train[i] for i in rows.rows_of_step(step, 8, len(train), 7)]
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert isinstance(train.data.tokens, np.memmap)
    assert peaks[4000] - peaks[200] < 3800 * 64, peaks  # < 64 bytes per extra row


def test_ranks_of_a_node_tokenize_once(tok, tmp_path):
    """Ranks that start together on one node: one builds under the lock, the others wait and read its build."""
    import multiprocessing

    uri = write_jsonl(tmp_path / "t.jsonl", mixed_chat(200))
    ds = job(tmp_path, train=uri).spec.dataset
    ctx = multiprocessing.get_context("fork")
    done = ctx.Queue()

    def rank():
        events = []
        data = tokenized.prepare(store_for(tmp_path), uri, "t", tok, ds, tmp_path / "cache", workers=1,
                                 on_event=lambda kind, **_: events.append(kind))
        done.put((events, len(data)))

    ranks = [ctx.Process(target=rank) for _ in range(3)]
    for p in ranks:
        p.start()
    results = sorted(done.get(timeout=120) for _ in ranks)
    for p in ranks:
        p.join(timeout=30)
    assert [events for events, _ in results] == [["build"], ["hit"], ["hit"]]
    assert len({n for _, n in results}) == 1
