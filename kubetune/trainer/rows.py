"""Training, validation and test rows over memory-mapped tokenized data, and the rows of each step in O(batch).

A drop-in for loop.py's `load_data` and `rows_of_step` with the same results:

    from kubetune.trainer import rows as data_rows
    train_rows, val, test = data_rows.load_data(job, store, tok, stats, labels,
                                                share_uri=join(run_uri, "tokenized"))
    ...
    rows = data_rows.rows_of_step(step, hp.batch_size, len(train_rows), hp.seed)[dist.rank:: dist.world]

`load_data` returns sequences that behave like today's lists of example dicts (len, [i], [a:b], iteration;
`data.length_order` reads their lengths without building the rows), in the same order with the same contents:
maxSamples, the validation split and packing are applied to index arrays with the same shuffles as before. An
example is read from the memory map only when it is indexed. Sequence classification keeps the in-memory path
(its examples carry text and labels, and its datasets are small). `rows_of_step` returns exactly what the old
one returns; it computes each epoch's permutation once (kept for two epochs) instead of once per step.
"""
import array
import functools
import random
from collections.abc import Sequence

import numpy as np

from kubetune.api import FineTuneJob
from kubetune.trainer import data as d
from kubetune.trainer.errors import BadInput
from kubetune.trainer.storage import Store
from kubetune.trainer.tokenized import Tokenized, prepare


class Examples(Sequence):
    """Examples of a tokenized file, picked by an index array: what data.encode returned, lazily."""

    def __init__(self, data: Tokenized, index: np.ndarray):
        self.data, self.index = data, index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return Examples(self.data, self.index[i])
        return self.data.example(int(self.index[i]))

    @property
    def lengths(self) -> np.ndarray:
        return self.data.lengths(self.index)


class Packed(Sequence):
    """Packed rows (data.pack): row r joins the examples index[bounds[r]:bounds[r + 1]]."""

    def __init__(self, data: Tokenized, index: np.ndarray, bounds: np.ndarray):
        self.data, self.index, self.bounds = data, index, bounds

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def __getitem__(self, r):
        if isinstance(r, slice):
            raise TypeError("packed training rows are indexed one by one")
        r = r + len(self) if r < 0 else r
        ids, labels, pos = [], [], []
        for i in self.index[self.bounds[r]: self.bounds[r + 1]]:
            x, y = self.data.ids_labels(int(i))
            y[:1] = d.IGNORE  # the first label of an example is never predicted from the previous example
            ids.append(x)
            labels.append(y)
            pos.append(np.arange(len(x)))
        return {"input_ids": np.concatenate(ids).tolist(), "labels": np.concatenate(labels).tolist(),
                "position_ids": np.concatenate(pos).tolist()}


def pack_bounds(lengths: np.ndarray, max_len: int) -> np.ndarray:
    """data.pack's greedy packing on lengths alone: where each packed row starts, plus the end."""
    bounds, used = [0], 0
    for k, n in enumerate(lengths.tolist()):
        if used and used + n > max_len:
            bounds.append(k)
            used = 0
        used += n
    bounds.append(len(lengths))
    return np.array(bounds, dtype=np.int64)


def shuffled(n: int, seed: int) -> np.ndarray:
    """The permutation random.Random(seed).shuffle applies to any list of n items (what data.split and
    maxSamples use), so the rows are the ones the list code picked."""
    order = array.array("q", range(n))  # 8 bytes an item, where a list of ints costs ~36
    random.Random(seed).shuffle(order)
    return np.frombuffer(order, dtype=np.int64)


def split(index: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """data.split on an index array."""
    n_val = int(round(len(index) * fraction))
    held = np.zeros(len(index), dtype=bool)
    held[shuffled(len(index), seed)[:n_val]] = True
    return index[~held], index[held]


def _take(source, index: np.ndarray):
    return Examples(source, index) if isinstance(source, Tokenized) else [source[i] for i in index.tolist()]


def load_data(job: FineTuneJob, store: Store, tok, stats: d.Stats, labels=None, *, cache_dir=None,
              share_uri: str | None = None, workers: int | None = None, on_event=None) -> tuple[Sequence, Sequence,
                                                                                               Sequence]:
    """(train rows, validation examples, test examples), as loop.load_data returns them; `stats` gets the same
    counts. `cache_dir`: where builds are kept (default: the store's, i.e. settings.cache_dir). `share_uri`: where builds are shared with
    later pods of the run (e.g. join(run_uri, "tokenized")); None keeps them local. `workers`: tokenizing
    processes (default: the CPUs this pod may use)."""
    ds, seed = job.spec.dataset, job.spec.hyperparameters.seed
    cache_dir = cache_dir or store.cache_dir

    def encoded(uri: str, what: str):
        too_long, no_target = stats.dropped_too_long, stats.dropped_no_target
        if labels is not None:
            from kubetune.trainer import classify

            records = d.read_records(store.fetch(uri, what), ds.format, uri)
            if not records:
                raise BadInput(f"{what} {uri}: no records")
            examples = classify.encode(records, tok, ds, labels, stats)
        else:
            examples = prepare(store, uri, what, tok, ds, cache_dir, share_uri=share_uri, workers=workers,
                               on_event=on_event)
            for k, v in vars(examples.stats).items():
                if k != "notes":
                    setattr(stats, k, getattr(stats, k) + v)
        if not len(examples):  # counts of this file only: the stats add up every split
            raise BadInput(f"{what} {uri}: no usable examples after filtering ({stats.dropped_too_long - too_long} "
                           f"longer than maxSeqLength {ds.max_seq_length} with longSequences drop, "
                           f"{stats.dropped_no_target - no_target} without target tokens)")
        return examples

    train_src = encoded(ds.train, "dataset.train")
    train = np.arange(len(train_src), dtype=np.int64)
    if ds.max_samples:
        train = shuffled(len(train), seed)[: ds.max_samples]
    val = _take(val_src := encoded(ds.validation, "dataset.validation"), np.arange(len(val_src))) \
        if ds.validation else []
    if ds.validation_split > 0:
        train, held = split(train, ds.validation_split, seed)
        val = _take(train_src, held)
    test = _take(test_src := encoded(ds.test, "dataset.test"), np.arange(len(test_src))) if ds.test else []
    if not len(train):
        raise BadInput(f"dataset.validationSplit {ds.validation_split}: leaves no training examples of "
                       f"{len(val)}")
    if ds.packing and isinstance(train_src, Tokenized):
        return Packed(train_src, train, pack_bounds(train_src.lengths(train), ds.max_seq_length)), val, test
    rows = _take(train_src, train)
    return (d.pack(rows, ds.max_seq_length) if ds.packing else rows), val, test


@functools.lru_cache(maxsize=2)  # a step straddles at most two epochs
def _epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return shuffled(n, seed * 100003 + epoch)


def rows_of_step(step: int, batch: int, n: int, seed: int) -> list[int]:
    """Indices of the training rows optimizer step `step` consumes (epochs reshuffle with seed + epoch): a pure
    function of its arguments, equal to loop.rows_of_step, in O(batch) except once per epoch (O(rows))."""
    out = []
    for g in range(step * batch, (step + 1) * batch):
        epoch, pos = divmod(g, n)
        out.append(int(_epoch_order(n, seed, epoch)[pos]))
    return out
