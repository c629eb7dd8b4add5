"""The tests' fault-injecting OpenAI-compatible server (stdlib HTTP on 127.0.0.1).

:class:`ScriptedServer` answers each request with a *plan* ``(status, body, headers, delay)``
(or ``(..., truncate)``: send the headers with the full ``Content-Length``, then only half the
body, and close the connection), taken from a queue of scripted steps, from a ``respond(request
JSON)`` function, or a default. It records every request (``seen``) and the peak number in
flight. ``tests/test_api_client.py`` drives the retry policy with scripts;
``tests/test_api_pipeline.py`` uses :class:`FaultyTeacher` / :class:`FaultyJudge`, respond
functions that answer arithmetic bank problems (or judge them) and inject, at set rates,
429 + Retry-After, 500, responses slower than the client's timeout, bodies cut short and
non-JSON bodies, counting per problem id how many clean answers (the ones a provider would
bill and the client can use) were served.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def ok_body(content: str = "hello", usage: dict | None = None, finish_reason: str = "stop") -> str:
    body = {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": finish_reason}]}
    if usage is not None:
        body["usage"] = usage
    return json.dumps(body)


def step(status=200, body=None, headers=None, delay=0.0, truncate=False):
    """One scripted response."""
    return (status, ok_body() if body is None else body, headers or {}, delay, truncate)


class _ScriptedHandler(BaseHTTPRequestHandler):
    server: "ScriptedServer"
    protocol_version = "HTTP/1.1"  # keep-alive, like real servers (the SDK pools connections)

    def do_POST(self):  # noqa: N802
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        srv = self.server
        with srv.lock:
            srv.seen.append({"t": time.monotonic(), "path": self.path, "headers": dict(self.headers), "body": raw})
            if srv.respond is not None:
                plan = srv.respond(json.loads(raw) if raw else {})
            else:
                plan = srv.script.popleft() if srv.script else srv.default
            srv.in_flight += 1
            srv.peak = max(srv.peak, srv.in_flight)
        status, body, headers, delay = plan[:4]
        truncate = len(plan) > 4 and plan[4]
        try:
            if delay:
                time.sleep(delay)
        finally:
            # no longer in flight once the answer is ready, before it is sent: a client that
            # has its answer and sends its next request is never counted twice (``peak`` is at
            # most the client's own bound on requests in flight)
            with srv.lock:
                srv.in_flight -= 1
        try:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers.items():
                self.send_header(k, v)
            if truncate:
                self.send_header("Connection", "close")
            self.end_headers()
            if truncate:
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
            else:
                self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out (or died) and left

    def log_message(self, *args):
        pass


class ScriptedServer(ThreadingHTTPServer):
    daemon_threads = True
    # the stdlib default backlog is 5: under load, connections beyond it wait for a SYN resend
    # (1 s), past the clients' 0.5 s connect timeout, so the client counts a request that the
    # server never sees
    request_queue_size = 128

    def __init__(self, script=(), default=None, respond=None):
        super().__init__(("127.0.0.1", 0), _ScriptedHandler)
        self.script, self.default, self.respond = deque(script), default or step(), respond
        self.lock = threading.Lock()
        self.seen: list[dict] = []
        self.in_flight = self.peak = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def start(self) -> "ScriptedServer":
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def handle_error(self, request, client_address):
        pass


# --------------------------------------------------------------------------------------------
# answering bank problems, with faults
# --------------------------------------------------------------------------------------------
FAULTS = ("429", "500", "slow", "truncated", "nonjson")


class _Faulty:
    """A ``respond`` function with a fault schedule drawn from a seeded generator (under the
    server's lock, so the sequence is reproducible for a given arrival order).

    ``rates``: fault -> probability per request; ``slow_delay`` must exceed the client's
    timeout; ``poison``: ids answered with 500 every time (until cleared), so that a run ends
    with failures and the next one retries them. Counts: ``requests`` (per id), ``paid`` (clean
    answers served, per id), ``faults`` (per kind)."""

    def __init__(self, rates: dict | None = None, seed: int = 0, slow_delay: float = 1.5, latency: float = 0.01,
                 poison: set | None = None):
        self.rates = dict(rates or {})
        self.rng = random.Random(seed)
        self.slow_delay, self.latency = slow_delay, latency
        self.poison = set(poison or ())
        self.requests: Counter = Counter()
        self.paid: Counter = Counter()
        self.faults: Counter = Counter()

    def _fault(self) -> str | None:
        r = self.rng.random()
        acc = 0.0
        for kind in FAULTS:
            acc += self.rates.get(kind, 0.0)
            if r < acc:
                return kind
        return None

    def problem_id(self, request: dict) -> str:
        raise NotImplementedError

    def reply(self, request: dict, rid: str) -> str:
        raise NotImplementedError

    def __call__(self, request: dict):
        rid = self.problem_id(request)
        self.requests[rid] += 1
        if rid in self.poison:
            self.faults["poison"] += 1
            return step(500, json.dumps({"error": {"message": f"poisoned {rid}"}}))
        fault = self._fault()
        if fault is not None:
            self.faults[fault] += 1
        if fault == "429":
            return step(429, json.dumps({"error": {"message": "rate limited"}}), {"Retry-After": "0.05"})
        if fault == "500":
            return step(500, json.dumps({"error": {"message": "internal"}}))
        if fault == "nonjson":
            return step(200, "<html><body>502 Bad Gateway</body></html>")
        body = ok_body(self.reply(request, rid) if fault is None else "(a faulty answer)",
                       {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30})
        if fault == "slow":
            return step(200, body, delay=self.slow_delay)
        if fault == "truncated":
            return step(200, body, truncate=True)
        self.paid[rid] += 1
        return step(200, body, delay=self.latency)


_QUESTION = re.compile(r"What is ([0-9+\-]+)\?")


class FaultyTeacher(_Faulty):
    """Answers ``[q-00001] What is 3+4-2?`` (the test bank's questions carry their id) with a
    worked chain and ``<final_answer>N</final_answer>``."""

    def problem_id(self, request: dict) -> str:
        return re.search(r"\[(q-\d+)\]", request["messages"][-1]["content"]).group(1)

    def reply(self, request: dict, rid: str) -> str:
        expr = _QUESTION.search(request["messages"][-1]["content"]).group(1)
        nums = [int(x) for x in re.findall(r"[+-]?\d+", expr)]
        total, lines = nums[0], []
        for x in nums[1:]:
            new = total + x
            lines.append(f"{total}{'+' if x >= 0 else '-'}{abs(x)}={new}")
            total = new
        return "\n".join(lines) + f"\n<final_answer>{total}</final_answer>"


class FaultyJudge(_Faulty):
    """Judges with Box 2's JSON: correct when the generated answer equals the ground truth;
    a share ``malformed`` of the clean replies is prose without a verdict (counted per id in
    ``malformed_ids``: each is a paid reply the pipeline must request again)."""

    def __init__(self, *a, malformed: float = 0.0, **kw):
        super().__init__(*a, **kw)
        self.malformed = malformed
        self.malformed_ids: Counter = Counter()

    @staticmethod
    def _payload(request: dict) -> dict:
        prompt = request["messages"][-1]["content"]
        return json.loads(prompt.split("Input: ", 1)[1].split("\n", 1)[0])

    def problem_id(self, request: dict) -> str:
        return re.search(r"\[(q-\d+)\]", self._payload(request)["question"]).group(1)

    def reply(self, request: dict, rid: str) -> str:
        payload = self._payload(request)
        if self.rng.random() < self.malformed:
            self.malformed_ids[rid] += 1
            return "I think the answer looks fine overall."
        ok = int(str(payload["generated_answer"]) == str(payload["final_answer"]))
        return json.dumps({"is_correct": ok, "reasoning_quality": 10 if ok else 3})
