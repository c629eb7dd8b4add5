"""The execution sandbox (reasondistill.eval.sandbox): verdicts, limits, containment, cleanup.

The hostile programs here are bounded by construction (the fork bomb makes at most 585
processes, the memory bomb allocates at most 4 GB), so that a broken sandbox fails the test
instead of taking the machine down.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time

import pytest

from reasondistill.eval.sandbox import STATUSES, _pids_of_uid, run_many, run_program, sandbox_info

LINUX = sys.platform.startswith("linux")
ROOT = LINUX and os.geteuid() == 0


@pytest.fixture(scope="module")
def info():
    return sandbox_info()


def _gone(result) -> bool:
    return bool(result.workdir) and not os.path.exists(result.workdir) and not os.path.exists(
        os.path.dirname(result.workdir))


def test_pass_output_and_cleanup(info):
    r = run_program("import os\nprint('hello', os.getcwd())\nopen('scratch.txt', 'w').write('x')\n")
    assert r.status == "passed" and r.passed and r.returncode == 0, r
    assert r.stdout.split()[0] == "hello"
    assert r.stdout.split()[1] == r.workdir  # it ran in the fresh folder ...
    assert _gone(r)  # ... which is removed
    assert "__sandbox_end_" not in r.stdout  # the end marker is stripped
    assert info["status"] == "passed" and info["guard"] is True


@pytest.mark.parametrize("source, detail", [
    ("assert 1 + 1 == 3\n", "AssertionError"),
    ("def f(:\n    pass\n", "SyntaxError"),
    ("raise ValueError('bad value')\n", "ValueError: bad value"),
    ("import sys\nsys.exit(3)\n", "exit status 3"),
    # leaving early with status 0 must not count as passing the tests that follow
    ("import sys\nsys.exit(0)\nassert False\n", "before its last statement"),
    ("exit()\nassert False\n", "before its last statement"),
    ("import os\nos._exit(0)\nassert False\n", "before its last statement"),
])
def test_failures(source, detail):
    r = run_program(source, timeout=10)
    assert r.status == "failed" and not r.passed, r
    assert detail in r.detail, r.detail
    assert _gone(r)


def test_early_exit_allowed_without_require_end():
    assert run_program("import sys\nsys.exit(0)\n", require_end=False).status == "passed"


def test_traceback_names_program_lines():
    r = run_program("x = 1\ny = undefined_name\n")
    assert r.status == "failed" and "NameError" in r.detail
    assert 'File "<sandbox-program>", line 2' in r.stderr and "y = undefined_name" in r.stderr


def test_infinite_loop_times_out_and_folder_removed():
    t0 = time.monotonic()
    r = run_program("while True:\n    pass\n", timeout=1.0)
    wall = time.monotonic() - t0
    assert r.status == "timeout" and not r.passed, r
    assert "wall-clock" in r.detail
    assert 0.9 <= r.seconds < 5.0 and wall < 6.0  # killed at the limit (slack for a loaded machine)
    assert _gone(r)


def test_cpu_limit():
    r = run_program("while True:\n    pass\n", timeout=20.0, cpu_seconds=1)
    assert r.status == "timeout" and "CPU" in r.detail, r
    assert r.seconds < 15.0  # 1 s of CPU, long before the 20 s wall-clock limit


def test_memory_bomb_fails_and_host_unaffected():
    src = "chunks = []\nfor _ in range(400):\n    chunks.append(bytearray(10**7))\nprint('survived')\n"  # 4 GB
    r = run_program(src, timeout=20.0, memory_mb=256)
    assert r.status == "failed" and "MemoryError" in r.detail, r
    assert "survived" not in r.stdout
    assert r.seconds < 10.0
    assert run_program("print(sum(range(10)))").stdout.strip() == "45"  # still fine afterwards


FORK_BOMB = """
import os, time
depth = 0
for _ in range(8):
    try:
        pid = os.fork()
    except OSError:
        continue
    if pid == 0:
        os.write(1, b"child\\n")
        depth += 1
        if depth >= 3:
            break
time.sleep(60)
"""


def _process_count() -> int:
    return sum(name.isdigit() for name in os.listdir("/proc"))


@pytest.mark.skipif(not LINUX, reason="process accounting via /proc")
@pytest.mark.parametrize("guard", [False, True], ids=["os-limits-only", "with-guard"])
def test_fork_bomb_contained(guard):
    limit = 16
    base = _process_count()
    peak = [base]
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], _process_count())
            time.sleep(0.01)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    try:
        r = run_program(FORK_BOMB, timeout=1.5 if guard else 3.0, max_processes=limit, guard=guard)
    finally:
        stop.set()
        th.join()
    assert r.isolation["nproc_enforced"], r.isolation
    children = r.stdout.count("child")
    if guard:
        assert children == 0  # os.fork is refused before the kernel limit matters
    else:
        assert 1 <= children <= limit - 1  # the kernel refused forks beyond RLIMIT_NPROC
    assert r.status == "timeout" and r.seconds < 10.0
    # other work on the machine may add a few processes; an uncontained bomb adds hundreds
    assert peak[0] - base <= limit + 40, (peak[0], base)
    if r.isolation.get("uid") is not None:
        assert _pids_of_uid(r.isolation["uid"]) == []  # nothing left behind
    t0 = time.monotonic()
    assert run_program("print(1)").passed and time.monotonic() - t0 < 5.0  # responsive


@pytest.mark.skipif(not LINUX, reason="process accounting via /proc")
def test_escaped_session_is_killed_without_namespaces(info):
    """A child that leaves the process group (setsid) is still killed: by uid when root."""
    if info.get("uid") is None:
        pytest.skip("only the process group is killed without a dedicated uid")
    src = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\nprint('parent done')\n"
    r = run_program(src, guard=False, namespaces=False, timeout=5.0)
    assert r.status == "passed" and r.isolation["namespaces"] is False
    assert _pids_of_uid(r.isolation["uid"]) == []


@pytest.fixture()
def victim(tmp_path):
    d = tmp_path / "precious"
    d.mkdir()
    f = d / "data.txt"
    f.write_text("keep me")
    return d, f


DESTRUCTIVE = {
    "os.remove": "import os\nos.remove({f!r})\n",
    "os.unlink": "import os\nos.unlink({f!r})\n",
    "shutil.rmtree": "import shutil\nshutil.rmtree({d!r})\n",
    "open-w": "open({f!r}, 'w').write('overwritten')\n",
    "os.rename": "import os\nos.rename({f!r}, 'stolen.txt')\n",
    "os.chmod": "import os\nos.chmod({f!r}, 0o000)\n",
    "os.system": "import os\nassert os.system('rm -f {f}') == 0\n",
}


@pytest.mark.parametrize("guard", [True, False], ids=["with-guard", "os-permissions-only"])
@pytest.mark.parametrize("op", sorted(DESTRUCTIVE))
def test_destructive_calls_outside_fail(victim, op, guard, info):
    if not guard and info.get("uid") is None:
        pytest.skip("without a dedicated uid only the Python guard protects files of the same user")
    d, f = victim
    mode = f.stat().st_mode
    r = run_program(DESTRUCTIVE[op].format(f=str(f), d=str(d)), timeout=10.0, guard=guard)
    assert r.status == "failed" and not r.passed, r
    if guard:  # refused by the guard itself, before the OS had to
        assert "PermissionError: sandbox:" in r.detail, r.detail
    else:
        assert "sandbox:" not in r.detail and ("Permission denied" in r.detail or "AssertionError" in r.detail), r
    assert f.exists() and f.read_text() == "keep me" and f.stat().st_mode == mode
    assert _gone(r)


def test_guard_allows_work_inside_the_folder():
    src = """
import os, shutil, tempfile, pathlib
os.makedirs('a/b/c')
pathlib.Path('a/b/c/f.txt').write_text('x')
with open('a/g.txt', 'w') as fh:
    fh.write('y')
os.rename('a/g.txt', 'a/h.txt')
fd, name = tempfile.mkstemp()
os.close(fd)
os.remove(name)
shutil.rmtree('a')
assert not os.path.exists('a')
os.mkdir('locked')
os.chmod('locked', 0)
print('ok')
"""
    r = run_program(src)
    assert r.status == "passed" and r.stdout.strip() == "ok", r
    assert _gone(r)  # even with a folder it made unreadable


def test_parent_secrets_not_visible(monkeypatch, info):
    monkeypatch.setenv("OPENAI_API_KEY", "secret-value-1234")
    monkeypatch.setenv("HF_TOKEN", "hf-secret-5678")
    src = f"""
import os
print(sorted(os.environ.items()))
print(open('/proc/self/environ', 'rb').read())
try:
    print(open('/proc/{os.getpid()}/environ', 'rb').read())
except OSError as e:
    print('parent environ:', type(e).__name__)
"""
    r = run_program(src)
    assert r.status == "passed", r
    own_env = "\n".join(r.stdout.splitlines()[:2])  # os.environ and /proc/self/environ
    for leaked in ("OPENAI_API_KEY", "secret-value-1234", "HF_TOKEN", "hf-secret-5678"):
        assert leaked not in own_env
    if info.get("uid") is not None:  # another uid cannot read the parent's environment at all
        assert "secret-value-1234" not in r.stdout and "hf-secret-5678" not in r.stdout
        assert "parent environ: PermissionError" in r.stdout


@pytest.fixture()
def server():
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    yield srv, srv.getsockname()[1]
    srv.close()


def _accepted(srv) -> bool:
    try:
        conn, _ = srv.accept()
    except (socket.timeout, OSError):
        return False
    conn.close()
    return True


@pytest.mark.parametrize("guard", [True, False], ids=["with-guard", "namespace-only"])
def test_network_blocked(server, guard, info):
    if not guard and not info.get("network_isolated"):
        pytest.skip("no network namespace available: only the Python guard blocks sockets here")
    srv, port = server
    src = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=3)\nprint('connected')\n"
    r = run_program(src, timeout=10.0, guard=guard)
    assert r.status == "failed" and "connected" not in r.stdout, r
    assert ("PermissionError: sandbox:" in r.detail) if guard else ("unreachable" in r.detail), r.detail
    assert not _accepted(srv)
    # the same program without isolation does connect: the test server is really reachable
    open_r = run_program(src, timeout=10.0, guard=False, isolate_network=False)
    assert open_r.status == "passed" and _accepted(srv), open_r


def test_runs_as_unprivileged_uid_when_root(info):
    if not ROOT:
        pytest.skip("a dedicated uid is only used when the evaluator runs as root")
    r = run_program("import os\nprint(os.getuid(), os.geteuid(), os.getgroups())\n")
    uid, euid, groups = r.stdout.split(maxsplit=2)
    assert int(uid) == int(euid) == r.isolation["uid"] != 0 and groups.strip() == "[]"


def test_output_is_bounded():
    r = run_program("import sys\nfor _ in range(100):\n    sys.stdout.write('x' * 1_000_000)\n", file_size_mb=1,
                    tail_chars=1000)
    assert r.status == "failed" and "File too large" in r.detail, r
    assert len(r.stdout) <= 1000


def test_run_many_order_and_bounded_concurrency():
    srcs = [f"import time\ntime.sleep(0.5)\nprint({i})\n" for i in range(6)]
    t0 = time.monotonic()
    res = run_many(srcs, workers=2, timeout=10.0)
    wall = time.monotonic() - t0
    assert [r.stdout.strip() for r in res] == [str(i) for i in range(6)]
    assert all(r.status == "passed" for r in res) and all(r.status in STATUSES for r in res)
    assert wall >= 1.5  # 6 x 0.5 s on 2 workers: never more than 2 at once


def test_bad_arguments():
    with pytest.raises(ValueError):
        run_program("pass", timeout=0)
    with pytest.raises(ValueError):
        run_many(["pass"], workers=0)


def test_logging_and_numpy_testing_import_while_fork_stays_refused():
    """EvalPlus's checker uses numpy.testing, which imports logging, which registers fork hooks:
    registering is harmless (fork itself is refused), so it must not break the program."""
    src = ("import logging, concurrent.futures\nimport numpy.testing as npt\n"
           "npt.assert_allclose(0.1 + 0.2, 0.3)\nimport os\n"
           "try:\n    os.fork()\nexcept PermissionError as e:\n    print('refused', e)\n")
    r = run_program(src)
    assert r.status == "passed", r
    assert "refused" in r.stdout and "os.fork" in r.stdout
