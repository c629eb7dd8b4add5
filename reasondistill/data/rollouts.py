"""The offline stage of VCRD and DistiLLM-2 (validity_calibrated_distillation.md Algorithm 1,
lines 7-9, and §12: "teacher and/or student trajectories are generated once before training and
then kept fixed"): one teacher rollout y^T and one student rollout y^S per training prompt.

    reasondistill prepare --teacher embedded:teacher-flawed --student embedded:student \\
        --dataset arith:size=2000 --output runs/vcrd/rollouts.jsonl [--max-new-tokens 64] [--temperature 1.0]

The file is JSON lines. The first is a header naming the teacher and the student (name and an
identity: a hash of each folder's config and weight files), the tokenizer's identity (a hash of
its vocabulary, merges, chat template and EOS) and the generation settings. Each further line
is ``{"id", "teacher_ids", "teacher_truncated", "student_ids", "student_truncated"}``: token
ids in the student's tokenizer, not text, keyed by the record's ``id`` (or a hash of its
question when it has none; FIELD_NOTES: cached artefacts indexed by step instead of example
silently go wrong). Teacher rows that ended on one of the teacher's own stop ids end on the
student's EOS instead (``Rollout.with_stop_token``). Both models sample at ``temperature``
(y ~ p, y ~ q as in §2.1; 0 = greedy).

Resumable: an existing file with the same header is continued (records already written are
skipped; an unfinished last line is dropped); one with another header is refused. Loading
(:func:`load_rollouts`) refuses a file whose teacher, student or tokenizer identity differs
from the run's, naming which.

The file format lives here, below the methods that read it (``vcrd``, ``seqkd``);
``pipelines/prepare.py`` is the ``reasondistill prepare`` command on top of it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


from ..config import ConfigError

FORMAT = "reasondistill.rollouts/1"
_WEIGHT_SUFFIXES = (".json", ".safetensors", ".bin", ".model")
_SAMPLE = 4 << 20  # bytes hashed at each end of a weight file larger than 2 x this


class RolloutCacheError(ConfigError):
    """A prepared-rollout file does not belong to this run (other models, tokenizer or settings)."""


def record_id(record: dict) -> str:
    """The key of a record: its ``id``, else a hash of its question."""
    rid = record.get("id")
    return str(rid) if rid not in (None, "") else "q:" + hashlib.sha1(record["question"].encode()).hexdigest()[:16]


def _file_digest(h, path: Path) -> None:
    size = path.stat().st_size
    h.update(f"{path.name}:{size}".encode())
    with open(path, "rb") as f:
        if size <= 2 * _SAMPLE:
            h.update(f.read())
        else:  # a multi-GB shard: both ends and the size (a changed checkpoint changes them)
            h.update(f.read(_SAMPLE))
            f.seek(size - _SAMPLE)
            h.update(f.read(_SAMPLE))


def model_identity(name: str) -> str:
    """A hash of a model folder's config and weight files (tokenizer files excluded); a hub
    name not found locally is identified by its name only."""
    from ..models import resolve_model

    path = Path(resolve_model(name))
    if not path.is_dir():
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(name, local_files_only=True))
        except Exception:
            return "name:" + name
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.is_file() and f.suffix in _WEIGHT_SUFFIXES and not f.name.startswith(("tokenizer", "special_tokens",
                                                                                   "vocab", "merges")):
            _file_digest(h, f)
    return h.hexdigest()[:20]


def tokenizer_identity(tokenizer) -> str:
    """A hash of the tokenizer's vocabulary and merges, chat template and EOS token."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update((backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))).encode())
    h.update(str(getattr(tokenizer, "chat_template", None)).encode())
    h.update(str(tokenizer.eos_token_id).encode())
    return h.hexdigest()[:20]


def header(teacher: str, student: str, tokenizer, *, prompt_template, max_prompt_length: int, max_new_tokens: int,
           temperature: float, seed: int) -> dict:
    return {"format": FORMAT, "teacher": {"name": teacher, "identity": model_identity(teacher)},
            "student": {"name": student, "identity": model_identity(student)},
            "tokenizer": tokenizer_identity(tokenizer), "prompt_template": prompt_template,
            "max_prompt_length": max_prompt_length, "max_new_tokens": max_new_tokens,
            "temperature": temperature, "seed": seed}


def _differences(found: dict, want: dict) -> list[str]:
    out = []
    for key in ("format", "tokenizer", "prompt_template", "max_prompt_length", "max_new_tokens", "temperature",
                "seed"):
        if found.get(key) != want.get(key):
            out.append(f"{key}: file {found.get(key)!r}, run {want.get(key)!r}")
    for who in ("teacher", "student"):
        if (found.get(who) or {}).get("identity") != want[who]["identity"]:
            out.append(f"{who} model: file {found.get(who)}, run {want[who]}")
    return out


def _read(path: Path) -> tuple[dict | None, list[dict]]:
    """(header, rows) of a file; an unfinished last line is dropped (and cut from the file)."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    rows, good = [], 0
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
            good += len(line.encode())
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise RolloutCacheError(f"{path}: line {i + 1} is not JSON") from None
            with open(path, "r+b") as f:
                f.truncate(good)
    if not rows:
        return None, []
    return rows[0], rows[1:]


def load_rollouts(path, want: dict) -> dict[str, dict]:
    """id -> row of a prepared file, refused unless its header matches ``want`` (:func:`header`)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"prepared rollouts {path} not found: run `reasondistill prepare` first")
    found, rows = _read(path)
    diff = _differences(found or {}, want)
    if diff:
        raise RolloutCacheError(f"{path} was prepared for another setup ({'; '.join(diff)}); prepare it again "
                                "(`reasondistill prepare`) or point rollouts= at the right file")
    return {r["id"]: r for r in rows}


def rollout_from_ids(prompt_ids: list[list[int]], completions: list[list[int]], truncated: list[bool], pad: int):
    """A ``rollout.Rollout`` of token-id lists: prompts left-padded, completions right-padded."""
    import torch

    from ..rollout import Rollout

    n = len(prompt_ids)
    P, C = max(map(len, prompt_ids)), max(1, max(map(len, completions)))
    pid, pm = torch.full((n, P), pad, dtype=torch.long), torch.zeros((n, P), dtype=torch.long)
    cid, cm = torch.full((n, C), pad, dtype=torch.long), torch.zeros((n, C), dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompt_ids, completions)):
        pid[i, P - len(p):], pm[i, P - len(p):] = torch.tensor(p, dtype=torch.long), 1
        if c:
            cid[i, :len(c)], cm[i, :len(c)] = torch.tensor(c, dtype=torch.long), 1
    return Rollout(prompt_ids=pid, prompt_mask=pm, completion_ids=cid, completion_mask=cm,
                   logprobs=torch.zeros(n, C), truncated=torch.tensor(truncated, dtype=torch.bool),
                   group_index=torch.arange(n), pad_token_id=pad)


def completion_lists(batch) -> list[list[int]]:
    return [ids[m.bool()].tolist() for ids, m in zip(batch.completion_ids.cpu(), batch.completion_mask.cpu())]


def write_rollouts(records: list[dict], output, *, teacher: str, student: str, tokenizer, teacher_model,
                   student_model, teacher_stop_ids=None, prompt_template=None, max_prompt_length: int = 256,
                   max_new_tokens: int = 64, temperature: float = 1.0, batch_size: int = 32, seed: int = 0,
                   progress: bool = True) -> dict:
    """Generate and write (or continue) the prepared file; returns counts."""
    import torch

    from tqdm.auto import tqdm

    from ..models import encode_prompts, render_prompt
    from ..rollout import generate

    want = header(teacher, student, tokenizer, prompt_template=prompt_template, max_prompt_length=max_prompt_length,
                  max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    done: set[str] = set()
    if out.exists() and out.stat().st_size:
        found, rows = _read(out)
        diff = _differences(found or {}, want)
        if diff:
            raise RolloutCacheError(f"{out} holds rollouts of another setup ({'; '.join(diff)}); delete it or "
                                    "choose another --output")
        done = {r["id"] for r in rows}
    else:
        out.write_text(json.dumps(want) + "\n", encoding="utf-8")
    sample = temperature > 0
    written = 0
    with open(out, "a", encoding="utf-8") as f, torch.no_grad():
        starts = range(0, len(records), batch_size)
        for b, start in enumerate(tqdm(starts, desc="prepare rollouts", disable=not progress)):
            chunk = [r for r in records[start:start + batch_size] if record_id(r) not in done]
            if not chunk:
                continue
            texts = [render_prompt(tokenizer, r["question"], template=prompt_template) for r in chunk]
            prompts = [ids[-max_prompt_length:] for ids in encode_prompts(tokenizer, texts)]
            gen = torch.Generator().manual_seed(seed * 1_000_003 + b)  # per batch: a resumed file matches
            kw = dict(num_generations=1, max_new_tokens=max_new_tokens, temperature=temperature if sample else 1.0,
                      do_sample=sample, generator=gen)
            t = generate(teacher_model, tokenizer, prompts, eos_token_id=teacher_stop_ids, **kw)
            if teacher_stop_ids is not None:
                t = t.with_stop_token(teacher_stop_ids, tokenizer.eos_token_id)
            s = generate(student_model, tokenizer, prompts, **kw)
            for r, ti, tt, si, st in zip(chunk, completion_lists(t), t.truncated.tolist(), completion_lists(s),
                                         s.truncated.tolist()):
                f.write(json.dumps({"id": record_id(r), "teacher_ids": ti, "teacher_truncated": tt,
                                    "student_ids": si, "student_truncated": st}) + "\n")
                written += 1
            f.flush()
            os.fsync(f.fileno())
    return {"records": len(records), "written": written, "skipped": len(done), "output": str(out)}
