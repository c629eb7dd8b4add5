"""Where training metrics go: ``metrics.jsonl`` always, plus the trackers named in ``report_to``.

``report_to`` is a comma-separated list of ``tensorboard`` (the default), ``wandb``, ``trackio``,
or just ``none``. TensorBoard goes through torch's ``SummaryWriter`` (events under
``<output_dir>/tensorboard``); wandb and trackio go through accelerate's tracker classes, so the
project relies on one maintained integration instead of its own. wandb and trackio are optional
extras: naming one that is not installed fails when the writer is built, before any training
step, with the ``pip install`` line that fixes it. Each run is named after its output folder; the
project comes from ``WANDB_PROJECT`` / ``TRACKIO_PROJECT`` (default ``reasondistill``).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import sys
from pathlib import Path

from .errors import ConfigError

TRACKERS = ("tensorboard", "wandb", "trackio")
_EXTRAS = {"wandb": "WANDB_PROJECT", "trackio": "TRACKIO_PROJECT"}  # optional tracker -> project env var


def validate_report_to(value: str) -> list[str]:
    """The tracker names in ``value`` (``[]`` for ``none``), or a ConfigError naming a bad one.

    Only checks names; ``require_installed`` checks that an optional tracker's package exists.
    """
    names = list(dict.fromkeys(n.strip().lower() for n in str(value).split(",") if n.strip()))
    valid = ", ".join((*TRACKERS, "none"))
    for name in names:
        if name not in (*TRACKERS, "none"):
            raise ConfigError(f"report_to: unknown tracker {name!r} in {value!r}; valid names: {valid} "
                                      "(comma-separated, e.g. report_to=tensorboard,wandb)")
    if not names or ("none" in names and len(names) > 1):
        raise ConfigError(f"report_to={value!r}: give one or more of {', '.join(TRACKERS)}, or none alone")
    return [] if names == ["none"] else names


def require_installed(names: list[str]) -> list[str]:
    """``names``, or a ConfigError naming an optional tracker whose package is not installed
    (config validation calls it, so a run stops before it touches its folder)."""
    for name in names:
        if name in _EXTRAS:
            try:
                importlib.import_module(name)
            except ImportError:
                raise ConfigError(f"report_to: the {name!r} tracker needs the {name!r} package, which is not "
                                  f"installed; install it with: pip install 'reasondistill[{name}]'") from None
    return names


def _scalars(metrics: dict) -> dict:
    """The metric values trackers can plot: finite ints and floats (strings, lists, NaN, inf are left out)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}


class MetricsWriter:
    """Writes every logged step to ``<output_dir>/metrics.jsonl`` and to the ``report_to`` trackers.

    Only the main process writes; every process checks ``report_to`` and the optional packages,
    so a bad setting stops all of them together instead of leaving the others waiting.
    ``config`` (the resolved run config) is stored as the wandb / trackio run config.
    """

    def __init__(self, cfg, is_main: bool, config: dict | None = None):
        self.is_main = is_main
        self.path = Path(cfg.output_dir) / "metrics.jsonl"
        self.tb = None
        self.trackers = []  # accelerate GeneralTracker objects (wandb, trackio)
        names = require_installed(validate_report_to(getattr(cfg, "report_to", "tensorboard")))
        if not is_main:
            return
        if "tensorboard" in names:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(cfg.output_dir) / "tensorboard"))
            except ImportError:
                print("[reasondistill] tensorboard not installed; metrics go to metrics.jsonl and the other "
                      "report_to trackers only", file=sys.stderr)
        run_name = Path(cfg.output_dir).resolve().name
        for name in (n for n in names if n in _EXTRAS):
            from accelerate import PartialState
            from accelerate.tracking import TrackioTracker, WandBTracker

            PartialState()  # accelerate's trackers log through its logger, which needs the (shared) state
            tracker_class = WandBTracker if name == "wandb" else TrackioTracker
            # accelerate hands its first argument to init() as the *project* and the rest as they are.
            # The config goes into init(), not store_init_configuration(): for trackio (a plain dict
            # config) accelerate's update(..., allow_val_change=True) would store that flag as a key.
            tracker = tracker_class(os.environ.get(_EXTRAS[name]) or "reasondistill", name=run_name,
                                    config=config)
            tracker.start()
            self.trackers.append(tracker)

    def write(self, step: int, metrics: dict) -> None:
        """Append one step's metrics (main process only); trackers get the plottable values."""
        if not self.is_main:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        scalars = _scalars(metrics)
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
        if scalars:
            for tracker in self.trackers:
                tracker.log(scalars, step=step)

    def close(self) -> None:
        """Flush and finish every tracker; safe to call twice."""
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        while self.trackers:
            self.trackers.pop(0).finish()
