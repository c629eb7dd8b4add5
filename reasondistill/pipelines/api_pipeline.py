"""``reasondistill pipeline CONFIG.yaml``: the API-teacher pipeline of sft_then_grpo_api_teachers.md, end to end.

Stages, in order, each writing into the run folder (``run_dir``)::

    bank                    bank.jsonl                         §3.1 (pipelines/bank.py)
    generate:T              traces_T.jsonl    per teacher T    §3.2, Box 1 (pipelines/traces.py)
    judge:T                 verdicts_T.jsonl                   §3.2, Box 2 (pipelines/judging.py)
    filter:T                perfect_T.jsonl                    "perfect samples", stratified to N
    data                    sft_T.jsonl, grpo_prompts.jsonl    Box 3 records; GRPO prompts disjoint from SFT data
    sft:T                   sft_T/ (a `train sft` run)         §3.3, Table 3.2
    grpo:T                  grpo_T/ (a `train grpo` run)       §3.4, Table 3.3, Box 4, Box 5
    eval:MODEL:BENCH        eval/MODEL/BENCH/                  §3.5, Box 6 (`eval math`, preset pipeline)
    report                  table.md, results.json             Table 4.1

**Resuming.** A stage is done when its output exists and its done-marker
``.done/STAGE.json`` does; a run starts at the first stage that is not done. Inside a stage the
existing mechanisms resume: ``generate`` / ``judge`` skip every id already answered (the job log
of api/jobs.py, so nothing is paid twice), training continues from its newest checkpoint
(``resume=true``). A job stage that ends with failed items stops the pipeline (rerun to retry
them) unless its section sets ``allow_failures: true``.

**A changed config.** The marker holds the stage's *fingerprint*: the settings that change its
output (not concurrency, rate limits, timeouts or retries) and the fingerprints of the stages it
reads. Three readings of "resume after an edit" were possible: (a) silently reuse old outputs,
(b) silently redo everything changed, (c) stop and say what changed. The default is (c): the run
stops before the first changed stage, naming it and the changed keys. ``--rerun-changed`` redoes
every stage whose fingerprint changed (the changed stage and those that read its output, not
e.g. a teacher's evaluation after a GRPO change); their old outputs are moved to ``.superseded/TIME/``, never
deleted (they may hold paid API results), except that a ``generate`` / ``judge`` log whose
request settings (model, endpoint, template, sampling) did not change is kept and resumed, so
e.g. a larger ``limit`` only pays for the new problems.

**Models and endpoints.** A teacher or judge ``base_url`` of the form ``local:NAME`` names an
entry of ``servers:`` that the pipeline starts on 127.0.0.1 for the stages that need it and
stops at the end: ``{model: PATH}`` serves a local model with api/serve.py's ``ChatServer``;
``{rule: true}`` serves :class:`RuleJudgeServer`, a deterministic judge for the embedded task that
answers Box 2 and Box 5 over the same API (the embedded models are no judges), so every stage
runs the real client path.

**Defaults.** ``DEFAULTS`` below are the paper's (Tables 3.2 and 3.3, §3.5); ``auto`` values are
resolved on the machine that runs: QLoRA NF4 and paged 8-bit AdamW where CUDA and bitsandbytes
exist, plain LoRA and AdamW on a CPU; bf16 autocast where CUDA supports it. Where the paper is
ambiguous the choice is written next to the key. The configs are configs/pipeline_paper.yaml
(GPU users) and configs/pipeline_embedded.yaml (a CPU run end to end).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from ..api.jobs import read_results
from ..config import ConfigError
from ..data.records import DataError
from .bank import dedupe_key, stratified_sample, write_jsonl_atomic

__all__ = ["DEFAULTS", "Pipeline", "RuleJudgeServer", "add_parser", "load_config", "moving_average",
           "render_sft_record", "load_sft_template", "run_pipeline"]

DEFAULTS: dict[str, Any] = {
    "run_dir": "runs/pipeline",
    "seed": 0,
    "student": "Qwen/Qwen2.5-32B-Instruct",
    "servers": {},
    "bank": {"inputs": [], "per_source": None, "total": None, "stratify_field": None, "data_dir": None,
             "id_prefix": "math-q-"},
    "teachers": [],
    "generate": {"template": None, "temperature": 0.2, "max_tokens": 8192, "top_p": None, "seed": None,
                 "system": None, "extra_body": None, "limit": None, "timeout": 360.0, "concurrency": 8,
                 "max_retries": 5, "rpm": None, "tpm": None, "allow_failures": False},
    "judge": {"base_url": None, "model": None, "api_key_env": "OPENAI_API_KEY", "template": None,
              "temperature": 0.0, "max_tokens": 1024, "json_mode": False, "extra_body": None, "limit": None,
              "timeout": 360.0, "concurrency": 8, "max_retries": 5, "rpm": None, "tpm": None,
              "allow_failures": False},
    "filter": {"min_correct": 1, "min_quality": 10, "n": 1000, "stratify_field": None},
    "sft": {
        "template": "pipeline_sft",  # Box 3 (a reconstruction): templates/pipeline_sft.txt
        "eval_share": 0.1,  # the 9:1 split
        "evaluations": 20,  # evaluations over the whole run (eval_steps derived from the run's length)
        "train": {  # `train sft` keys; Table 3.2
            "use_peft": True, "load_in_4bit": "auto", "lora_r": 32, "lora_alpha": 64,
            "lora_target_modules": "all-linear", "lora_dropout": 0.05, "learning_rate": 1e-5,
            "lr_scheduler_type": "cosine", "warmup_ratio": 0.05, "weight_decay": 0.01, "optim": "auto",
            "mixed_precision": "auto", "per_device_train_batch_size": 2, "gradient_accumulation_steps": 8,
            # "Max Sequence Length 8192" is one limit on prompt + completion; our two limits sum to it
            "max_prompt_length": 1024, "max_completion_length": 7168, "num_train_epochs": 5,
            "metric_for_best_model": "eval/token_accuracy", "load_best_model_at_end": True,
            "merge_adapter": False, "report_to": "tensorboard", "progress": True},
    },
    "grpo": {
        "template": "pipeline_grpo",  # Box 4: templates/pipeline_grpo_prompt.txt
        "prompts": 100,
        "exclude": "sft",  # GRPO prompts exclude the SFT data's questions (sft) or every question sent to a teacher (generated)
        "source": None,  # only bank rows of this source (none: all)
        "moving_average_window": 10,
        "judge": None,  # the Box 5 judge {base_url, model, api_key_env}; none: the judge section's endpoint
        "train": {  # `train grpo` keys; Table 3.3
            "use_peft": True, "load_in_4bit": "auto", "lora_r": 32, "lora_alpha": 64,
            "lora_target_modules": "all-linear", "lora_dropout": 0.05, "learning_rate": 5e-6, "beta": 0.1,
            "num_generations": 3, "per_device_train_batch_size": 1, "gradient_accumulation_steps": 1,
            "temperature": 0.8, "top_p": 0.95, "max_completion_length": 1500, "max_prompt_length": 512,
            "num_train_epochs": 1, "optim": "auto", "mixed_precision": "auto", "loss_type": "grpo",
            "reward": "hybrid", "correctness_weight": 0.8, "format_weight": 0.2, "judge_concurrency": 4,
            "report_to": "tensorboard", "progress": True},
    },
    "eval": {
        "benchmarks": ["gsm8k", "aime24"],
        "preset": "pipeline",  # Box 6, temperature 0.5, two samples averaged, a seeded random 200
        "models": ["teachers", "base", "sft", "grpo"],
        "settings": {},  # more `eval math` keys (max_new_tokens, batch_size, question_template, data_dir, ...)
        "per_benchmark": {},  # BENCH -> `eval math` keys for that benchmark only (aime24: all 30, limit none)
    },
}

# settings that do not change a stage's output: left out of its fingerprint
_OPERATIONAL = {"timeout", "concurrency", "max_retries", "rpm", "tpm", "allow_failures", "progress", "report_to",
                "judge_concurrency", "judge_rpm", "judge_tpm", "judge_timeout", "judge_max_retries", "batch_size",
                "api_key_env", "json_mode_note"}
# a job log stays valid (and is resumed) when none of these changed
_REQUEST_KEYS = ("base_url", "model", "template", "temperature", "max_tokens", "top_p", "seed", "system",
                 "extra_body", "json_mode", "teacher")


class PipelineError(RuntimeError):
    """A stage that cannot run, or a changed config; the message says what to do."""


# --------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------
def _merge(base: dict, over: dict, where: str = "") -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if k not in out and where not in ("servers", "eval.per_benchmark", "eval.settings") and \
                not where.endswith(".train") and where != "grpo.judge":
            raise ConfigError(f"pipeline config: unknown key {where + '.' if where else ''}{k}; valid: "
                              f"{', '.join(sorted(out))}")
        out[k] = _merge(out[k], v, f"{where + '.' if where else ''}{k}") \
            if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _set_dotted(cfg: dict, item: str) -> None:
    key, sep, raw = item.partition("=")
    if not sep:
        raise ConfigError(f"--set {item!r}: expected KEY.PATH=VALUE")
    node, parts = cfg, key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = yaml.safe_load(raw)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> dict:
    """The pipeline config: ``DEFAULTS`` < the YAML file < ``--set KEY.PATH=VALUE`` overrides.
    Unknown keys are refused (``train`` sections are checked later by the method's config)."""
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) if path else {}
    raw = raw or {}
    for item in overrides or []:
        _set_dotted(raw, item)
    cfg = _merge(DEFAULTS, raw)
    names = [t.get("name") for t in cfg["teachers"]]
    if not cfg["teachers"] or not all(isinstance(n, str) and re.fullmatch(r"[A-Za-z0-9_.-]+", n) for n in names):
        raise ConfigError("pipeline config: teachers: a list of {name, base_url, model[, api_key_env]}, names of "
                          "letters, digits, _ . -")
    if len(set(names)) != len(names):
        raise ConfigError(f"pipeline config: teacher names repeat: {names}")
    for t in cfg["teachers"]:
        if not t.get("base_url") or not t.get("model"):
            raise ConfigError(f"pipeline config: teacher {t['name']!r} needs base_url and model")
    if not cfg["bank"]["inputs"]:
        raise ConfigError("pipeline config: bank.inputs is empty")
    if not (cfg["judge"]["base_url"] and cfg["judge"]["model"]):
        raise ConfigError("pipeline config: judge needs base_url and model")
    if cfg["grpo"]["exclude"] not in ("sft", "generated"):
        raise ConfigError("pipeline config: grpo.exclude must be sft or generated")
    bad = [m for m in cfg["eval"]["models"] if m not in ("teachers", "base", "sft", "grpo")]
    if bad:
        raise ConfigError(f"pipeline config: eval.models: unknown {bad}; valid: teachers, base, sft, grpo")
    return cfg


def _cuda_bnb() -> tuple[bool, bool]:
    import importlib.util

    import torch

    cuda = torch.cuda.is_available()
    return cuda, cuda and importlib.util.find_spec("bitsandbytes") is not None


def resolve_auto(train: dict) -> dict:
    """``auto`` values of a ``train`` section for this machine (module docstring)."""
    import torch

    cuda, bnb = _cuda_bnb()
    out = dict(train)
    if out.get("load_in_4bit") == "auto":
        out["load_in_4bit"] = bnb
    if out.get("optim") == "auto":
        out["optim"] = "paged_adamw_8bit" if bnb else "adamw_torch"
    if out.get("mixed_precision") == "auto":
        out["mixed_precision"] = "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    return out


# --------------------------------------------------------------------------------------------
# Box 3 records and GRPO prompts
# --------------------------------------------------------------------------------------------
def load_sft_template(value: str | None) -> tuple[str, str]:
    """(prompt, completion) of an SFT template: a shipped name (``pipeline_sft``:
    templates/pipeline_sft.txt) or a file with ``#`` comment lines, then ``[prompt]`` and
    ``[completion]`` sections."""
    from ..models import TEMPLATES_DIR

    path = TEMPLATES_DIR / f"{value}.txt" if value and (TEMPLATES_DIR / f"{value}.txt").is_file() else Path(value or "")
    if not path.is_file():
        raise FileNotFoundError(f"SFT template {value!r} not found (shipped: pipeline_sft)")
    text = path.read_text(encoding="utf-8")
    m = re.search(r"^\[prompt\]\n(.*?)^\[completion\]\n(.*)\Z", text, re.DOTALL | re.MULTILINE)
    if not m:
        raise ValueError(f"{path}: an SFT template needs a [prompt] and a [completion] section")
    prompt, completion = m.group(1).removesuffix("\n"), m.group(2).removesuffix("\n")
    if "{question}" not in prompt or "{reasoning}" not in completion or "{answer}" not in completion:
        raise ValueError(f"{path}: [prompt] needs {{question}}, [completion] {{reasoning}} and {{answer}}")
    return prompt, completion


def _fill(template: str, values: dict) -> str:
    pat = re.compile("|".join(re.escape("{" + k + "}") for k in values))
    return pat.sub(lambda m: str(values[m.group(0)[1:-1]]), template)


def render_sft_record(row: dict, template: tuple[str, str]) -> dict:
    """A filtered verdict / trace row -> an SFT record: ``question`` (the template's prompt, the
    user message under the student's chat template), ``solution`` (the teacher's reasoning and
    answer in the ``<think>...</think><answer>...</answer>`` format), ``answer`` (the bank's
    ground truth), ``problem`` (the question alone), ``id``, ``source``."""
    prompt, completion = template
    reasoning = str(row.get("reasoning") or "").strip()
    return {"id": row["id"], "question": _fill(prompt, {"question": row["question"]}),
            "solution": _fill(completion, {"reasoning": reasoning, "answer": str(row["generated_answer"]).strip()}),
            "answer": row["final_answer"], "problem": row["question"], "source": row.get("source")}


def template_path(value: str | None) -> str | None:
    """A ``generate`` / ``judge`` template setting -> a file: an existing path, or a shipped
    template's name (``plain_question`` -> templates/plain_question.txt); None: the stage's default box."""
    from ..models import TEMPLATES_DIR

    if value is None or Path(value).is_file():
        return value
    for cand in (TEMPLATES_DIR / value, TEMPLATES_DIR / f"{value}.txt"):
        if cand.is_file():
            return str(cand)
    raise FileNotFoundError(f"template {value!r} is neither a file nor a shipped template "
                            f"({', '.join(sorted(p.stem for p in TEMPLATES_DIR.glob('*.txt')))})")


def _grpo_prompt_template(value: str | None) -> str:
    from ..models import resolve_prompt_template

    return resolve_prompt_template(value) if value else "{question}"


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` values (fewer at the start), as the paper's Figures 4.3-4.4."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


# --------------------------------------------------------------------------------------------
# the rule judge (the embedded task's stand-in for an LLM judge, over the same API)
# --------------------------------------------------------------------------------------------
def _rule_verdict(prompt: str) -> str:
    from ..rewards import local_check
    from ..tasks.arith import check_solution_steps

    if "Reference answer:" in prompt and "Student answer" in prompt:  # Box 5
        ref = re.search(r"Reference answer:[ \t]*(.*)", prompt)
        pred = re.search(r"Student answer[^:]*:[ \t]*(.*)", prompt)
        ok = local_check(pred.group(1).strip() if pred else None, ref.group(1).strip() if ref else "")
        return "1" if ok is True else "0"
    dec = json.JSONDecoder()
    for m in re.finditer(r"\{", prompt):  # Box 2: the trace as the JSON object of judging.render_prompt
        try:
            obj, _ = dec.raw_decode(prompt, m.start())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and "generated_answer" in obj:
            correct = int(local_check(str(obj.get("generated_answer") or ""), obj.get("final_answer")) is True)
            steps = check_solution_steps(str(obj.get("question") or ""), str(obj.get("reasoning") or ""))
            quality = 5 if not steps else max(1, round(10 * sum(steps) / len(steps)))
            return json.dumps({"is_correct": correct, "reasoning_quality": quality})
    raise ValueError("the rule judge answers Box 2 (a JSON trace) or Box 5 prompts only")


def _rule_server_class():
    from ..api.serve import ChatServer, RequestError

    class _RuleJudgeServer(ChatServer):
        def __init__(self, address=("127.0.0.1", 0), model_name: str = "rule"):
            super().__init__(address, None, None, model_name)

        def chat_completion(self, request: dict) -> dict:
            msgs = request.get("messages") if isinstance(request, dict) else None
            if not isinstance(msgs, list) or not msgs or not isinstance(msgs[-1], dict):
                raise RequestError(400, "messages: a non-empty list is required")
            prompt = str(msgs[-1].get("content", ""))
            try:
                text = _rule_verdict(prompt)
            except ValueError as e:
                raise RequestError(400, str(e)) from None
            n_p, n_c = math.ceil(len(prompt) / 4), math.ceil(len(text) / 4)
            return {"id": f"chatcmpl-rule-{time.time_ns()}", "object": "chat.completion", "created": int(time.time()),
                    "model": self.model_name, "choices": [{"index": 0, "finish_reason": "stop",
                                                          "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": n_p, "completion_tokens": n_c, "total_tokens": n_p + n_c}}

    return _RuleJudgeServer


def RuleJudgeServer(address=("127.0.0.1", 0), model_name: str = "rule"):
    """A :class:`reasondistill.api.serve.ChatServer` that answers without a model: a Box 2 prompt
    with ``{"is_correct": local check of the answer, "reasoning_quality": 10 x the share of true
    ``a+b=c`` steps (tasks.arith's step checker; 5 when the reasoning has none)}``, a Box 5
    prompt with 1 / 0 by the local check. For the embedded pipeline and tests only."""
    return _rule_server_class()(address, model_name)


# --------------------------------------------------------------------------------------------
# the pipeline
# --------------------------------------------------------------------------------------------
def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _semantic(section: dict) -> dict:
    return {k: v for k, v in section.items() if k not in _OPERATIONAL}


def _changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _changed_keys(a, b, f"{prefix}{k}.")
        elif a != b:
            keys.append(f"{prefix}{k}")
    return keys


class Pipeline:
    """One run of the chained stages (module docstring); :meth:`run` returns the stage counts."""

    def __init__(self, cfg: dict, *, rerun_changed: bool = False, log=None):
        self.cfg = cfg
        self.run_dir = Path(cfg["run_dir"])
        self.rerun_changed = rerun_changed
        self.log = log or (lambda msg: print(f"[pipeline] {msg}", file=sys.stderr, flush=True))
        self.servers: dict[str, Any] = {}
        self.counts: dict[str, dict] = {}
        self.teachers = [t["name"] for t in cfg["teachers"]]

    # -- endpoints --------------------------------------------------------------------------
    def url(self, base_url: str) -> str:
        """``local:NAME`` -> the URL of the started server NAME (started on first use)."""
        if not str(base_url).startswith("local:"):
            return base_url
        name = base_url.split(":", 1)[1]
        if name not in self.servers:
            spec = self.cfg["servers"].get(name)
            if not isinstance(spec, dict):
                raise ConfigError(f"base_url {base_url!r}: no servers.{name} entry ({{model: PATH}} or {{rule: true}})")
            if spec.get("rule"):
                srv = RuleJudgeServer(model_name=name)
            else:
                from ..api.serve import serve

                srv = serve(spec["model"], "127.0.0.1", 0, model_name=name, device=spec.get("device", "cpu"),
                            default_max_tokens=int(spec.get("default_max_tokens", 256)))
            self.servers[name] = srv.start()
            self.log(f"started local server {name!r} at {srv.url}")
        return self.servers[name].url

    def model_id(self, base_url: str, model: str) -> str:
        return model

    def close(self) -> None:
        for name, srv in self.servers.items():
            srv.stop()
        self.servers.clear()

    # -- stage bookkeeping ------------------------------------------------------------------
    def path(self, name: str) -> Path:
        return self.run_dir / name

    def marker(self, stage: str) -> Path:
        return self.run_dir / ".done" / (stage.replace(":", "__") + ".json")

    def stages(self) -> list[tuple[str, dict, list[str], list[Path]]]:
        """``(stage, its fingerprinted settings, upstream stages, its outputs)`` in run order."""
        c, out = self.cfg, []
        out.append(("bank", {"bank": c["bank"], "seed": c["seed"]}, [], [self.path("bank.jsonl")]))
        for t in c["teachers"]:
            n = t["name"]
            out.append((f"generate:{n}", {"teacher": {k: v for k, v in t.items() if k != "api_key_env"},
                                          **_semantic(c["generate"])}, ["bank"], [self.path(f"traces_{n}.jsonl")]))
            out.append((f"judge:{n}", _semantic(c["judge"]), [f"generate:{n}"], [self.path(f"verdicts_{n}.jsonl")]))
            out.append((f"filter:{n}", {**c["filter"], "seed": c["seed"]}, [f"judge:{n}"],
                        [self.path(f"perfect_{n}.jsonl")]))
        out.append(("data", {k: c["sft"]["template"] if k == "sft_template" else c["grpo"][k]
                             for k in ("sft_template", "template", "prompts", "exclude", "source")} | {"seed": c["seed"]},
                    ["bank", *[f"filter:{n}" for n in self.teachers]],
                    [self.path(f"sft_{n}.jsonl") for n in self.teachers] + [self.path("grpo_prompts.jsonl")]))
        for n in self.teachers:
            out.append((f"sft:{n}", {"student": c["student"], "seed": c["seed"],
                                     **_semantic({k: v for k, v in c["sft"].items() if k != "template"}),
                                     "train": _semantic(c["sft"]["train"])}, ["data"],
                        [self.path(f"sft_{n}")]))
            out.append((f"grpo:{n}", {"seed": c["seed"], "judge": c["grpo"]["judge"] or
                                      {k: c["judge"][k] for k in ("base_url", "model")},
                                      "window": c["grpo"]["moving_average_window"],
                                      "train": _semantic(c["grpo"]["train"])}, ["data", f"sft:{n}"],
                        [self.path(f"grpo_{n}")]))
        ev = c["eval"]
        for label, up in self.eval_models():
            for bench in ev["benchmarks"]:
                out.append((f"eval:{label}:{bench}", {"preset": ev["preset"], "settings": _semantic(ev["settings"]),
                                                      "bench": _semantic(ev["per_benchmark"].get(bench) or {}),
                                                      "model": self.eval_model_spec(label)},
                            up, [self.path("eval") / label / bench]))
        evals = [s[0] for s in out if s[0].startswith("eval:")]
        out.append(("report", {"benchmarks": ev["benchmarks"]}, evals, [self.path("table.md")]))
        return out

    def eval_models(self) -> list[tuple[str, list[str]]]:
        want, out = self.cfg["eval"]["models"], []
        if "teachers" in want:
            out += [(f"teacher_{n}", []) for n in self.teachers]
        if "base" in want:
            out.append(("base", []))
        for kind in ("sft", "grpo"):
            if kind in want:
                out += [(f"{kind}_{n}", [f"{kind}:{n}"]) for n in self.teachers]
        return out

    def eval_model_spec(self, label: str) -> dict:
        if label.startswith("teacher_"):
            t = next(t for t in self.cfg["teachers"] if t["name"] == label.removeprefix("teacher_"))
            return {"base_url": t["base_url"], "api_model": t["model"]}
        if label == "base":
            return {"model": self.cfg["student"]}
        kind, _, n = label.partition("_")
        return {"model": str(self.path(f"{kind}_{n}") / "run" / "final")}

    def _supersede(self, paths: list[Path], keep: set[Path] = frozenset()) -> None:
        dest = self.run_dir / ".superseded" / time.strftime("%Y%m%d-%H%M%S")
        for p in paths:
            if p.exists() and p not in keep:
                dest.mkdir(parents=True, exist_ok=True)
                shutil.move(str(p), str(dest / p.name))
                self.log(f"moved {p} to {dest}")

    def status(self) -> list[tuple[str, str]]:
        """``(stage, "done" | "changed" | "to do")`` for every stage, nothing run: "changed" is a
        done stage whose fingerprint (its settings or an upstream stage's) differs from the config."""
        fps, out = {}, []
        for stage, settings, up, outputs in self.stages():
            fps[stage] = _fingerprint({"settings": settings, "up": [fps[u] for u in up]})
            mk = self.marker(stage)
            if not (mk.exists() and all(p.exists() for p in outputs)):
                out.append((stage, "to do"))
            elif json.loads(mk.read_text())["fingerprint"] != fps[stage]:  # its settings or an input's changed
                out.append((stage, "changed"))
            else:
                out.append((stage, "done"))
        return out

    # -- running ----------------------------------------------------------------------------
    def run(self, until: str | None = None) -> dict:
        """Run every stage not done yet (through ``until`` when given); returns the counts."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "pipeline_config.yaml").write_text(yaml.safe_dump(self.cfg, sort_keys=False))
        fps: dict[str, str] = {}
        t_all = time.time()
        try:
            for stage, settings, up, outputs in self.stages():
                fp = _fingerprint({"settings": settings, "up": [fps[u] for u in up]})
                fps[stage] = fp
                mk = self.marker(stage)
                done = mk.exists() and all(p.exists() for p in outputs)
                redo = False
                if done:
                    old = json.loads(mk.read_text())
                    if old["fingerprint"] == fp:
                        self.counts[stage] = old.get("counts", {}) | {"skipped": True}
                        self.log(f"{stage}: done ({mk.name}), skipped")
                        if stage == until:
                            break
                        continue
                    changed = _changed_keys(old.get("settings", {}), json.loads(json.dumps(settings, default=str)))
                    why = ", ".join(changed) or "an upstream stage changed"
                    if not self.rerun_changed:
                        raise PipelineError(f"{stage}: its settings changed since it ran ({why}); restore them, or "
                                            f"rerun with --rerun-changed to redo it and the stages that read it "
                                            f"(old outputs are moved to {self.run_dir / '.superseded'})")
                    self.log(f"{stage}: settings changed ({why}); redoing it")
                    redo = True
                if redo or (mk.exists() and not done):
                    keep = set()
                    if stage.startswith(("generate:", "judge:")) and mk.exists():
                        old_s = json.loads(mk.read_text()).get("settings", {})
                        new_s = json.loads(json.dumps(settings, default=str))
                        if all(old_s.get(k) == new_s.get(k) for k in _REQUEST_KEYS):
                            keep = set(outputs)  # same requests: the log stays valid and resumes
                    self._supersede(outputs, keep)
                    mk.unlink(missing_ok=True)
                t0 = time.time()
                self.log(f"{stage}: running")
                counts = self.run_stage(stage)
                counts["wall_s"] = round(time.time() - t0, 1)
                self.counts[stage] = counts
                mk.parent.mkdir(parents=True, exist_ok=True)
                mk.write_text(json.dumps({"stage": stage, "fingerprint": fp, "settings": settings, "counts": counts,
                                          "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2, default=str) + "\n")
                self.log(f"{stage}: done in {counts['wall_s']} s: {json.dumps({k: v for k, v in counts.items() if k != 'wall_s'})}")
                if stage == until:
                    break
        finally:
            self.close()
        self.counts["total_wall_s"] = round(time.time() - t_all, 1)
        (self.run_dir / "pipeline_counts.json").write_text(json.dumps(self.counts, indent=2, default=str) + "\n")
        return self.counts

    def run_stage(self, stage: str) -> dict:
        kind, _, rest = stage.partition(":")
        return getattr(self, f"_stage_{kind}")(rest) if rest else getattr(self, f"_stage_{kind}")()

    # -- the stages -------------------------------------------------------------------------
    def _stage_bank(self) -> dict:
        from .bank import Source, build_bank, format_summary, parse_input, probe_source

        b, sources, skipped = self.cfg["bank"], [], []
        skipped_names: set[str] = set()  # if_available inputs absent here (their --per-source caps go too)
        for item in b["inputs"]:
            item = {"spec": item} if isinstance(item, str) else dict(item)
            if "embedded" in item:  # the embedded task's problems, written as a JSONL source
                spec = item.pop("embedded")
                from ..tasks.arith import DatasetSpec

                recs = DatasetSpec.parse(spec).records(seed=self.cfg["seed"], split="train")
                path = self.path("sources") / "arith.jsonl"
                path.parent.mkdir(parents=True, exist_ok=True)
                write_jsonl_atomic(path, ({"question": r["question"], "final_answer": r["answer"]} for r in recs))
                item.setdefault("name", "arith")
                item["spec"] = f"jsonl:{path}"
            try:
                src = parse_input(item["spec"], b["data_dir"])
                if item.get("if_available"):  # reachable here? (a benchmark absent locally goes to the Hub)
                    probe_source(src, b["data_dir"])
            except DataError:
                if item.get("if_available"):
                    skipped.append(item["spec"])
                    skipped_names.add(item.get("name") or item["spec"])
                    self.log(f"bank: input {item['spec']!r} not available here, skipped (if_available)")
                    continue
                raise
            src.name, src.fields = item.get("name"), item.get("fields") or {}
            src.where, src.meta = item.get("where") or [], item.get("meta")
            src.split, src.config = item.get("split") or src.split, item.get("config")
            sources.append(src)
        if not sources:
            raise PipelineError("bank: no input is available")
        caps = [c for c in b["per_source"] or [] if not (isinstance(c, str) and c.split("=")[0] in skipped_names)]
        s = build_bank(sources, self.path("bank.jsonl"), per_source=caps, total=b["total"],
                       stratify_field=b["stratify_field"], seed=self.cfg["seed"], data_dir=b["data_dir"],
                       id_prefix=b["id_prefix"], log=self.log)
        self.log("bank:\n" + format_summary(s))
        return {"written": s["written"], "bad": s["counts"]["bad"], "duplicates": s["counts"]["duplicates"],
                "by_source": {k: v["written"] for k, v in s["sources"].items()}, "inputs_skipped": skipped}

    def _stage_generate(self, name: str) -> dict:
        from .traces import api_key_from_env, generate, parse_counts  # noqa: F401

        t = next(t for t in self.cfg["teachers"] if t["name"] == name)
        g = self.cfg["generate"]
        out = self.path(f"traces_{name}.jsonl")
        report = generate(self.path("bank.jsonl"), out, base_url=self.url(t["base_url"]), model=t["model"],
                          api_key_env=t.get("api_key_env", "OPENAI_API_KEY"), template=template_path(g["template"]),
                          temperature=g["temperature"], max_tokens=g["max_tokens"], top_p=g["top_p"], seed=g["seed"],
                          timeout=g["timeout"], concurrency=g["concurrency"], max_retries=g["max_retries"],
                          rpm=g["rpm"], tpm=g["tpm"], limit=g["limit"], system=g["system"],
                          extra_body=g["extra_body"], progress=False)
        self.log(report.line())
        rows, skipped = read_results(out)
        counts = {"traces": len(rows), "failed_ids": skipped["failed_ids"], **parse_counts(out)}
        if report.exit_code and not g["allow_failures"]:
            raise PipelineError(f"generate:{name}: {skipped['failed_ids']} problems still without a trace (see "
                                f"{out}); rerun to retry them, or set generate.allow_failures: true to go on without")
        return counts

    def _stage_judge(self, name: str) -> dict:
        from .judging import judge

        j = self.cfg["judge"]
        out = self.path(f"verdicts_{name}.jsonl")
        report, info = judge(self.path(f"traces_{name}.jsonl"), out, base_url=self.url(j["base_url"]),
                             model=j["model"], api_key_env=j["api_key_env"], template=template_path(j["template"]),
                             temperature=j["temperature"], max_tokens=j["max_tokens"], timeout=j["timeout"],
                             concurrency=j["concurrency"], max_retries=j["max_retries"], rpm=j["rpm"], tpm=j["tpm"],
                             limit=j["limit"], json_mode=j["json_mode"], extra_body=j["extra_body"], progress=False)
        self.log(report.line())
        rows, skipped = read_results(out)
        if report.exit_code and not j["allow_failures"]:
            raise PipelineError(f"judge:{name}: {skipped['failed_ids']} traces still without a verdict (see {out}); "
                                f"rerun to retry them, or set judge.allow_failures: true to go on without")
        return {"verdicts": len(rows), "judge_errors": skipped["failed_ids"], "unparsed_traces": info["unparsed"]}

    def _stage_filter(self, name: str) -> dict:
        from .judging import filter_verdicts

        f = self.cfg["filter"]
        s = filter_verdicts(self.path(f"verdicts_{name}.jsonl"), self.path(f"perfect_{name}.jsonl"),
                            min_correct=f["min_correct"], min_quality=f["min_quality"], n=f["n"],
                            stratify_field=f["stratify_field"], seed=self.cfg["seed"])
        return {"verdicts": s["verdicts"], "perfect": s["kept"], "written": s["written"]}

    def _stage_data(self) -> dict:
        tmpl = load_sft_template(self.cfg["sft"]["template"])
        counts, used = {}, set()
        for n in self.teachers:
            rows = [json.loads(x) for x in self.path(f"perfect_{n}.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
            if not rows:
                raise PipelineError(f"data: no perfect samples from teacher {n!r} (perfect_{n}.jsonl is empty): "
                                    f"nothing to distill; look at verdicts_{n}.jsonl or lower filter.min_quality")
            recs = [render_sft_record(r, tmpl) for r in rows]
            counts[f"sft_{n}"] = write_jsonl_atomic(self.path(f"sft_{n}.jsonl"), recs)
            used |= {dedupe_key(r["question"]) for r in rows}
            if self.cfg["grpo"]["exclude"] == "generated":
                traces, _ = read_results(self.path(f"traces_{n}.jsonl"))
                used |= {dedupe_key(r["question"]) for r in traces}
        g = self.cfg["grpo"]
        bank = [json.loads(x) for x in self.path("bank.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
        pool = [r for r in bank if dedupe_key(r["question"]) not in used and r.get("final_answer") not in (None, "", [])
                and (g["source"] is None or r.get("source") == g["source"])]
        picked = sorted(stratified_sample(pool, min(g["prompts"], len(pool)), lambda r: (r.get("source"),),
                                          seed=f"{self.cfg['seed']}/grpo"))
        prompt = _grpo_prompt_template(g["template"])
        from ..models import render_prompt

        grpo = [{"id": pool[i]["id"], "question": render_prompt(None, pool[i]["question"], template=prompt),
                 "problem": pool[i]["question"], "answer": pool[i]["final_answer"], "source": pool[i].get("source")}
                for i in picked]
        if not grpo:
            raise PipelineError("data: no bank question is left for GRPO once the SFT data is excluded")
        counts["grpo_prompts"] = write_jsonl_atomic(self.path("grpo_prompts.jsonl"), grpo)
        counts["grpo_pool"] = len(pool)
        return counts

    def _train(self, method_name: str, train: dict, records=None):
        from ..config import build_config
        from ..engine import train as run_train
        from ..methods import get_method

        method = get_method(method_name)
        cfg = build_config(method.Config, None, {k: v for k, v in resolve_auto(train).items() if v is not None or k in (
            "teacher", "eval_dataset")})
        result = run_train(method, cfg, records=records)
        return cfg, result

    def _stage_sft(self, name: str) -> dict:
        s = self.cfg["sft"]
        data = self.path(f"sft_{name}.jsonl")
        n = sum(1 for x in data.read_text(encoding="utf-8").splitlines() if x.strip())
        n_eval = max(1, round(s["eval_share"] * n)) if s["eval_share"] else 0
        if n_eval >= n:
            raise PipelineError(f"sft:{name}: {n} records leave nothing to train on after a {s['eval_share']} split")
        train = dict(s["train"])
        per_step = train.get("per_device_train_batch_size", 2) * train.get("gradient_accumulation_steps", 1)
        steps = max(1, math.ceil(train.get("num_train_epochs", 1) * (n - n_eval) / per_step)) \
            if train.get("num_train_epochs") else train.get("max_steps", 100)
        train |= {"student": self.cfg["student"], "teacher": None, "dataset": str(data), "question_field": "question",
                  "answer_field": "answer", "solution_field": "solution", "seed": self.cfg["seed"],
                  "output_dir": str(self.path(f"sft_{name}") / "run"), "resume": True}
        if n_eval:
            train |= {"eval_dataset": "split", "eval_size": n_eval,
                      "eval_steps": max(1, math.ceil(steps / max(1, s["evaluations"])))}
        cfg, result = self._train("sft", train)
        best = result.get("best") or {}
        return {"train_records": n - n_eval, "eval_records": n_eval, "steps": result["steps"],
                "eval_steps": cfg.eval_steps, "best_step": best.get("step"), "best_token_accuracy": best.get("value")}

    def _stage_grpo(self, name: str) -> dict:
        g = self.cfg["grpo"]
        recs = [json.loads(x) for x in self.path("grpo_prompts.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
        judge = g["judge"] or {"base_url": self.cfg["judge"]["base_url"], "model": self.cfg["judge"]["model"],
                               "api_key_env": self.cfg["judge"]["api_key_env"]}
        train = dict(g["train"])
        run = self.path(f"grpo_{name}") / "run"
        train |= {"student": str(self.path(f"sft_{name}") / "run" / "final"), "teacher": None,
                  "seed": self.cfg["seed"], "output_dir": str(run), "resume": True}
        if train.get("reward") == "hybrid" and judge.get("base_url"):
            train |= {"judge_base_url": self.url(judge["base_url"]), "judge_model": judge["model"],
                      "judge_api_key_env": judge.get("api_key_env", "OPENAI_API_KEY")}
        cfg, result = self._train("grpo", train, records=recs)
        judge_obj = result["context"].extras.get("answer_judge")
        jstats = dict(judge_obj.stats) if judge_obj is not None else {}
        if judge_obj is not None:
            judge_obj.close()
        curves = self._moving_average_plot(run, self.path(f"grpo_{name}"), g["moving_average_window"], name)
        return {"prompts": len(recs), "steps": result["steps"], "judge": jstats, **curves}

    def _moving_average_plot(self, run: Path, out_dir: Path, window: int, name: str) -> dict:
        from ..report.plots import read_metrics

        rows = [m for m in read_metrics(run / "metrics.jsonl") if "reward/task_mean" in m]
        steps = [m["step"] for m in rows]
        reward, loss = [m["reward/task_mean"] for m in rows], [m["loss"] for m in rows]
        ma_r, ma_l = moving_average(reward, window), moving_average(loss, window)
        write_jsonl_atomic(out_dir / "moving_average.jsonl",
                           ({"step": s, "reward": r, "loss": lo, f"reward_ma{window}": a, f"loss_ma{window}": b}
                            for s, r, lo, a, b in zip(steps, reward, loss, ma_r, ma_l)))
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for ax, raw, ma, title in ((axes[0], reward, ma_r, "mean reward"), (axes[1], loss, ma_l, "training loss")):
            ax.plot(steps, raw, color="tab:blue", alpha=0.3, lw=1, label="per step")
            ax.plot(steps, ma, color="tab:blue", lw=2, label=f"moving average ({window})")
            ax.set_title(f"GRPO ({name}): {title}")
            ax.set_xlabel("step (one prompt)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        png = out_dir / "moving_average.png"
        fig.savefig(png, dpi=110)
        plt.close(fig)
        return {"reward_first": reward[0] if reward else None, f"reward_ma{window}_last": ma_r[-1] if ma_r else None,
                "plot": str(png)}

    def _stage_eval(self, rest: str) -> dict:
        from ..config import build_config
        from ..eval.base import run_eval
        from ..eval.tasks import eval_config_class

        label, _, bench = rest.rpartition(":")
        ev = self.cfg["eval"]
        spec = self.eval_model_spec(label)
        if "base_url" in spec:
            spec = {"base_url": self.url(spec["base_url"]), "api_model": spec["api_model"]}
            t = next(t for t in self.cfg["teachers"] if t["name"] == label.removeprefix("teacher_"))
            spec["api_key_env"] = t.get("api_key_env", "OPENAI_API_KEY")
        settings = {"preset": ev["preset"], **ev["settings"], **(ev["per_benchmark"].get(bench) or {}), **spec,
                    "benchmark": bench, "output_dir": str(self.path("eval") / label / bench), "progress": False}
        cfg = build_config(eval_config_class("math"), None, {k: v for k, v in settings.items()})
        _, summary, _ = run_eval(cfg)
        return {"accuracy": summary.get("accuracy"), "num_questions": summary.get("num_questions"),
                "samples": summary.get("samples")}

    def _stage_report(self) -> dict:
        ev = self.cfg["eval"]
        results: dict[str, dict] = {}
        for label, _ in self.eval_models():
            for bench in ev["benchmarks"]:
                mk = self.marker(f"eval:{label}:{bench}")
                if mk.exists():
                    results.setdefault(label, {})[bench] = json.loads(mk.read_text())["counts"].get("accuracy")
        groups = [("Teacher models", [f"teacher_{n}" for n in self.teachers]), ("Student (untrained)", ["base"]),
                  ("After distillation (SFT)", [f"sft_{n}" for n in self.teachers]),
                  ("After SFT + GRPO", [f"grpo_{n}" for n in self.teachers])]
        lines = ["| model | " + " | ".join(ev["benchmarks"]) + " |", "|---|" + "---:|" * len(ev["benchmarks"])]
        for title, labels in groups:
            labels = [lab for lab in labels if lab in results]
            if not labels:
                continue
            lines.append(f"| *{title}* |" + " |" * len(ev["benchmarks"]))
            for lab in labels:
                cells = [f"{100 * results[lab][b]:.1f}" if results[lab].get(b) is not None else "-" for b in ev["benchmarks"]]
                lines.append(f"| {lab} | " + " | ".join(cells) + " |")
        text = ("Mean accuracy (%) over the samples per question, the protocol of sft_then_grpo_api_teachers.md §3.5 "
                f"(preset {ev['preset']}).\n\n" + "\n".join(lines) + "\n")
        self.path("table.md").write_text(text, encoding="utf-8")
        self.path("results.json").write_text(json.dumps(results, indent=2) + "\n")
        self.log("report:\n" + text)
        return {"models": len(results)}


def run_pipeline(config: str | Path | None, overrides: list[str] | None = None, *, rerun_changed: bool = False,
                 until: str | None = None, run_dir: str | None = None) -> dict:
    """Load the config (``load_config``) and run the pipeline; returns the per-stage counts."""
    cfg = load_config(config, overrides)
    if run_dir:
        cfg["run_dir"] = run_dir
    return Pipeline(cfg, rerun_changed=rerun_changed).run(until=until)


def _cmd_pipeline(args) -> int:
    if args.status:
        cfg = load_config(args.config, args.set)
        if args.run_dir:
            cfg["run_dir"] = args.run_dir
        for stage, state in Pipeline(cfg).status():
            print(f"{stage:40s} {state}")
        return 0
    try:
        counts = run_pipeline(args.config, args.set, rerun_changed=args.rerun_changed, until=args.until,
                              run_dir=args.run_dir)
    except (PipelineError, DataError) as e:
        print(f"reasondistill pipeline: {e}", file=sys.stderr)
        return 1
    print(json.dumps(counts, indent=2, default=str))
    return 0


def add_parser(sub) -> None:
    """Add ``pipeline`` to the ``reasondistill`` sub-commands (``func`` set)."""
    p = sub.add_parser("pipeline", help="the API-teacher pipeline end to end (bank -> generate -> judge -> filter -> "
                                        "sft -> grpo -> eval), resuming at the first unfinished stage",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="pipeline YAML (configs/pipeline_paper.yaml, configs/pipeline_embedded.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a config value (YAML syntax), e.g. --set sft.train.num_train_epochs=1")
    p.add_argument("--run-dir", default=None, help="override run_dir")
    p.add_argument("--rerun-changed", action="store_true",
                   help="redo the stages whose settings changed and the stages that read their outputs")
    p.add_argument("--until", default=None, metavar="STAGE", help="stop after this stage (e.g. filter:gpt41)")
    p.add_argument("--status", action="store_true", help="list the stages and which are done; run nothing")
    p.set_defaults(func=_cmd_pipeline)
