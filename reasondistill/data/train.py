"""Training data: the records a run trains (and evaluates) on, and the order it reads them in.

A record is a dict with ``question``, and where the data has them ``answer`` (the final answer
the graders check) and ``solution`` (the worked completion sft/kd/gkd imitate). ``dataset`` is
the embedded task's spec (``arith`` or ``arith:size=...,style=...``, see
``tasks.arith.DatasetSpec``), a benchmark name, or a JSONL path read with the config's
``question_field`` / ``answer_field`` / ``solution_field``.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch


def load_records(dataset: str, cfg, split: str = "train") -> list[dict]:
    """The examples of ``dataset`` as dicts with question / answer / solution (``split`` chooses
    the embedded task's train or test problems; files and benchmarks are read whole)."""
    if dataset == "arith" or dataset.startswith("arith:"):
        from ..tasks.arith import DatasetSpec

        return DatasetSpec.parse(dataset).records(seed=cfg.seed, split=split)
    from . import benchmarks, hub

    if dataset in benchmarks.BENCHMARKS or (dataset in hub.DATA and hub.DATA[dataset].task == "math"):
        return benchmarks.load_benchmark(dataset, cfg.data_dir)  # a local file, else the Hub
    path = Path(dataset)
    if not path.exists():
        raise FileNotFoundError(f"dataset {dataset!r} is neither 'arith[:key=value,...]', a benchmark name "
                                f"({', '.join(benchmarks.BENCHMARKS)}), nor an existing JSONL file")
    extras = {"_completion": cfg.solution_field} if cfg.solution_field else ()
    records = benchmarks.load_jsonl(path, cfg.question_field, cfg.answer_field, extras=extras)
    for r in records:  # the named solution field wins over a worked solution found in the answer field
        if r.get("_completion") is not None:
            r["solution"] = str(r.pop("_completion"))
        r.pop("_completion", None)
    return records


def train_and_eval_records(cfg) -> tuple[list[dict], list[dict]]:
    """(training records, evaluation records) for ``cfg``. ``eval_dataset=split`` holds out
    ``eval_size`` training records (a seeded random choice) that are then never trained on;
    another value is loaded like ``dataset`` (an ``arith:...`` spec from the task's test split,
    so it never overlaps the training problems); empty: no evaluation set."""
    records = load_records(cfg.dataset, cfg)
    if not cfg.eval_dataset:
        return records, []
    if cfg.eval_dataset == "split":
        if cfg.eval_size >= len(records):
            raise ValueError(f"eval_size={cfg.eval_size} leaves no training data out of {len(records)} records")
        held = set(random.Random(cfg.seed).sample(range(len(records)), cfg.eval_size))
        return ([r for i, r in enumerate(records) if i not in held],
                [r for i, r in enumerate(records) if i in held])
    return records, load_records(cfg.eval_dataset, cfg, split="test")[: cfg.eval_size or None]


def check_required_fields(need, records: list[dict], what: str = "training") -> None:
    """Fail before the first step, naming the record, if a field the method reads is missing."""
    for f in need:
        bad = [r for r in records if r.get(f) in (None, "")]
        if bad:
            raise ValueError(f"{len(bad)} of {len(records)} {what} records have no {f!r} (first: id "
                             f"{bad[0].get('id')!r}, which has {sorted(k for k, v in bad[0].items() if v not in (None, ''))})"
                             f"; set the right field (e.g. solution_field=..., answer_field=...) or fix the data")


class DataStream:
    """Deterministic example order: epoch e is a permutation seeded by (seed, e).

    The examples of batch s are the global indices [s*G, (s+1)*G) of the endless
    concatenation of epochs, G = global batch; process r takes micro-batch k as a fixed slice.
    The position is therefore the batch number itself: resuming at batch s needs no replay.
    """

    def __init__(self, records: list[dict], seed: int, per_device: int, accum: int, world: int, rank: int):
        if not records:
            raise ValueError("the training dataset is empty")
        self.records, self.seed = records, seed
        self.per_device, self.accum, self.world, self.rank = per_device, accum, world, rank
        self._epoch, self._order = -1, []

    def _perm(self, epoch: int) -> list[int]:
        if epoch != self._epoch:  # only the current epoch's order is kept
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._epoch, self._order = epoch, torch.randperm(len(self.records), generator=g).tolist()
        return self._order

    def _at(self, i: int) -> dict:
        n = len(self.records)
        return self.records[self._perm(i // n)[i % n]]

    def step_batches(self, step: int) -> list[list[dict]]:
        g = self.per_device * self.accum * self.world
        base = step * g
        out = []
        for k in range(self.accum):
            start = base + (k * self.world + self.rank) * self.per_device
            out.append([self._at(i) for i in range(start, start + self.per_device)])
        return out
