"""``generate`` -> ``judge`` -> ``filter`` over real HTTP on 127.0.0.1 (pipelines/traces.py,
pipelines/judging.py, api/jobs.py).

The main test runs a few hundred bank problems against the fault-injecting server of
``tests/fault_server.py`` (429 + Retry-After, 500, responses slower than the timeout, bodies
cut short, non-JSON bodies, and "poisoned" problems that fail until the server is fixed), kills
one ``generate`` and one ``judge`` run with SIGKILL midway (real subprocesses), reruns them to
completion and checks: every bank id has exactly one result line, error lines only before it, no
record lost, duplicate *paid* requests (clean answers the server served twice for one problem)
at most the concurrency, and the request counts the client reports equal to the server's own.
"Paid" counts only the clean answers: an injected fault (a slow or cut-short reply) is the
server's failure, and a malformed verdict is counted separately (a paid reply the pipeline
must, by design, ask again).

The last test serves the embedded teacher with ``transformers serve`` (``transformers[serving]``;
``HF_HUB_OFFLINE=1``), started and stopped by its process id.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from fault_server import FaultyJudge, FaultyTeacher, ScriptedServer, ok_body, step
from reasondistill.api.jobs import RateLimiter
from reasondistill.pipelines.api_commands import register
from reasondistill.pipelines.judging import VerdictError, parse_verdict
from reasondistill.pipelines.traces import generate, parse_response

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = 8
MAX_RETRIES = 3
RATES = {"429": 0.04, "500": 0.04, "slow": 0.02, "truncated": 0.03, "nonjson": 0.03}


def read_lines(path) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text().split("\n") if x]


def run_cli(*argv) -> int:
    p = argparse.ArgumentParser()
    register(p.add_subparsers(dest="command"))
    args = p.parse_args([str(a) for a in argv])
    return args.func(args)


def make_bank(tmp_path, n: int) -> Path:
    rng = random.Random(0)
    src = tmp_path / "problems.jsonl"
    with open(src, "w") as fh:
        for i in range(1, n + 1):
            nums = [rng.randint(1, 9) for _ in range(3)]
            fh.write(json.dumps({"question": f"[q-{i:05d}] What is {'+'.join(map(str, nums))}?",
                                 "answer": str(sum(nums)), "topic": "a" if i % 3 else "b"}) + "\n")
    bank = tmp_path / "bank.jsonl"
    assert run_cli("bank", "--input", f"jsonl:{src}", "--name", "arith", "--input", f"jsonl:{src}",
                   "--output", bank) == 0  # the second copy is all duplicates
    return bank


def label(question: str) -> str:
    return question.split("]")[0][1:]


def kill_midway(cmd: list[str], output: Path, lines: int, timeout: float = 60.0) -> int:
    """Start ``cmd``, SIGKILL it once ``output`` has ``lines`` lines; the lines then."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENAI_API_KEY": ""}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < timeout:
            if output.exists() and output.read_bytes().count(b"\n") >= lines:
                break
            if proc.poll() is not None:
                raise AssertionError(f"the run ended before it was killed: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.01)
        else:
            raise AssertionError("the run never got far enough to be killed")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return output.read_bytes().count(b"\n")


def settle(srv: ScriptedServer, timeout: float = 10.0, quiet: float = 0.3) -> int:
    """Wait until the server has no request in flight and has read no new one for ``quiet``
    seconds, then return how many it has seen. A request a client sent (or gave up on) just
    before it exited can still be waiting, unread, in the server's accept queue; counting before
    the server reads it would not match the client's count."""
    t0 = time.monotonic()
    n, since = len(srv.seen), time.monotonic()
    while time.monotonic() - t0 < timeout:
        time.sleep(0.02)
        if len(srv.seen) != n or srv.in_flight:
            n, since = len(srv.seen), time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return n


def check_exactly_once(path: Path, ids: list[str]) -> list[dict]:
    lines = read_lines(path)  # every line parses: a cut-off last line was repaired
    results = Counter(x["id"] for x in lines if "error" not in x)
    assert set(results) == set(ids) and set(results.values()) == {1}  # every id exactly once
    last_result = {x["id"]: i for i, x in enumerate(lines) if "error" not in x}
    for i, x in enumerate(lines):
        if "error" in x:
            assert i < last_result[x["id"]]  # an error line, then (later) the result line
    return lines


# --------------------------------------------------------------------------------------------
def test_generate_judge_filter_survive_sigkill_under_faults(tmp_path):
    n = 300
    bank = make_bank(tmp_path, n)
    bank_rows = read_lines(bank)
    ids = [r["id"] for r in bank_rows]
    assert len(ids) == n and ids[0] == "math-q-00001"
    label_of = {r["id"]: label(r["question"]) for r in bank_rows}
    poison = {"q-00005", "q-00150", "q-00290"}
    teacher = FaultyTeacher(RATES, seed=1, slow_delay=1.0, latency=0.03, poison=poison)
    srv = ScriptedServer(respond=teacher).start()
    traces = tmp_path / "traces.jsonl"
    api = ["--base-url", srv.url, "--timeout", "0.5", "--concurrency", CONCURRENCY, "--max-retries", MAX_RETRIES,
           "--no-progress"]
    t0 = time.monotonic()
    try:
        # run 1: killed midway
        cmd = [sys.executable, "-m", "reasondistill.pipelines.api_commands", "generate", "--bank", str(bank),
               "--output", str(traces), "--model", "teacher", *map(str, api)]
        kill_midway(cmd, traces, lines=100)
        seen_run1 = settle(srv)
        lines1 = read_lines(traces) if traces.read_bytes().endswith(b"\n") else None
        recorded1 = sum(x["attempts"] for x in read_lines_tolerant(traces))
        # what the killed run sent but never recorded: its requests in flight, with their retries
        assert 0 <= seen_run1 - recorded1 <= CONCURRENCY * (1 + MAX_RETRIES)
        # run 2: completes all but the poisoned problems (and, rarely, one whose every attempt met a fault)
        rc = run_cli("generate", "--bank", bank, "--output", traces, "--model", "teacher", *api)
        s2 = json.loads((tmp_path / "traces.summary.json").read_text())
        assert rc == 1 and len(poison) <= s2["remaining"] <= len(poison) + 3 and s2["failed"] >= len(poison)
        assert s2["requests"] == settle(srv) - seen_run1  # the client's count is the server's
        assert s2["skipped"] >= 100 - 1 - CONCURRENCY  # the killed run's lines (one maybe cut off) count
        # run 3 (and more if a problem met faults on every attempt): the server is fixed; only the
        # failed problems are requested again
        teacher.poison.clear()
        left = s2["remaining"]
        for _ in range(3):
            before = settle(srv)
            rc = run_cli("generate", "--bank", bank, "--output", traces, "--model", "teacher", *api)
            s3 = json.loads((tmp_path / "traces.summary.json").read_text())
            assert s3["requests"] == settle(srv) - before
            assert s3["skipped"] == n - left and s3["retried"] == left and s3["done"] + s3["remaining"] == left
            left = s3["remaining"]
            if rc == 0:
                break
        assert rc == 0 and left == 0
        lines = check_exactly_once(traces, ids)
        assert all(any(x["id"] == i and "error" in x for x in lines) for i in ids if label_of[i] in poison)
        # duplicate paid requests: at most the ones in flight when run 1 died
        dup = sum(c - 1 for c in teacher.paid.values() if c > 1)
        assert dup <= CONCURRENCY, (dup, teacher.paid.most_common(5))
        assert set(teacher.paid) == {label_of[i] for i in ids}  # every problem was answered
        assert all(teacher.faults[k] > 0 for k in RATES)  # every fault kind happened
        results = [x for x in lines if "error" not in x]
        assert all(x["parse"] == "tag" and x["generated_answer"] == x["final_answer"] for x in results)
        assert sum(x["attempts"] for x in lines) <= len(srv.seen)
        gen_stats = {"server_requests": len(srv.seen), "paid": sum(teacher.paid.values()), "duplicate_paid": dup,
                     "faults": dict(teacher.faults)}
    finally:
        srv.stop()

    # judge: killed midway as well, malformed verdicts recorded as judge errors and redone
    jf = FaultyJudge(RATES, seed=2, slow_delay=1.0, latency=0.03, malformed=0.05)
    jsrv = ScriptedServer(respond=jf).start()
    verdicts = tmp_path / "verdicts.jsonl"
    japi = ["--base-url", jsrv.url, "--timeout", "0.5", "--concurrency", CONCURRENCY, "--max-retries", MAX_RETRIES,
            "--no-progress"]
    try:
        cmd = [sys.executable, "-m", "reasondistill.pipelines.api_commands", "judge", "--traces", str(traces),
               "--output", str(verdicts), "--model", "judge", *map(str, japi)]
        kill_midway(cmd, verdicts, lines=100)
        rcs = []
        for _ in range(4):  # malformed verdicts are drawn again each time: a few reruns finish
            before = settle(jsrv)
            rcs.append(run_cli("judge", "--traces", traces, "--output", verdicts, "--model", "judge", *japi))
            sj = json.loads((tmp_path / "verdicts.summary.json").read_text())
            assert sj["requests"] == settle(jsrv) - before
            if rcs[-1] == 0:
                break
        assert rcs[-1] == 0, rcs
        vlines = check_exactly_once(verdicts, ids)
        assert sum(1 for x in vlines if x.get("error_type") == "malformed_verdict") == sum(jf.malformed_ids.values())
        assert all("judge_response" in x for x in vlines if x.get("error_type") == "malformed_verdict")
        dup = sum(c - 1 - jf.malformed_ids[k] for k, c in jf.paid.items() if c > 1)
        assert dup <= CONCURRENCY
        assert all(x["is_correct"] == 1 and x["reasoning_quality"] == 10 for x in vlines if "error" not in x)
    finally:
        jsrv.stop()

    # filter: the perfect ones, stratified by source down to N
    out = tmp_path / "sft.jsonl"
    assert run_cli("filter", "--verdicts", verdicts, "--output", out, "-n", 100) == 0
    kept = read_lines(out)
    assert len(kept) == 100 and len({x["id"] for x in kept}) == 100
    assert {"question", "final_answer", "reasoning", "generated_answer", "is_correct"} <= set(kept[0])
    wall = time.monotonic() - t0
    print(json.dumps({"generate": gen_stats, "judge_server_requests": len(jsrv.seen), "wall_s": round(wall, 1)}))


def read_lines_tolerant(path: Path) -> list[dict]:
    """Lines of a file a kill may have cut short at the end."""
    out = []
    for x in path.read_text().split("\n"):
        try:
            out.append(json.loads(x))
        except json.JSONDecodeError:
            pass
    return out


# --------------------------------------------------------------------------------------------
def test_cut_off_last_line_is_repaired_and_a_second_run_is_refused(tmp_path):
    from reasondistill.api.jobs import JobLog
    from reasondistill.data.records import DataError

    path = tmp_path / "t.jsonl"
    path.write_text('{"id": "a", "x": 1}\n{"id": "b", "error": "boom", "error_type": "http_error"}\n{"id": "c", "x"')
    with JobLog(path) as log:
        assert log.dropped_partial == len('{"id": "c", "x"') and set(log.done) == {"a"} and set(log.failed) == {"b"}
        with pytest.raises(DataError, match="locked"):
            JobLog(path).open()
        log.append({"id": "c", "x": 3})
    assert [x["id"] for x in read_lines(path)] == ["a", "b", "c"]


def test_api_key_is_sent_but_never_written_or_printed(tmp_path, capsys, monkeypatch):
    key = "sk-test-very-secret-key-1234567890"
    echo = json.dumps({"error": {"message": f"Incorrect API key provided: {key}"}})
    srv = ScriptedServer(default=step(401, echo)).start()
    try:
        bank = tmp_path / "bank.jsonl"
        bank.write_text(json.dumps({"id": "math-q-00001", "question": "What is 1+1?", "final_answer": "2"}) + "\n")
        monkeypatch.setenv("MY_TEACHER_KEY", key)
        out = tmp_path / "traces.jsonl"
        rc = run_cli("generate", "--bank", bank, "--output", out, "--base-url", srv.url, "--model", "t",
                     "--api-key-env", "MY_TEACHER_KEY", "--no-progress")
        assert rc == 1
        headers = {k.lower(): v for k, v in srv.seen[0]["headers"].items()}
        assert headers["authorization"] == f"Bearer {key}" and len(srv.seen) == 1  # 401: no retry
        text = "".join(p.read_text() for p in tmp_path.iterdir()) + "".join(capsys.readouterr())
        assert key not in text and "Incorrect API key provided: ***" in out.read_text()
        monkeypatch.delenv("MY_TEACHER_KEY")
        with pytest.raises(ValueError, match="MY_TEACHER_KEY"):
            generate(bank, out, base_url="https://api.example.com/v1", model="t", api_key_env="MY_TEACHER_KEY")
    finally:
        srv.stop()


def test_rate_limits():
    t = [0.0]
    sleeps = []
    lim = RateLimiter(rpm=2, tpm=100, clock=lambda: t[0], sleep=lambda s: (sleeps.append(s), t.__setitem__(0, t[0] + s)))
    lim.acquire(10), lim.acquire(10)
    assert t[0] == 0.0
    lim.acquire(10)  # the third request waits for the first to leave the 60 s window
    assert 60.0 <= t[0] < 61.5
    slot = lim.acquire(10)
    lim.settle(slot, 95)  # its real usage fills the token budget
    before = t[0]
    lim.acquire(50)
    assert t[0] > before


def test_rpm_is_applied_to_every_attempt(tmp_path):
    srv = ScriptedServer(respond=FaultyTeacher({"500": 0.2}, seed=3)).start()
    try:
        bank = tmp_path / "bank.jsonl"
        bank.write_text("".join(json.dumps({"id": f"math-q-{i:05d}", "question": f"[q-{i:05d}] What is {i}+1?",
                                            "final_answer": str(i + 1)}) + "\n" for i in range(1, 25)))
        rep = generate(bank, tmp_path / "t.jsonl", base_url=srv.url, model="t", rpm=10, rate_window=0.5,
                       concurrency=8, progress=False)
        assert rep.exit_code == 0 and rep.requests == len(srv.seen) > 24
        times = sorted(s["t"] for s in srv.seen)
        # at most 10 attempts start per 0.5 s window, so n attempts span at least (ceil(n/10) - 1) windows;
        # checked on the server's arrival times, which load can bunch near a window's edge (a sliding
        # 0.45 s count over arrivals failed 1 run in ~12 on a loaded machine), so the span, not a count
        assert times[-1] - times[0] >= 0.5 * (-(-len(times) // 10) - 1) - 0.05
        without_limit = ScriptedServer(respond=FaultyTeacher({}, seed=3)).start()
        try:  # the same job unlimited is faster than that bound, so the bound measures the limiter
            t0 = time.time()
            generate(bank, tmp_path / "u.jsonl", base_url=without_limit.url, model="t", concurrency=8, progress=False)
            assert time.time() - t0 < 0.5 * (-(-len(times) // 10) - 1) - 0.05
        finally:
            without_limit.stop()
    finally:
        srv.stop()


@pytest.mark.parametrize("text, finish, answer, how, error", [
    ("a\nb\n<final_answer>42</final_answer>", "stop", "42", "tag", None),
    ("a\n<final_answer>$\\frac{1}{2}$</final_answer>\n", "stop", "\\frac{1}{2}", "tag", None),
    ("step 1\nstep 2\n<final_answer> 7", "stop", "7", "open_tag", None),
    ("step 1\nstep 2\nFinal answer: \\boxed{12}\n\n", "stop", "12", "last_line", None),
    ("x = 3\n**Final Answer:** 3", "stop", "3", "last_line", None),
    ("42", "stop", "42", "last_line", "no reasoning before the answer (last_line)"),
    ("", "stop", None, None, "empty response"),
    ("a\n<final_answer></final_answer>", "stop", None, "tag", "no answer found (tag)"),
    ("a long\nreasoning cut", "length", None, None, "the response stopped at max_tokens (finish_reason 'length')"),
])
def test_parse_response(text, finish, answer, how, error):
    got = parse_response(text, finish)
    assert (got["generated_answer"], got["parse"], got["parse_error"]) == (answer, how, error)


@pytest.mark.parametrize("reply, verdict, how", [
    ('{"is_correct": 1, "reasoning_quality": 10}', (1, 10), "strict"),
    (' {"is_correct": 0, "reasoning_quality": 5}\n', (0, 5), "strict"),
    ('```json\n{"is_correct": true, "reasoning_quality": 9.0}\n```', (1, 9), "fallback"),
    ('Here you go: {"is_correct": "1", "reasoning_quality": "8"} hope it helps', (1, 8), "fallback"),
    ('is_correct: 1, reasoning_quality: 7', (1, 7), "fallback"),
    ('{"is_correct": 1, "reasoning_quality": 10', (1, 10), "fallback"),  # cut short: the pattern fallback
])
def test_parse_verdict(reply, verdict, how):
    v, h = parse_verdict(reply)
    assert (v["is_correct"], v["reasoning_quality"]) == verdict and h == how


@pytest.mark.parametrize("reply", ["", "looks right", '{"is_correct": 2, "reasoning_quality": 10}',
                                   '{"is_correct": 1, "reasoning_quality": 11}', '{"is_correct": 1}',
                                   '{"is_correct": 1, "reasoning_quality": 7.5}', "[1, 10]"])
def test_malformed_verdicts_are_errors(reply):
    with pytest.raises(VerdictError):
        parse_verdict(reply)


# --------------------------------------------------------------------------------------------
# a real OpenAI-compatible server: `transformers serve` with the embedded teacher
# --------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def transformers_server(tmp_path_factory):
    pytest.importorskip("fastapi", reason="transformers serve needs transformers[serving]")
    pytest.importorskip("uvicorn", reason="transformers serve needs transformers[serving]")
    exe = Path(sys.executable).with_name("transformers")
    if not exe.exists():
        pytest.skip("the transformers command is not installed next to this python")
    from reasondistill.tasks.arith import ASSETS_DIR

    model = str(Path(ASSETS_DIR) / "teacher")
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path_factory.mktemp("hfcache")),
           "OMP_NUM_THREADS": "1"}
    log = open(tmp_path_factory.mktemp("serve") / "serve.log", "w+")
    proc = subprocess.Popen([str(exe), "serve", "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
                             model], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() - t0 > 120:
                proc.kill()
                log.seek(0)
                pytest.fail(f"transformers serve did not start: {log.read()[-2000:]}")
            time.sleep(0.5)
    yield {"url": url + "/v1", "model": model, "startup_s": time.monotonic() - t0}
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    log.close()


@pytest.mark.slow
def test_generate_and_judge_against_transformers_serve(tmp_path, transformers_server):
    srv = transformers_server
    problems = [(1, 2, 3, 4), (7, 1, 5, 2), (9, 9, 1, 3), (4, 4, 4, 4)]  # its task: 4-term single-digit sums
    bank = tmp_path / "bank.jsonl"
    bank.write_text("".join(json.dumps({"id": f"math-q-{i:05d}", "question": "What is " + "+".join(map(str, p)) + "?",
                                        "final_answer": str(sum(p)), "source": "arith", "meta": {}}) + "\n"
                            for i, p in enumerate(problems, start=1)))
    template = tmp_path / "plain.txt"
    template.write_text("{question}")  # the embedded teacher knows only its own prompt format
    traces = tmp_path / "traces.jsonl"
    rc = run_cli("generate", "--bank", bank, "--output", traces, "--base-url", srv["url"], "--model", srv["model"],
                 "--template", template, "--temperature", 0, "--max-tokens", 64, "--concurrency", 2,
                 "--timeout", 60, "--no-progress")
    assert rc == 0
    rows = read_lines(traces)
    assert [r["generated_answer"] for r in rows] == [r["final_answer"] for r in rows]  # \boxed{N} on the last line
    assert all(r["parse"] == "last_line" and r["usage"]["completion_tokens"] > 0 for r in rows)
    assert rows[0]["reasoning"] == "1+2=3\n3+3=6\n6+4=10"
    # the arithmetic teacher is no judge: its replies are malformed verdicts, recorded, never a crash
    verdicts = tmp_path / "verdicts.jsonl"
    short = tmp_path / "judge.txt"
    short.write_text("{input_json}")  # Box 2 is longer than the tiny teacher's 512-token context (a 400, tested below)
    rc = run_cli("judge", "--traces", traces, "--output", verdicts, "--base-url", srv["url"], "--model", srv["model"],
                 "--template", short, "--max-tokens", 16, "--concurrency", 2, "--timeout", 60, "--no-progress")
    assert rc == 1
    v = read_lines(verdicts)
    assert len(v) == len(problems) and all(x["error_type"] == "malformed_verdict" for x in v)
    assert all(isinstance(x["judge_response"], str) for x in v)
    # the paper's Box 2 does not fit the context: a 400 with the server's message, not retried
    rc = run_cli("judge", "--traces", traces, "--output", tmp_path / "v2.jsonl", "--base-url", srv["url"],
                 "--model", srv["model"], "--max-tokens", 16, "--timeout", 60, "--no-progress")
    v2 = read_lines(tmp_path / "v2.jsonl")
    assert rc == 1 and all(x["error_type"] == "http_error" and x["attempts"] == 1 for x in v2)
    print("transformers serve: started in", round(srv["startup_s"], 1), "s; a Box 2 prompt gives:", v2[0]["error"])
    rc = run_cli("generate", "--bank", bank, "--output", traces, "--base-url", srv["url"], "--model", srv["model"],
                 "--template", template, "--no-progress")
    assert rc == 0 and len(read_lines(traces)) == len(problems)  # all skipped as done
