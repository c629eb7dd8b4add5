"""Checkpoints that resume a run exactly: the trainable weights (the LoRA adapter only, when
training one), optimizer, scheduler, the RNG of every process, the data position, and with
``num_iterations > 1`` the generation batch still being reused. Written atomically: a
``checkpoint-N`` folder holding ``trainer_state.json`` is complete."""

from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

DATA_FIELDS = ("seed", "dataset", "per_device_train_batch_size", "gradient_accumulation_steps", "num_iterations",
               "eval_dataset", "eval_size")
BEST_FILE = "best_checkpoint.json"


def data_signature(cfg) -> dict:
    """The settings that decide which examples step s reads; resume refuses to change them."""
    return {k: getattr(cfg, k) for k in DATA_FIELDS}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(ctx) -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "generator": ctx.generator.get_state() if ctx.generator is not None else None,
            "ctx_rng": ctx.rng.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(ctx, state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["generator"] is not None and ctx.generator is not None:
        ctx.generator.set_state(state["generator"])
    ctx.rng.setstate(state["ctx_rng"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numbered(output_dir: Path) -> list[Path]:
    ckpts = [c for c in Path(output_dir).glob("checkpoint-*") if c.name.split("-", 1)[1].isdigit()]
    return sorted(ckpts, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    ckpts = [c for c in _numbered(Path(output_dir)) if (c / "trainer_state.json").exists()]
    return ckpts[-1] if ckpts else None


def best_checkpoint(output_dir: str | Path) -> dict | None:
    """``{"step", "metric", "value", "checkpoint"}`` of the best evaluation so far, if any."""
    path = Path(output_dir) / BEST_FILE
    return json.loads(path.read_text()) if path.exists() else None


def save_checkpoint(ctx, optimizer, scheduler, step: int, rng: dict | None = None, micros=None) -> Path:
    """Write ``checkpoint-<step>``; keep the newest ``save_total_limit`` and the best one."""
    from .models import save_pretrained_model

    acc, cfg = ctx.accelerator, ctx.cfg
    out = Path(cfg.output_dir)
    final, tmp = out / f"checkpoint-{step}", out / f".tmp-checkpoint-{step}"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    if acc.is_main_process:
        save_pretrained_model(ctx.policy, tmp / "model")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng or rng_state(ctx), tmp / f"rng_{acc.process_index}.pt")
    if micros is not None:  # a generation batch the next steps reuse (num_iterations > 1)
        torch.save(micros, tmp / f"generation_batch_{acc.process_index}.pt")
    acc.wait_for_everyone()
    if acc.is_main_process:
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, "world_size": acc.num_processes,
                                                            "data": data_signature(cfg)}))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        best = best_checkpoint(out)
        keep = {best["checkpoint"]} if best else set()
        ckpts = [c for c in _numbered(out) if c.name not in keep]
        for old in ckpts[: max(0, len(ckpts) - max(1, cfg.save_total_limit))]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return final


def load_weights(ctx, path: Path) -> None:
    """The trainable weights of checkpoint ``path`` into the student (exactly)."""
    from safetensors.torch import load_file

    from .models import load_trainable_state_dict

    weights = {}
    for f in sorted((path / "model").glob("*.safetensors")):
        weights.update(load_file(str(f)))
    load_trainable_state_dict(ctx.policy, weights)


def load_checkpoint(ctx, optimizer, scheduler, path: Path):
    """Restore everything from ``path``; returns (step, the reused generation batch or None)."""
    state = json.loads((path / "trainer_state.json").read_text())
    saved, now = state.get("data"), data_signature(ctx.cfg)
    if saved is None:
        print(f"[reasondistill] warning: {path} records no data settings; cannot check they are unchanged",
              file=sys.stderr)
    changed = {k: (saved.get(k), v) for k, v in now.items() if k in saved and saved[k] != v} if saved else {}
    if changed:
        raise ValueError(f"{path} was written with other data settings, so resuming would read other examples: "
                         + ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items()))
    if state["world_size"] != ctx.accelerator.num_processes:
        raise RuntimeError(f"{path} was written by {state['world_size']} process(es); resume with the same number "
                           f"(now {ctx.accelerator.num_processes})")
    load_weights(ctx, path)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rank = ctx.accelerator.process_index
    set_rng_state(ctx, torch.load(path / f"rng_{rank}.pt", weights_only=False))
    batch = path / f"generation_batch_{rank}.pt"
    return int(state["step"]), (torch.load(batch, weights_only=False) if batch.exists() else None)
