"""``reasondistill compare CONFIG.yaml``: several methods on one setup, evaluated the same way,
reported like constrained_mdp_distillation.md Table 1 and Figures 2-4.

The config (YAML)::

    output_dir: runs/compare
    common:                      # every run gets these (keys a method lacks are skipped for it)
      student: embedded:student
      teacher: embedded:teacher
      max_steps: 150
      seed: 0                    # the same seed for every run
    bootstrap:                   # optional: KL distillation alone, trained once, every run starts from it
      method: gkd                # (Appendix D.4); here on-policy reverse KL
      lmbda: 1.0
      beta: 1.0
    seeds: [0, 1, 2]             # optional: every run once per seed, as NAME_seedK (seed overridden)
    runs:
      - {name: CMDP, method: cmdp}
      - {name: "GKD-GRPO λ={lmbda}", method: gkd_grpo, sweep: {lmbda: [0.001, 0.01, 0.1, 1, 10]}}
    eval:
      benchmarks: [arith]        # or gsm8k, math500, ... (data_dir: or $REASONDISTILL_DATA_DIR)
      limit: 400
      sample_seed: null          # null: the first `limit` rows of a benchmark file; a seed: a random `limit`
      kl_budget: 0.35
      max_new_tokens: 64
      avg_k: 0                   # > 0: also avg@k at avg_temperature per math benchmark (the TGPO paper's)
      avg_temperature: 0.6
      judge: rule                # rule | none | http(s)://HOST:PORT/v1 (judge_model:) | a local model
      student: true              # add the untrained student's row
      teacher: true              # add the teacher's row
      code: humaneval            # optional, beyond math (see evaluate_tasks): HumanEval pass@1 (or a .jsonl)
      code_limit: 20
      choice: mmlu               # optional: multiple choice, options shuffled with `seed` (a file or folder)
      choice_limit: 50
      instruct: alpaca_eval      # optional: win rate against the references, judged in both orders
      instruct_limit: 20
      instruct_judge: http://127.0.0.1:8000/v1   # an endpoint or a local model (default: judge, unless rule)
      instruct_judge_model: NAME
      instruct_template: null    # default: templates/instruct_pairwise.txt (the VCRD paper's §10.3.1 prompt)
      task_max_new_tokens: 512   # answer length for code, choice and instruct

The ``eval:`` keys are the fields of :class:`CompareEval` (built by ``config.build_config``: an
unknown key is named with the closest valid ones). Each evaluation it describes is the
``EvalConfig`` of ``reasondistill eval TASK`` (:meth:`CompareEval.task_config`), so compare and
``eval`` choose the same records and score them the same way: ``limit: N`` with
``sample_seed: null`` is ``eval --first N``, with ``sample_seed: S`` it is ``eval --limit N
--sample-seed S``.

Steps: train every run (``<output_dir>/runs/<slug>``; a finished run is reused, an interrupted one
resumes from its last checkpoint); evaluate every model greedily on every benchmark with the
teacher's per-answer KL and constraint satisfaction at ``kl_budget`` (cached per model and
benchmark); judge every pair of methods' answers in both orders; write

- ``table.md`` and ``table.csv``: per benchmark FAC, RWR, RLR, KL (+-std), CS; student and teacher rows;
  then, when ``code`` / ``choice`` / ``instruct`` are set, pass@1, MC acc and instruct win (every model);
- ``pareto.png``: FAC vs CS, Pareto points in red (Figure 3);
- ``radar.png``: FAC, RWR, CS, RLR inverted (1 - RLR) and KL inverted (exp(-KL)), averaged over
  benchmarks (Figure 2);
- ``pairwise_heatmap.png``: row-beats-column win rates averaged over benchmarks (Figure 4);
- ``seeds.md`` (with ``seeds:``): every number of ``table.md`` as mean ± std over the seeds of each run;
- ``dynamics.png`` / ``dynamics.md``: the training curves of every run (``report/dynamics.py``: reward,
  length, gradient norm, entropy, guidance weight, clip ratio; seeds as one line with a band);
- ``vcrd_regimes.md`` and ``ratio_hist.png`` (runs of ``vcrd`` and its presets that ran a judge): the
  attenuation / parity / amplification shares per run and prefix kind, and the histogram of
  r_s / r_t with the share >= 1 (validity_calibrated_distillation.md, Figure 1), from what the
  runs logged (:func:`vcrd_report`);
- ``results.json``: every number above.
"""

from __future__ import annotations

import csv
import json
import re
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from ..config import ConfigError, build_config

REFERENCE_ROWS = ("Student model", "Bootstrapped student", "Teacher model")

@dataclass
class CompareEval:
    """The ``eval:`` section of a compare config: what every model is evaluated on. Each
    evaluation is an ``EvalConfig`` of ``eval/base.py`` (:meth:`task_config`), so records are
    chosen, prompted and scored exactly as ``reasondistill eval TASK`` does with the same settings."""

    benchmarks: list[str] = field(default_factory=lambda: ["arith"])
    """Math benchmarks (arith, gsm8k, math500, ...): FAC, KL, CS and the pairwise judge on each."""
    limit: int | None = 400
    """Records per math benchmark (arith: problems generated); see sample_seed."""
    sample_seed: int | None = None
    """None: the first ``limit`` rows of a benchmark file (``eval --first``); a seed: a random
    ``limit`` drawn with it (``eval --limit --sample-seed``). Also for code/choice/instruct."""
    kl_budget: float = 0.35
    """d of constraint satisfaction."""
    avg_k: int = 0
    """> 0: also evaluate every math benchmark with avg_k answers per question at
    ``avg_temperature`` (avg@k; the TGPO paper's protocol), as a column ``<bench> avg@k``."""
    avg_temperature: float = 0.6
    """Sampling temperature of the avg@k evaluation."""
    max_new_tokens: int = 64
    """Answer length on the math benchmarks."""
    batch_size: int = 64
    """Prompts per generation batch."""
    seed: int = 0
    """Sampling seed (and the arith problems, the option shuffle)."""
    data_dir: str | None = None
    """Benchmark folder (else $REASONDISTILL_DATA_DIR)."""
    judge: str = "rule"
    """Pairwise reasoning judge of the methods: rule | none (no RWR/RLR) | http(s)://HOST:PORT/v1
    (judge_model) | a local model."""
    judge_model: str | None = None
    """With an endpoint judge: the model name at the endpoint."""
    judge_template: str | None = None
    """Pairwise judge prompt file (default: templates/pairwise_reasoning.txt)."""
    student: bool = True
    """Add the untrained (and the bootstrapped) student's row."""
    teacher: bool = True
    """Add the teacher's row."""
    code: str | None = None
    """Optional: a code benchmark or HumanEval-schema JSONL: pass@1 for every model."""
    code_limit: int | None = None
    """Records of ``code`` (see sample_seed)."""
    choice: str | None = None
    """Optional: a multiple-choice benchmark, file or folder: MC accuracy, options shuffled with seed."""
    choice_limit: int | None = None
    """Records of ``choice``."""
    instruct: str | None = None
    """Optional: an instruction benchmark or file: win rate against the references, both orders."""
    instruct_limit: int | None = None
    """Records of ``instruct``."""
    instruct_judge: str | None = None
    """The instruct judge: an endpoint or a local model (default: judge, unless it is rule)."""
    instruct_judge_model: str | None = None
    """With an endpoint instruct judge: its model name (default: judge_model when judge is used)."""
    instruct_template: str | None = None
    """Instruct judge prompt file (default: templates/instruct_pairwise.txt, the VCRD paper's §10.3.1)."""
    task_max_new_tokens: int = 512
    """Answer length for code, choice and instruct."""

    def task_config(self, task: str, source: str, **extra):
        """The ``EvalConfig`` of one evaluation here: ``task`` on the benchmark or file ``source``
        (math: ``limit`` and ``max_new_tokens``; the others: ``<task>_limit`` and
        ``task_max_new_tokens``), greedy except instruct (the paper's sampling)."""
        from ..config import build_config
        from ..eval.tasks import eval_config_class

        cls = eval_config_class(task)
        limit = self.limit if task == "math" else getattr(self, f"{task}_limit")
        over = {"data_dir": self.data_dir, "seed": self.seed, "batch_size": self.batch_size, "progress": False,
                "max_new_tokens": self.max_new_tokens if task == "math" else self.task_max_new_tokens}
        over["benchmark"] = source  # a name, or (code, choice, instruct) a file its loader reads
        if self.sample_seed is None:
            over["first"] = limit
        else:
            over.update(limit=limit, sample_seed=self.sample_seed)
        if task == "math":
            over["kl_budget"] = self.kl_budget
        over.update(extra)
        return build_config(cls, overrides=over)


def slug(name: str) -> str:
    """A folder name for a run: ``GKD-GRPO λ=0.1`` -> ``GKD-GRPO_lambda=0.1``."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", name.replace("λ", "lambda")).strip("_") or "run"


def load_config(path: str | Path) -> dict:
    """Parse and check a compare config; runs with a ``sweep`` are expanded (one run per value)."""
    from ..methods import get_method

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"compare config not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    unknown = set(data) - {"output_dir", "common", "bootstrap", "runs", "eval", "seeds"}
    if unknown:
        raise ConfigError(f"{path}: unknown top-level keys {sorted(unknown)}; valid: output_dir, common, bootstrap, "
                          f"runs, eval, seeds")
    seeds = data.get("seeds")
    if seeds is not None and not (isinstance(seeds, list) and seeds and all(isinstance(x, int) for x in seeds)
                                  and len(set(seeds)) == len(seeds)):
        raise ConfigError(f"{path}: seeds must be a non-empty list of distinct integers, got {seeds!r}")
    boot = data.get("bootstrap")
    if boot is not None:
        if not isinstance(boot, dict) or "method" not in boot:
            raise ConfigError(f"{path}: bootstrap needs at least 'method' (e.g. gkd with lmbda: 1, beta: 1)")
        boot = dict(boot)
        get_method(boot["method"])
    if not data.get("runs"):
        raise ConfigError(f"{path}: 'runs' must list at least one {{name, method, ...}}")
    if not isinstance(data.get("eval") or {}, dict):
        raise ConfigError(f"{path}: eval must be a mapping of key: value")
    try:
        ev = build_config(CompareEval, overrides=dict(data.get("eval") or {}))
    except ConfigError as e:
        raise ConfigError(f"{path}: eval: {e}") from None
    runs = []
    for k, r in enumerate(data["runs"]):
        where = f"{path}: runs[{k}]"
        if not isinstance(r, dict) or "method" not in r:
            raise ConfigError(f"{where}: needs at least 'method' (and usually 'name')")
        r = dict(r)
        method = r.pop("method")
        get_method(method)  # unknown method -> ValueError naming the valid ones
        name = str(r.pop("name", method))
        sweep = r.pop("sweep", None) or {}
        if len(sweep) > 1:
            raise ConfigError(f"{where}: sweep one key at a time, got {sorted(sweep)}")
        if sweep and not all(isinstance(vs, list) and vs for vs in sweep.values()):
            raise ConfigError(f"{where}: sweep needs a non-empty list of values, e.g. {{lmbda: [0.01, 0.1]}}")
        values = [(None, None)] if not sweep else [(key, v) for key, vs in sweep.items() for v in vs]
        for key, v in values:
            over = dict(r)
            nm = name
            if key is not None:
                over[key] = v
                try:
                    nm = name.format(**{key: v}) if "{" in name else f"{name} {key}={v}"
                except (KeyError, IndexError, ValueError):
                    raise ConfigError(f"{where}: name {name!r} may only use {{{key}}}, the swept key") from None
            if seeds is None:
                runs.append({"name": nm, "method": method, "overrides": over, "base": nm})
            else:
                runs += [{"name": f"{nm}_seed{sd}", "method": method, "overrides": {**over, "seed": sd}, "base": nm}
                         for sd in seeds]
    names = [r["name"] for r in runs]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"{path}: run names must be unique, repeated: {sorted(dup)}")
    slugs = [slug(n) for n in names]
    clash = sorted({n for n in names if slugs.count(slug(n)) > 1})
    if clash:
        raise ConfigError(f"{path}: run names {clash} map to the same folder name; rename one")
    taken = sorted(set(names) & set(REFERENCE_ROWS))
    if taken:
        raise ConfigError(f"{path}: {taken} name the reference rows of the table; choose other run names")
    valid_somewhere = set().union(*[{f.name for f in fields(get_method(m).Config)} for m in
                                    {r["method"] for r in runs} | ({boot["method"]} if boot else set())])
    typos = sorted(set(data.get("common") or {}) - valid_somewhere)
    if typos:
        raise ConfigError(f"{path}: common keys {typos} are not a setting of any method here (a typo?)")
    return {"output_dir": data.get("output_dir", "runs/compare"), "common": data.get("common") or {},
            "bootstrap": boot, "runs": runs, "eval": ev, "path": str(path), "seeds": seeds}


def _build_run_config(run: dict, common: dict, out_dir: Path):
    from ..config import build_config
    from ..methods import get_method

    method = get_method(run["method"])
    valid = {f.name for f in fields(method.Config)}
    over = {k: v for k, v in common.items() if k in valid}  # e.g. num_generations is skipped for sft
    over.update(run["overrides"])  # run-specific keys must be valid: build_config says which are not
    over["output_dir"] = str(out_dir)
    return method, build_config(method.Config, overrides=over)


def _check_unchanged(rc, run: dict, common: dict, label: str) -> None:
    """Refuse to reuse or resume a run folder trained with other settings than the compare config
    now gives it. Compared: every key the config sets for that run (``common`` keys the method
    has, and the run's own overrides), as recorded in the folder's ``config.yaml``; a changed
    learning rate or batch would otherwise be reported under the new settings."""
    from ..config import to_yaml

    saved_path = Path(rc.output_dir) / "config.yaml"
    if not saved_path.exists():
        return
    saved = yaml.safe_load(saved_path.read_text()) or {}
    now = yaml.safe_load(to_yaml(rc))  # the same rendering as the saved file (lists, floats)
    keys = sorted(({k for k in common if k in now} | set(run["overrides"])) - {"output_dir"})
    changed = [f"{k}: {saved.get(k)!r} there, {now.get(k)!r} now" for k in keys if saved.get(k) != now.get(k)]
    if changed:
        raise ConfigError(f"{label}: {rc.output_dir} was trained with other settings ({'; '.join(changed)}); "
                          f"delete that folder to retrain it, or set another output_dir")


def _train_one(method, rc, label: str, progress: bool) -> None:
    from ..checkpoints import latest_checkpoint
    from ..engine import train

    rc.progress = progress
    rc.resume = latest_checkpoint(rc.output_dir) is not None
    rc.save_steps = rc.save_steps or max(1, rc.max_steps // 4)  # an interrupted compare loses little
    print(f"[compare] training {label}{' (resuming)' if rc.resume else ''} -> {rc.output_dir}", file=sys.stderr,
          flush=True)
    train(method, rc)


def train_runs(cfg: dict, progress: bool = True) -> dict[str, Path]:
    """Train the shared bootstrap (if any) and every run that has no ``final/`` yet; returns
    {name: final model folder}. With a ``bootstrap`` stage, every run starts from its final model
    unless the run names its own ``student`` (Appendix D.4: "to bootstrap all methods, we apply KL
    distillation alone ..."; one shared stage with the same seed is the same for every method)."""
    out = Path(cfg["output_dir"])
    finals = {}
    common = dict(cfg["common"])
    boot = None
    if cfg["bootstrap"] is not None:
        b = dict(cfg["bootstrap"])
        boot_run = {"name": "bootstrap", "method": b.pop("method"), "overrides": b}
        boot = _build_run_config(boot_run, common, out / "bootstrap")
        _check_unchanged(boot[1], boot_run, common, "the shared bootstrap")
        common["student"] = str(out / "bootstrap" / "final")
    configs = [(r, *_build_run_config(r, common, out / "runs" / slug(r["name"]))) for r in cfg["runs"]]
    for run, _, rc in configs:  # every folder checked before anything trains
        _check_unchanged(rc, run, common, run["name"])
    if boot is not None and not (out / "bootstrap" / "final" / "config.json").exists():  # every config checked first
        _train_one(*boot, "the shared bootstrap", progress)
    for k, (run, method, rc) in enumerate(configs, 1):
        run_dir = Path(rc.output_dir)
        finals[run["name"]] = run_dir / "final"
        if (run_dir / "final" / "config.json").exists():
            print(f"[compare] {k}/{len(configs)} {run['name']}: already trained, reusing {run_dir}", file=sys.stderr)
            continue
        _train_one(method, rc, f"{k}/{len(configs)} {run['name']} ({run['method']})", progress)
    return finals


def _eval_settings(ev: CompareEval, model_path) -> dict:
    """What a cached evaluation must match to be reused: the settings and the model's weights
    file (its modification time changes when the run is retrained)."""
    from ..models import resolve_model

    p = Path(resolve_model(str(model_path)))
    w = p / "model.safetensors"
    return {"limit": ev.limit, "sample_seed": ev.sample_seed, "kl_budget": ev.kl_budget,
            "max_new_tokens": ev.max_new_tokens,
            "seed": ev.seed, "model": str(p), "weights_mtime": w.stat().st_mtime if w.exists() else None}


def evaluate_models(cfg: dict, models: dict[str, str]) -> dict[str, dict[str, dict]]:
    """{model name: {benchmark: summary}}; per-example rows cached in <out>/eval/<slug>/<bench>_examples.jsonl.
    Every benchmark is ``eval math`` with :meth:`CompareEval.task_config`'s settings, the teacher
    loaded once and every model's answers scored against it."""
    from ..eval.base import load_records
    from ..models import assert_compatible, load_model, load_tokenizer, resolve_model

    ev, out = cfg["eval"], Path(cfg["output_dir"]) / "eval"
    teacher_path = resolve_model(cfg["common"].get("teacher", "embedded:teacher"))
    teacher, t_tok = None, None
    results: dict[str, dict[str, dict]] = {}
    mode = cfg["common"].get("tokenizer_compat", "strict")
    for bench in ev.benchmarks:
        ecfg = ev.task_config("math", bench)
        records, _ = load_records(ecfg)
        if ev.avg_k:
            _evaluate_avg_k(ev, bench, models, out, results)
        for name, path in models.items():
            d = out / slug(name)
            settings = _eval_settings(ev, path)
            cached = _cached(d / f"{bench}_summary.json", settings)
            if cached is not None:
                results.setdefault(name, {})[bench] = cached
                continue
            if teacher is None:
                teacher, t_tok = load_model(teacher_path), load_tokenizer(teacher_path)
            p = resolve_model(str(path))
            model, tok = load_model(p), load_tokenizer(p)
            is_teacher = Path(p).resolve() == Path(teacher_path).resolve()
            shared = None
            if not is_teacher:
                shared = assert_compatible(tok, t_tok, model.get_input_embeddings().weight.shape[0],
                                           teacher.get_input_embeddings().weight.shape[0], mode=mode).shared_vocab
            print(f"[compare] evaluating {name} on {bench} ({len(records)} problems)", file=sys.stderr, flush=True)
            task = ecfg.make_task(model, tok, teacher=None if is_teacher else teacher, shared_vocab=shared)
            results.setdefault(name, {})[bench] = _evaluate_and_write(ecfg, task, model, tok, records, bench, d, bench,
                                                                      path, settings, ev.seed)
    return results


def _cached(summary: Path, settings: dict) -> dict | None:
    """The cached evaluation summary at ``summary`` if it was made with ``settings``, else None."""
    if summary.exists():
        s = json.loads(summary.read_text())
        if s.get("settings") == settings:
            return s
    return None


def _evaluate_and_write(ecfg, task, model, tok, records, bench: str, d: Path, prefix: str, path, settings: dict,
                        seed: int) -> dict:
    """Run one evaluation (seeded), write ``<d>/<prefix>_examples.jsonl`` and ``_summary.json``; the summary."""
    import torch

    from ..eval.base import evaluate_task, write_results

    torch.manual_seed(seed)
    rows, s = evaluate_task(task, model, tok, records, **ecfg.sampling(), benchmark=bench)
    s.update({"model": str(path), "settings": settings})
    write_results(d, rows, s, prefix=prefix)
    return s


def avg_key(bench: str, k: int) -> str:
    return f"{bench} avg@{k}"


def _evaluate_avg_k(ev: CompareEval, bench: str, models: dict[str, str], out: Path, results: dict) -> None:
    """avg@k of every model on ``bench``: ``avg_k`` answers per question at ``avg_temperature``
    (no teacher KL), cached in <out>/eval/<slug>/<bench>_avg<k>_summary.json like the greedy one."""
    from ..eval.base import load_records
    from ..models import load_model, load_tokenizer, resolve_model

    ecfg = ev.task_config("math", bench, samples=ev.avg_k, temperature=ev.avg_temperature)
    records, _ = load_records(ecfg)
    prefix, key = f"{bench}_avg{ev.avg_k}", avg_key(bench, ev.avg_k)
    for name, path in models.items():
        d = out / slug(name)
        settings = {**_eval_settings(ev, path), "avg_k": ev.avg_k, "avg_temperature": ev.avg_temperature}
        cached = _cached(d / f"{prefix}_summary.json", settings)
        if cached is not None:
            results.setdefault(name, {})[key] = cached
            continue
        p = resolve_model(str(path))
        model, tok = load_model(p), load_tokenizer(p)
        print(f"[compare] avg@{ev.avg_k} of {name} on {bench} (T={ev.avg_temperature})", file=sys.stderr, flush=True)
        results.setdefault(name, {})[key] = _evaluate_and_write(ecfg, ecfg.make_task(model, tok), model, tok, records,
                                                                bench, d, prefix, path, settings, ev.seed)


TASK_COLUMNS = {"code": ("pass@1", "pass@1"), "choice": ("accuracy", "MC acc"),
                "instruct": ("win_rate", "instruct win")}
"""task -> (summary key, column) of the evaluations beyond math, in table order."""
TASKS_KEY = "_tasks"
"""Where evaluate_tasks puts {task: summary} in a model's entry of the evaluations."""


def _task_label(source) -> str:
    """``humaneval`` for ``humaneval``, ``tiny`` for ``/data/tiny.jsonl``."""
    return slug(Path(str(source)).stem)


def _instruct_judge_spec(ev: CompareEval) -> tuple[str, str | None]:
    spec = ev.instruct_judge or (ev.judge if ev.judge not in ("rule", "none") else None)
    if not spec:
        raise ConfigError("eval.instruct needs an LLM judge: set eval.instruct_judge to an http(s)://HOST:PORT/v1 "
                          "endpoint (with instruct_judge_model) or a local model path")
    return spec, ev.instruct_judge_model or (ev.judge_model if spec == ev.judge else None)


def evaluate_tasks(cfg: dict, models: dict[str, str], evals: dict) -> dict[str, dict[str, dict]]:
    """Code / multiple choice / instruction following for every model, when ``eval.code``,
    ``eval.choice`` or ``eval.instruct`` name a benchmark or file: ``eval code|choice|instruct``
    with :meth:`CompareEval.task_config`'s settings (greedy for code and choice, the paper's
    sampling for instruct, ``task_max_new_tokens``).

    Returns {model name: {task: summary}} and stores it in ``evals[name][TASKS_KEY]``. Rows and
    summaries are cached in ``<out>/eval/<slug>/<task>_<benchmark>_{examples.jsonl,summary.json}``
    and reused while the benchmark, the limit and the sample seed are unchanged.
    """
    from ..eval.base import evaluate_task, load_records, write_results
    from ..models import load_model, load_tokenizer, resolve_model

    ev, out = cfg["eval"], Path(cfg["output_dir"]) / "eval"
    tasks = [t for t in TASK_COLUMNS if getattr(ev, t)]
    if not tasks:
        return {}
    configs = {}
    for t in tasks:
        extra = dict(zip(("judge", "judge_model", "judge_template"),
                         (*_instruct_judge_spec(ev), ev.instruct_template))) if t == "instruct" else {}
        configs[t] = ev.task_config(t, str(getattr(ev, t)), **extra)
    records, judge, results = {}, None, {}
    for name, path in models.items():
        model = tok = None
        for task in tasks:
            ecfg = configs[task]
            source, limit = ecfg.source, getattr(ev, f"{task}_limit")
            summ = out / slug(name) / f"{task}_{_task_label(source)}_summary.json"
            if summ.exists():
                cached = json.loads(summ.read_text())
                if cached.get("benchmark") == source and cached.get("limit") == limit \
                        and cached.get("sample_seed") == ev.sample_seed:
                    results.setdefault(name, {})[task] = cached
                    continue
            if task not in records:
                records[task] = load_records(ecfg)[0]
            if model is None:
                p = resolve_model(str(path))
                model, tok = load_model(p), load_tokenizer(p)
            if task == "instruct":  # one judge for every model
                t = ecfg.make_task(model, tok, judge=judge)
                judge = t.judge
            else:
                t = ecfg.make_task(model, tok)
            print(f"[compare] evaluating {name} on {task} {source} ({len(records[task])} records)", file=sys.stderr,
                  flush=True)
            rows, s = evaluate_task(t, model, tok, records[task], **ecfg.sampling(), benchmark=source)
            s.update({"model": str(path), "limit": limit, "sample_seed": ev.sample_seed})
            write_results(summ.parent, rows, s, prefix=f"{task}_{_task_label(source)}")
            results.setdefault(name, {})[task] = s
    for name, by_task in results.items():
        evals.setdefault(name, {})[TASKS_KEY] = by_task
    return results


def judge_methods(cfg: dict, names: list[str]) -> dict[str, dict]:
    """{benchmark: pairwise_matrix(...)} over the methods' answers (cached in <out>/pairwise_<bench>.json)."""
    from ..eval.pairwise import load_template, make_judge, pairwise_matrix, read_rows

    ev, out = cfg["eval"], Path(cfg["output_dir"])
    judge, res = None, {}
    for bench in ev.benchmarks:
        cache = out / f"pairwise_{bench}.json"
        files = [out / "eval" / slug(n) / f"{bench}_examples.jsonl" for n in names]
        key = {"models": names, "judge": ev.judge, "judge_model": ev.judge_model,
               "template": load_template(ev.judge_template), "answers_mtime": [f.stat().st_mtime for f in files]}
        if cache.exists():
            m = json.loads(cache.read_text())
            if m.get("cache_key") == key:
                res[bench] = m
                continue
        if judge is None:
            judge = make_judge(ev.judge, model=ev.judge_model) if ev.judge != "rule" else make_judge("rule")
        answers = {n: read_rows(out / "eval" / slug(n) / f"{bench}_examples.jsonl") for n in names}
        print(f"[compare] judging {len(names) * (len(names) - 1) // 2} pairs on {bench} with {ev.judge}",
              file=sys.stderr, flush=True)
        m = pairwise_matrix(judge, answers, load_template(ev.judge_template))
        m["cache_key"] = key
        cache.write_text(json.dumps(m, indent=2) + "\n")
        res[bench] = m
    return res


def _pct(x) -> str:
    return "" if x is None else f"{100 * x:.2f}"


def build_table(cfg: dict, methods: list[str], evals: dict, judged: dict) -> tuple[list[list[str]], list[dict]]:
    """Table 1's layout: one row per model, per benchmark FAC, RWR, RLR, KL (+-std), CS (in %, KL in nats)."""
    benches = cfg["eval"].benchmarks
    k = cfg["eval"].avg_k
    per_bench = ("FAC ↑", "RWR ↑", "RLR ↓", "KL ↓", "CS ↑") + ((f"avg@{k} ↑",) if k else ())
    header = ["Method"] + [f"{b} {m}" for b in benches for m in per_bench]
    tasks = [t for t in TASK_COLUMNS if getattr(cfg["eval"], t)]
    header += [f"{_task_label(getattr(cfg['eval'], t))} {TASK_COLUMNS[t][1]} ↑" for t in tasks]
    rows, records = [header], []
    extra = [n for n in REFERENCE_ROWS if n in evals]
    for name in methods + extra:
        line, rec = [name], {"model": name}
        for b in benches:
            s = evals[name][b]
            rwr = judged[b]["rwr"].get(name) if name in methods else None
            rlr = judged[b]["rlr"].get(name) if name in methods else None
            kl = f"{s['kl_mean']:.2f} (±{s['kl_std']:.2f})" if "kl_mean" in s else ""
            line += [_pct(s["accuracy"]), _pct(rwr), _pct(rlr), kl, _pct(s.get("constraint_satisfaction"))]
            rec[b] = {"fac": s["accuracy"], "rwr": rwr, "rlr": rlr, "kl_mean": s.get("kl_mean"),
                      "kl_std": s.get("kl_std"), "cs": s.get("constraint_satisfaction")}
            if k:
                rec[b]["avg_k"] = evals[name][avg_key(b, k)]["accuracy"]
                line.append(_pct(rec[b]["avg_k"]))
        for t in tasks:  # beyond math: pass@1, MC acc, instruct win
            key, column = TASK_COLUMNS[t]
            value = evals[name].get(TASKS_KEY, {}).get(t, {}).get(key)
            line.append(_pct(value))
            rec[column] = value
        rows.append(line)
        records.append(rec)
    return rows, records


def _avg(records: list[dict], benches: list[str], key: str) -> dict[str, float | None]:
    out = {}
    for r in records:
        xs = [r[b][key] for b in benches if r[b][key] is not None]
        out[r["model"]] = sum(xs) / len(xs) if xs else None
    return out


def write_report(cfg: dict, methods: list[str], evals: dict, judged: dict) -> dict:
    import math

    from ..report.dynamics import dynamics_report
    from ..report.plots import heatmap_plot, pareto_front, pareto_plot, radar_plot

    out = Path(cfg["output_dir"])
    benches = cfg["eval"].benchmarks
    rows, records = build_table(cfg, methods, evals, judged)
    md = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    md += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    note = (f"\nFAC, RWR, RLR and CS in %; KL = mean per-token KL(student || teacher) on the model's own greedy "
            f"answers (± std over answers); CS = share of answers with mean KL <= {cfg['eval'].kl_budget}; "
            f"RWR/RLR from the '{cfg['eval'].judge}' judge, both orders, over the methods only.\n")
    if cfg["eval"].instruct:
        unparsed = {n: evals[n].get(TASKS_KEY, {}).get("instruct", {}) for n in evals}
        counts = ", ".join(f"{n} {s.get('unparseable_verdicts')}/{s.get('num_verdicts')}" for n, s in unparsed.items())
        note += ("instruct win (in %) = win rate against the reference answers, both orders averaged, ties half; "
                 f"unparseable verdicts (left out): {counts}\n")
    (out / "table.md").write_text("\n".join(md) + "\n" + note)
    with (out / "table.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)

    fac, cs = _avg(records, benches, "fac"), _avg(records, benches, "cs")
    rwr, rlr, kl = _avg(records, benches, "rwr"), _avg(records, benches, "rlr"), _avg(records, benches, "kl_mean")
    pts = {n: (100 * cs[n], 100 * fac[n]) for n in methods if cs.get(n) is not None}
    refs = {n: (100 * cs[n], 100 * fac[n]) for n in ("Student model", "Bootstrapped student") if cs.get(n) is not None}
    pareto_plot(pts, out / "pareto.png", references=refs)
    axes = ["FAC", "RWR", "CS", "1 - RLR", "exp(-KL)"]
    radar = {n: {"FAC": fac[n], "RWR": rwr[n] or 0.0, "CS": cs[n] or 0.0, "1 - RLR": 1 - (rlr[n] or 0.0),
                 "exp(-KL)": math.exp(-kl[n]) if kl[n] is not None else 0.0} for n in methods}
    radar_plot(radar, axes, out / "radar.png")
    win = {i: {j: _mean_or_none([judged[b]["win"][i][j] for b in benches]) for j in methods} for i in methods}
    heatmap_plot(methods, win, out / "pairwise_heatmap.png")
    run_dirs = [out / "runs" / slug(r["name"]) for r in cfg["runs"]]
    run_dirs = [d for d in run_dirs if (d / "metrics.jsonl").exists()]
    if run_dirs:
        dynamics_report(run_dirs, out / "dynamics.png")
    if cfg.get("seeds"):
        (out / "seeds.md").write_text(seeds_table(cfg, records))
    vcrd = vcrd_report(cfg)
    result = {"config": cfg["path"], "table": records, "pareto_front": pareto_front(pts), "radar": radar,
              "win": win, "unparseable_verdicts": {b: judged[b]["unparseable_verdicts"] for b in benches}}
    if cfg["eval"].instruct:
        result["instruct_unparseable_verdicts"] = {
            n: evals[n].get(TASKS_KEY, {}).get("instruct", {}).get("unparseable_verdicts") for n in evals}
    if vcrd:
        result["vcrd"] = vcrd
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def vcrd_report(cfg: dict) -> dict:
    """For the runs that logged VCRD's validity weights (method ``vcrd`` and its presets with a
    judge): ``vcrd_regimes.md``, the attenuation / parity / amplification shares of the applied
    weights and the share of r_s / r_t >= 1 per run and prefix kind, each the mean over the run's
    logged steps (every logged step weighs the same); and ``ratio_hist.png``, the histogram of
    r_s / r_t (Figure 1) per prefix kind from the bins ``methods.vcrd`` logs, pooled the same
    way over steps and over the seeds of a run. Returns those numbers ({} when no run logged them)."""
    from ..methods import get_method
    from ..methods import vcrd as vcrd_method
    from ..report.plots import ratio_histogram_plot, read_metrics

    out = Path(cfg["output_dir"])
    kinds = ("teacher", "student")
    nbins = len(vcrd_method.RATIO_EDGES) + 1
    regimes, hist_steps, ge1_steps = {}, {}, {}
    for run in cfg["runs"]:
        path = out / "runs" / slug(run["name"]) / "metrics.jsonl"
        if not issubclass(get_method(run["method"]).Config, vcrd_method.Config) or not path.exists():
            continue
        rows = read_metrics(path)
        per = {}
        for kind in kinds:
            cols = {name: [r[f"vcrd/{kind}_prefix/{name}_share"] for r in rows
                           if f"vcrd/{kind}_prefix/{name}_share" in r]
                    for name in ("attenuation", "parity", "amplification", "ratio_ge1")}
            if cols["attenuation"]:
                per[kind] = {n: (sum(v) / len(v) if v else None) for n, v in cols.items()} | {
                    "steps": len(cols["attenuation"])}
            bins = [[r[vcrd_method.ratio_bin_key(kind, k)] for k in range(nbins)] for r in rows
                    if vcrd_method.ratio_bin_key(kind, 0) in r]
            if bins:
                hist_steps.setdefault(run["base"], {}).setdefault(kind, []).extend(bins)
                ge1_steps.setdefault(run["base"], {}).setdefault(kind, []).extend(
                    r[f"vcrd/{kind}_prefix/ratio_ge1_share"] for r in rows if vcrd_method.ratio_bin_key(kind, 0) in r)
        if per:
            regimes[run["name"]] = per
    if not regimes:
        return {}
    band = None
    for run in cfg["runs"]:
        cfg_path = out / "runs" / slug(run["name"]) / "config.yaml"
        if run["name"] in regimes and cfg_path.exists():
            band = (yaml.safe_load(cfg_path.read_text()) or {}).get("parity_band", band)
            break
    head = ["Run"] + [f"{k} prefix {c}" for k in kinds for c in ("att.", "parity", "ampl.", "r_s/r_t >= 1")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, per in regimes.items():
        cells = [name]
        for kind in kinds:
            v = per.get(kind, {})
            cells += [_pct(v.get(c)) if v else "" for c in ("attenuation", "parity", "amplification", "ratio_ge1")]
        lines.append("| " + " | ".join(cells) + " |")
    note = (f"\nShares of counted tokens in %, mean over each run's logged steps: attenuation w < 1 - band, parity "
            f"|w - 1| <= band, amplification w > 1 + band (band = {band}), of the weights as applied (after "
            f"`weighting`, `amplification`, `weight_clip`); r_s/r_t >= 1 from the judge's raw scores (Figure 1's "
            f"statistic; empty for judge=prob, whose §10.4 weight has no r_s / r_t pair).\n")
    (out / "vcrd_regimes.md").write_text("\n".join(lines) + "\n" + note)
    hists = {b: {k: [sum(col) / len(steps) for col in zip(*steps)] for k, steps in per.items()}
             for b, per in hist_steps.items()}
    ge1 = {b: {k: sum(v) / len(v) for k, v in per.items()} for b, per in ge1_steps.items()}
    if hists:
        ratio_histogram_plot(hists, list(vcrd_method.RATIO_EDGES), out / "ratio_hist.png", ge1=ge1)
    return {"regimes": regimes, "ratio_hist": hists, "ratio_ge1": ge1,
            "log10_ratio_edges": list(vcrd_method.RATIO_EDGES)}


def seeds_table(cfg: dict, records: list[dict]) -> str:
    """Markdown: per run (all its seeds) and benchmark, mean ± std over seeds of FAC, KL, CS
    (and avg@k); the population std, 0 for one seed."""
    import statistics

    base = {r["name"]: r["base"] for r in cfg["runs"]}
    groups: dict[str, list[dict]] = {}
    for rec in records:
        if rec["model"] in base:
            groups.setdefault(base[rec["model"]], []).append(rec)
    k = cfg["eval"].avg_k
    keys = [("fac", "FAC"), ("kl_mean", "KL"), ("cs", "CS")] + ([("avg_k", f"avg@{k}")] if k else [])
    head = ["Method", "seeds"] + [f"{b} {label}" for b in cfg["eval"].benchmarks for _, label in keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, recs in groups.items():
        cells = [name, str(len(recs))]
        for b in cfg["eval"].benchmarks:
            for key, _ in keys:
                xs = [r[b][key] for r in recs if r[b].get(key) is not None]
                if not xs:
                    cells.append("")
                    continue
                scale, fmt = (1, ".3f") if key == "kl_mean" else (100, ".2f")
                sd = statistics.pstdev(xs) if len(xs) > 1 else 0.0
                cells.append(f"{scale * sum(xs) / len(xs):{fmt}} ± {scale * sd:{fmt}}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\nMean ± std over seeds {cfg['seeds']}; FAC, CS and avg@k in %, KL in nats.\n"


def _mean_or_none(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def run_compare(path: str | Path, progress: bool = True) -> dict:
    t0 = time.time()
    cfg = load_config(path)
    if cfg["eval"].instruct:
        _instruct_judge_spec(cfg["eval"])  # a missing judge fails before any training
    out = Path(cfg["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    finals = train_runs(cfg, progress=progress)
    models = dict(finals)
    common = cfg["common"]
    if cfg["eval"].student:
        models["Student model"] = common.get("student", "embedded:student")
        if cfg["bootstrap"] is not None:
            models["Bootstrapped student"] = str(out / "bootstrap" / "final")
    if cfg["eval"].teacher:
        models["Teacher model"] = common.get("teacher", "embedded:teacher")
    evals = evaluate_models(cfg, models)
    evaluate_tasks(cfg, models, evals)  # code / choice / instruct, when the config names them
    methods = [r["name"] for r in cfg["runs"]]
    judged = judge_methods(cfg, methods) if len(methods) > 1 and cfg["eval"].judge != "none" else {
        b: {"rwr": {}, "rlr": {}, "win": {m: {n: None for n in methods} for m in methods}, "unparseable_verdicts": 0}
        for b in cfg["eval"].benchmarks}
    result = write_report(cfg, methods, evals, judged)
    print((out / "table.md").read_text())
    print(f"[compare] wrote {out}/table.md, table.csv, pareto.png, radar.png, pairwise_heatmap.png, dynamics.png, "
          f"results.json ({time.time() - t0:.0f} s)", file=sys.stderr)
    return result


__all__ = ["load_config", "run_compare", "train_runs", "evaluate_models", "evaluate_tasks", "judge_methods",
           "build_table", "write_report", "vcrd_report", "slug"]
