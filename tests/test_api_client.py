"""ChatClient and the local OpenAI-compatible server, over real HTTP on 127.0.0.1.

Two kinds of servers are started here: the real ``reasondistill.api.serve`` server with the
embedded teacher, and a tiny scripted stdlib server (``tests/fault_server.py``) that answers with
a queue of canned responses (429, 500, slow, malformed, 401, ...) to exercise the retry policy.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request

import pytest

from fault_server import ScriptedServer, ok_body, step
from reasondistill.api.client import APIError, ChatClient

QUESTION = [{"role": "user", "content": "What is 1+2+3+4?"}]


# the scripted fault-injection server lives in tests/fault_server.py (shared with test_api_pipeline)
@pytest.fixture
def scripted():
    """``scripted(*steps, default=step(), respond=None) -> ScriptedServer`` (serving)."""
    servers = []

    def make(*script, default=None, respond=None):
        srv = ScriptedServer(script, default or step(), respond).start()
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        srv.stop()


class RecordingSleep:
    def __init__(self):
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        time.sleep(seconds)


def client_for(url, **kw) -> ChatClient:
    kw.setdefault("api_key", "")
    kw.setdefault("timeout", 5.0)
    kw.setdefault("backoff", 0.01)
    kw.setdefault("max_backoff", 0.05)
    return ChatClient(url, "m", **kw)


# --------------------------------------------------------------------------------------
# retry policy against the scripted server
# --------------------------------------------------------------------------------------
def test_429_honours_retry_after_then_succeeds(scripted):
    srv = scripted(step(429, json.dumps({"error": {"message": "slow down"}}), {"Retry-After": "0.3"}), step())
    sleep = RecordingSleep()
    c = client_for(srv.url, backoff=5.0, max_backoff=10.0, sleep=sleep)  # the backoff alone would wait >= 2.5 s
    assert c.chat(QUESTION) == "hello"
    assert sleep.calls == [0.3]
    assert srv.seen[1]["t"] - srv.seen[0]["t"] >= 0.29
    assert c.stats == {"calls": 1, "requests": 2, "retries": 1, "failures": 0}


def test_retry_after_is_capped_at_max_backoff(scripted):
    srv = scripted(step(429, "{}", {"Retry-After": "100"}), step())
    sleep = RecordingSleep()
    assert client_for(srv.url, max_backoff=0.05, sleep=sleep).chat(QUESTION) == "hello"
    assert sleep.calls == [0.05]


def test_500_twice_then_200_with_exponential_jittered_backoff(scripted):
    srv = scripted(step(500, "oops"), step(503, "busy"), step(body=ok_body("third time")))
    sleep = RecordingSleep()
    c = client_for(srv.url, backoff=0.02, max_backoff=1.0, sleep=sleep)
    assert c.chat(QUESTION) == "third time"
    assert len(srv.seen) == 3
    assert 0.01 <= sleep.calls[0] < 0.02 and 0.02 <= sleep.calls[1] < 0.04  # backoff * 2**(k-1) * [0.5, 1)
    assert c.stats["retries"] == 2 and c.stats["failures"] == 0


def test_always_500_gives_up_after_max_retries(scripted):
    srv = scripted(default=step(500, "internal kaboom"))
    c = client_for(srv.url, max_retries=3)
    with pytest.raises(APIError) as ei:
        c.chat(QUESTION)
    e = ei.value
    assert len(srv.seen) == 4 and e.attempts == 4 and e.status == 500 and e.retryable
    msg = str(e)
    assert "HTTP 500" in msg and "4 attempts" in msg and f"{srv.url}/chat/completions" in msg
    assert "internal kaboom" in msg and "HTTP 500 x3" in msg
    assert c.stats == {"calls": 1, "requests": 4, "retries": 3, "failures": 1}


def test_slow_response_times_out_and_is_retried(scripted):
    srv = scripted(default=step(delay=1.5))
    c = client_for(srv.url, timeout=0.25, max_retries=1)
    t0 = time.monotonic()
    with pytest.raises(APIError) as ei:
        c.chat(QUESTION)
    assert time.monotonic() - t0 < 1.4
    assert len(srv.seen) == 2 and ei.value.attempts == 2 and ei.value.status is None
    assert "timed out after 0.25 s" in str(ei.value) and "2 attempts" in str(ei.value)


def test_malformed_json_is_retried_then_reported_with_a_snippet(scripted):
    srv = scripted(default=step(200, '{"choices": ['))
    with pytest.raises(APIError) as ei:
        client_for(srv.url, max_retries=2).chat(QUESTION)
    e = ei.value
    assert len(srv.seen) == 3 and e.attempts == 3 and e.status == 200
    assert "not valid JSON" in str(e) and '{"choices": [' in str(e) and e.body == '{"choices": ['


def test_missing_content_is_retried(scripted):
    no_content = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": None}}]})
    srv = scripted(step(200, no_content), step(200, '{"choices": []}'), step(body=ok_body("finally")))
    c = client_for(srv.url)
    assert c.chat(QUESTION) == "finally"
    assert c.stats["retries"] == 2
    srv2 = scripted(default=step(200, no_content))
    with pytest.raises(APIError, match=r"choices\[0\]\.message\.content"):
        client_for(srv2.url, max_retries=1).chat(QUESTION)


def test_401_is_raised_at_once_and_the_key_never_leaks(scripted):
    key = "sk-test-abcdefghijklmnop-9876"
    echo = json.dumps({"error": {"message": f"Incorrect API key provided: {key}"}})
    srv = scripted(step(401, echo))  # a server that (badly) echoes the key
    sleep = RecordingSleep()
    c = client_for(srv.url, api_key=key, sleep=sleep)
    with pytest.raises(APIError) as ei:
        c.chat(QUESTION)
    e = ei.value
    assert e.status == 401 and e.attempts == 1 and not e.retryable and sleep.calls == [] and len(srv.seen) == 1
    assert "Incorrect API key provided" in str(e) and "not retryable" in str(e)
    assert key not in str(e) and key not in e.body and key not in repr(c)
    assert srv.seen[0]["headers"]["Authorization"] == f"Bearer {key}"


def test_other_4xx_not_retried(scripted):
    for status in (400, 404, 422):
        srv = scripted(step(status, json.dumps({"error": {"message": f"nope {status}"}})))
        with pytest.raises(APIError, match=f"HTTP {status}: nope {status}") as ei:
            client_for(srv.url).chat(QUESTION)
        assert ei.value.attempts == 1 and len(srv.seen) == 1


def test_connection_refused_gives_up_after_retries():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = client_for(f"http://127.0.0.1:{port}/v1", max_retries=2)
    with pytest.raises(APIError) as ei:
        c.chat(QUESTION)
    e = ei.value
    assert e.attempts == 3 and e.status is None and "connection error" in str(e)
    assert f"127.0.0.1:{port}/v1/chat/completions" in str(e) and "3 attempts" in str(e)
    assert c.stats == {"calls": 1, "requests": 3, "retries": 2, "failures": 1}


def test_map_chat_keeps_order_and_returns_failures_in_place(scripted):
    def respond(req):
        text = req["messages"][-1]["content"]
        if text.startswith("bad"):
            return step(400, json.dumps({"error": {"message": f"refused {text}"}}))
        if text.startswith("boom"):
            return step(500, "down")
        return step(body=ok_body(f"echo {text}"), delay=0.2)  # long enough that 3 workers overlap even on a busy machine

    srv = scripted(respond=respond)
    c = client_for(srv.url, max_retries=1)
    texts = ["a", "bad1", "b", "boom", "c", "d", "bad2", "e"]
    convs = [[{"role": "user", "content": t}] for t in texts] + ["not a conversation"]
    out = c.map_chat(convs, workers=3, max_tokens=8)
    assert len(out) == len(convs)
    for t, r in zip(texts, out):
        if t.startswith("bad"):
            assert isinstance(r, APIError) and r.status == 400 and f"refused {t}" in str(r)
        elif t == "boom":
            assert isinstance(r, APIError) and r.status == 500 and r.attempts == 2
        else:
            assert r == f"echo {t}"
    assert isinstance(out[-1], APIError) and out[-1].attempts == 0 and isinstance(out[-1].__cause__, ValueError)
    assert 1 < srv.peak <= 3
    assert json.loads(srv.seen[0]["body"])["max_tokens"] == 8
    with pytest.raises(TypeError, match="temprature"):
        c.map_chat(convs, temprature=0.5)


def test_base_url_rule_and_api_key_default(scripted, monkeypatch):
    with pytest.raises(ValueError, match=r"http://127\.0\.0\.1:8000/v1"):
        ChatClient("http://127.0.0.1:8000", "m")
    with pytest.raises(ValueError, match=r"'http://h:1/v1'"):
        ChatClient("http://h:1/v1/chat/completions", "m")
    with pytest.raises(ValueError, match="http://"):
        ChatClient("127.0.0.1:8000/v1", "m")
    srv = scripted()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment-0000")
    c = ChatClient(srv.url + "/", "m")
    assert c.base_url == srv.url
    assert "sk-from-the-environment" not in repr(c) and "***0000" in repr(c)
    assert c.chat(QUESTION) == "hello"
    assert srv.seen[0]["headers"]["Authorization"] == "Bearer sk-from-the-environment-0000"
    assert srv.seen[0]["path"] == "/v1/chat/completions"
    sent = json.loads(srv.seen[0]["body"])
    assert sent["model"] == "m" and sent["messages"] == QUESTION and sent["temperature"] == 0.0
    assert "seed" not in sent and "stop" not in sent


# --------------------------------------------------------------------------------------
# the real server with the embedded teacher
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def teacher_server():
    from reasondistill.api.serve import serve

    srv = serve("embedded:teacher").start()
    yield srv
    srv.stop()


@pytest.fixture
def teacher(teacher_server):
    return ChatClient(teacher_server.url, "embedded:teacher", api_key="", timeout=30, max_retries=1, backoff=0.01)


def raw_post(url: str, data: bytes, headers=None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_server_round_trip_schema(teacher):
    full = teacher.chat_full(QUESTION, max_tokens=64)
    assert full["object"] == "chat.completion" and full["model"] == "embedded:teacher"
    assert full["id"].startswith("chatcmpl-")
    choice = full["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "stop"
    assert choice["logprobs"] is None
    u = full["usage"]
    assert u["prompt_tokens"] > 0 and u["completion_tokens"] > 0
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert teacher.chat(QUESTION, max_tokens=64) == choice["message"]["content"]


def test_teacher_solves_the_chain_greedily_and_deterministically(teacher):
    a = teacher.chat(QUESTION, max_tokens=64)
    assert a == teacher.chat(QUESTION, max_tokens=64)
    assert a.splitlines() == ["1+2=3", "3+3=6", "6+4=10", r"\boxed{10}"]
    s1 = teacher.chat(QUESTION, temperature=1.0, seed=7, max_tokens=64)
    assert s1 == teacher.chat(QUESTION, temperature=1.0, seed=7, max_tokens=64)


def test_server_lists_the_model(teacher, teacher_server):
    assert teacher.list_models() == ["embedded:teacher"]
    with urllib.request.urlopen(teacher_server.url + "/models/embedded:teacher", timeout=10) as r:
        assert json.loads(r.read())["id"] == "embedded:teacher"


def test_server_rejects_bad_requests_with_400(teacher, teacher_server):
    for kw, field in [({"temperature": -1}, "temperature"), ({"max_tokens": 0}, "max_tokens"),
                      ({"top_p": 1.5}, "top_p"), ({"extra_body": {"stream": True}}, "stream")]:
        with pytest.raises(APIError) as ei:
            teacher.chat(QUESTION, **kw)
        assert ei.value.status == 400 and ei.value.attempts == 1 and f"HTTP 400: {field}:" in str(ei.value)
    url = teacher_server.url + "/chat/completions"
    status, body = raw_post(url, json.dumps({"model": "embedded:teacher"}).encode())
    assert status == 400 and body["error"]["param"] == "messages" and "missing" in body["error"]["message"]
    status, body = raw_post(url, json.dumps({"messages": [{"role": "robot", "content": "x"}]}).encode())
    assert status == 400 and body["error"]["param"] == "messages[0].role"
    status, body = raw_post(url, b'{"messages": [')
    assert status == 400 and "not valid JSON" in body["error"]["message"]
    other = ChatClient(teacher_server.url, "some-other-model", api_key="", max_retries=3)
    with pytest.raises(APIError, match="some-other-model") as ei:
        other.chat(QUESTION)
    assert ei.value.status == 404 and ei.value.attempts == 1


def test_server_length_stop_logprobs_and_n(teacher):
    full = teacher.chat_full(QUESTION, max_tokens=3)
    assert full["choices"][0]["finish_reason"] == "length" and full["usage"]["completion_tokens"] == 3
    full = teacher.chat_full(QUESTION, stop=["\n"], extra_body={"logprobs": True})
    choice = full["choices"][0]
    assert choice["message"]["content"] == "1+2=3" and choice["finish_reason"] == "stop"
    entries = choice["logprobs"]["content"]
    assert "".join(e["token"] for e in entries) == "1+2=3\n"
    assert all(e["logprob"] <= 0 for e in entries) and full["usage"]["completion_tokens"] == len(entries)
    full = teacher.chat_full(QUESTION, temperature=1.0, seed=1, max_tokens=64, extra_body={"n": 2})
    assert [c["index"] for c in full["choices"]] == [0, 1]


def test_map_chat_against_the_server(teacher):
    convs = [[{"role": "user", "content": f"What is {a}+1+1+1?"}] for a in range(4)]
    out = teacher.map_chat(convs, workers=2, max_tokens=64)
    assert [o.splitlines()[-1] for o in out] == [rf"\boxed{{{a + 3}}}" for a in range(4)]


def test_server_api_key(teacher_server):
    from reasondistill.api.serve import ChatServer

    guarded = ChatServer(("127.0.0.1", 0), teacher_server.model, teacher_server.tokenizer, "embedded:teacher",
                         api_key="local-secret").start()
    try:
        with pytest.raises(APIError) as ei:
            ChatClient(guarded.url, "embedded:teacher", api_key="wrong", max_retries=2).chat(QUESTION)
        assert ei.value.status == 401 and ei.value.attempts == 1
        good = ChatClient(guarded.url, "embedded:teacher", api_key="local-secret")
        assert good.chat(QUESTION, max_tokens=64).endswith(r"\boxed{10}")
    finally:
        guarded.stop()
