"""Run untrusted Python programs (model-written code and its tests) in a separate, limited process.

:func:`run_program` runs one program and returns an :class:`ExecResult`; :func:`run_many` runs
many with bounded concurrency. The code-generation evaluation (``eval/code_eval.py``, HumanEval
pass@1 as in validity_calibrated_distillation.md §10.3) executes every model answer here.

How one program runs
--------------------
The parent writes nothing of the program to disk. It starts ``python -I -B -X utf8 sandbox.py``
(this file as a launcher script; ``-I``: no ``PYTHON*`` variables, no user site, no script
directory on ``sys.path``) in a new session, with a clean environment (``PATH``, ``LANG``,
``LC_ALL``, ``HOME`` and ``TMPDIR`` pointing at the sandbox folder, plus only what the caller
passes in ``env``: nothing is copied from ``os.environ``), its working directory a fresh
temporary folder, and sends the program and settings through stdin (then replaced by
``/dev/null``). The launcher, single-threaded and before any program code runs:

1. **Namespaces** (Linux): ``unshare`` of new network, PID, IPC and UTS namespaces (as root
   directly; otherwise inside a new user namespace when unprivileged user namespaces are
   enabled). It then forks a tiny init process (PID 1 of the new PID namespace, which reaps
   orphans) and the program process. The new network namespace has only a loopback interface
   that is down: no connection to anything, not even ``127.0.0.1`` of the host.
2. **Resource limits** (``setrlimit``, soft = hard): ``RLIMIT_AS`` (address space,
   ``memory_mb``), ``RLIMIT_CPU`` (``cpu_seconds``; SIGXCPU, then SIGKILL one second later),
   ``RLIMIT_FSIZE`` (largest file it may write, ``file_size_mb``; stdout/stderr included),
   ``RLIMIT_NOFILE``, ``RLIMIT_CORE = 0`` and ``RLIMIT_NPROC`` (``max_processes``).
3. **Unprivileged user.** Linux never applies ``RLIMIT_NPROC`` to uid 0 (nor to a process
   with ``CAP_SYS_ADMIN``/``CAP_SYS_RESOURCE``), so a fork bomb run as root is not bounded by
   it. When the parent runs as root, the program therefore runs under a fresh, random,
   otherwise unused uid/gid (no supplementary groups, ``no_new_privs`` so set-uid binaries
   cannot give root back): ``RLIMIT_NPROC`` then counts exactly this program's processes and
   threads, the program cannot write, delete or signal anything that belongs to root, and
   the parent can find and kill everything it started by uid. Interpreter directories that
   uid could not reach (e.g. a pyenv under ``/root``, mode 0700) stay importable through
   directory descriptors opened before the switch (``sys.path`` entries become
   ``/proc/self/fd/N``). When not root, ``RLIMIT_NPROC`` is set to the user's current task
   count plus ``max_processes``.
4. **Python guard** (``guard=True``, the default; in the spirit of HumanEval's "reliability
   guard", written anew): before the program runs, ``os.system``/``popen``/``fork``/``exec*``/
   ``spawn*``/``posix_spawn*``/``kill``/``killpg``/``setsid``/``set*id``, ``subprocess.Popen``,
   ``socket`` creation and ``ctypes`` are disabled; ``open`` (and ``os.open``) for writing,
   ``os.remove``/``unlink``/``rmdir``/``rename``/``replace``/``link``/``symlink``/``mkdir``/
   ``chmod``/``chown``/``truncate``/``chdir`` and ``shutil.rmtree`` are refused for paths that
   resolve outside the sandbox folder. A refused call raises ``PermissionError``.
5. The program runs as ``__main__`` in the same interpreter. It *passes* when it exits with
   status 0 after running to its last statement: with ``require_end=True`` (default) a
   program that leaves early with status 0 (``sys.exit(0)``, ``exit()``, ``os._exit(0)``)
   *fails*, so a model answer cannot skip the tests by exiting.

The parent enforces the wall-clock ``timeout`` (including interpreter start-up), then kills the
whole process group, the PID namespace (its init dies, the kernel kills the rest) and, when a
uid was assigned, every process still running under that uid; it removes the temporary folder
in every case (pass, failure, timeout, error), and reports the last ``tail_chars`` characters
of stdout and stderr (both go to files, bounded by ``RLIMIT_FSIZE``, so a program printing
forever cannot fill the parent's memory).

What is guaranteed, and what is not
-----------------------------------
Guaranteed on Linux when the parent runs as root and ``ExecResult.isolation`` reports
``namespaces`` and a ``uid`` (the CI setting; each point is checked by tests/test_sandbox.py
with the Python guard switched off): the program and everything it started is dead and its
folder removed when :func:`run_program` returns; wall time <= ``timeout`` (+ start-up and
kill overhead, tens of milliseconds); address space <= ``memory_mb`` per process; at most
``max_processes`` processes and threads at once; no file written larger than
``file_size_mb``; no environment variable of the parent is visible (nor readable through
``/proc``); no network (empty network namespace); no file of another user can be written,
deleted, renamed or have its mode changed, and no process of another user can be signalled
(OS permissions of an unprivileged uid). Elsewhere, ``isolation`` says which of these were
in force for each run (``namespaces``, ``network_isolated``, ``uid``, ``nproc_enforced``,
``guard``); :func:`sandbox_info` reports it for the machine once.

Not guaranteed:

- **Reading** files is not restricted: whatever is world-readable (and the interpreter's own
  folders) can be read and printed into the result, including the host's ``/proc`` (it is
  not remounted): the process list and every process's command line, though not other
  users' environments. Do not keep secrets in world-readable files or in command-line
  arguments on an evaluation machine.
- Processes killed at a timeout may stay a moment as zombies (no memory, one pid each) until
  the system's init reaps them; without a PID namespace all killed descendants do.
- World-writable places (``/tmp``, ``/dev/shm``, ``/var/tmp``) are writable by the sandbox
  uid if a program bypasses the Python guard (each file <= ``file_size_mb``; tmpfs memory is
  not counted by ``RLIMIT_AS``); such files are not cleaned up.
- Without root the program runs as the evaluating user: it can do to that user's files and
  processes whatever the user can, once past the Python guard, and it can read the
  evaluator's own environment through ``/proc/<pid>/environ``. Without unprivileged user
  namespaces as well there is no network namespace (the only network barrier is then the
  Python guard) and no PID namespace (a program that calls ``setsid`` after bypassing the
  guard outlives the run, since only its process group is killed).
- The Python guard is a safety net against accidents (a model answer that calls
  ``shutil.rmtree``), **not** a security boundary: Python code can reach the original
  functions (``posix`` internals, ``gc``, frames) and undo it. The OS mechanisms above are the
  boundary. Likewise ``require_end`` catches accidental or naive early exits, not a program
  that searches the interpreter's memory for the end marker.
- No seccomp, no mount namespace, no cgroup: CPU share and disk I/O bandwidth are not
  limited, and kernel vulnerabilities are out of scope. Programs from truly hostile sources
  belong in a VM or a gVisor/firejail/nsjail container around the whole evaluation.
- Outside Linux only the rlimits, the clean environment, the temporary folder, the process
  group kill and the Python guard apply.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

__all__ = ["ExecResult", "STATUSES", "run_program", "run_many", "sandbox_info"]

STATUSES = ("passed", "failed", "timeout", "error")
"""``passed``: exit status 0 after the last statement; ``failed``: the program ran and failed
(non-zero exit, an exception such as ``AssertionError`` or ``MemoryError``, or an early exit);
``timeout``: wall-clock or CPU-time limit; ``error``: no verdict (the sandbox could not be set
up, or the program was killed by a signal such as SIGSEGV)."""

_SETUP_ERROR = 111  # launcher exit status when the sandbox could not be set up
_CLONE_NEWUTS = 0x04000000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_NO_NEW_PRIVS = 38
_UID_RANGE = (2_000_000, 2_000_000_000)  # where sandbox uids are drawn from (when root)
_LINUX = sys.platform.startswith("linux")


@dataclass
class ExecResult:
    """Outcome of one :func:`run_program` call."""

    passed: bool
    """Exit status 0 after running to the end (see ``require_end``)."""
    status: str
    """One of :data:`STATUSES`."""
    returncode: int | None
    """The launcher's exit status (negative: killed by that signal); None if it never started."""
    stdout: str = ""
    """Last ``tail_chars`` characters of stdout (the end marker removed)."""
    stderr: str = ""
    """Last ``tail_chars`` characters of stderr."""
    seconds: float = 0.0
    """Wall-clock seconds from launch to the end of cleanup."""
    detail: str = ""
    """One line saying why it did not pass: the exception line, the limit hit, ..."""
    isolation: dict = field(default_factory=dict)
    """What was in force: ``namespaces`` (bool), ``uid`` (int or None), ``nproc_enforced``,
    ``guard``, ``imports_rerouted`` (sys.path entries reached through descriptors)."""
    workdir: str = ""
    """The temporary folder the program ran in (already removed)."""


# ----------------------------------------------------------------------------------------------
# Parent side
# ----------------------------------------------------------------------------------------------
_uid_lock = threading.Lock()
_uids_in_use: set[int] = set()


def _id_map_ranges(path: str) -> list[tuple[int, int]]:
    """[(first, count)] of ids usable inside this user namespace (from /proc/self/{u,g}id_map)."""
    try:
        with open(path) as f:
            return [(int(a), int(c)) for a, _, c in (line.split() for line in f if line.strip())]
    except (OSError, ValueError):
        return []


def _pick_uid() -> int | None:
    """A random unused uid (also used as gid) for one run, or None when we cannot switch users."""
    if not _LINUX or os.geteuid() != 0:
        return None
    lo, hi = _UID_RANGE
    uranges, granges = _id_map_ranges("/proc/self/uid_map"), _id_map_ranges("/proc/self/gid_map")

    def usable(x: int) -> bool:
        return (any(a <= x < a + c for a, c in uranges) and any(a <= x < a + c for a, c in granges)
                and x not in _uids_in_use)

    candidates = [lo + secrets.randbelow(hi - lo) for _ in range(64)]
    # a restricted map (rootless containers: "0 1000 1", "1 100000 65536"): draw inside it
    for a, c in uranges:
        if c > 2000:
            start = max(a, 1000)
            candidates += [start + secrets.randbelow(a + c - 1 - start) for _ in range(16)]
    with _uid_lock:
        for x in candidates:
            if 0 < x < 2**31 - 1 and usable(x):
                _uids_in_use.add(x)
                return x
    return None


def _release_uid(uid: int | None) -> None:
    if uid is not None:
        with _uid_lock:
            _uids_in_use.discard(uid)


def _proc_status(pid: str) -> dict[str, str]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("State", "Uid"):
                    out[k] = v.strip()
    except OSError:
        pass
    return out


def _pids_of_uid(uid: int) -> list[int]:
    """Live (non-zombie) processes whose real or effective uid is ``uid``."""
    out = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return out
    for name in names:
        if not name.isdigit():
            continue
        st = _proc_status(name)
        if not st or st.get("State", "").startswith(("Z", "X")):
            continue
        ids = st.get("Uid", "").split()
        if len(ids) >= 2 and (ids[0] == str(uid) or ids[1] == str(uid)):
            out.append(int(name))
    return out


def _kill_uid(uid: int, rounds: int = 200) -> int:
    """SIGKILL every process of ``uid`` until none is left; returns how many were signalled."""
    killed = 0
    for i in range(rounds):
        pids = _pids_of_uid(uid)
        if not pids:
            break
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
        time.sleep(0.002 * min(i + 1, 10))
    return killed


def _user_task_count(uid: int) -> int:
    """Tasks (processes + threads) of real uid ``uid``: what RLIMIT_NPROC counts."""
    total = 0
    try:
        names = os.listdir("/proc")
    except OSError:
        return 0
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as f:
                txt = f.read()
        except OSError:
            continue
        real = threads = None
        for line in txt.splitlines():
            if line.startswith("Uid:"):
                real = line.split()[1]
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
        if real == str(uid):
            total += threads or 1
    return total


def _wait_exit(proc: subprocess.Popen, timeout: float) -> bool:
    """Wait until ``proc`` exits, at most ``timeout`` seconds, *without reaping it* (so its pid,
    which is also its process-group id, cannot be reused before we kill the group)."""
    fd = None
    if hasattr(os, "pidfd_open"):
        try:
            fd = os.pidfd_open(proc.pid)
        except OSError:
            fd = None
    if fd is None:
        try:
            proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(max(0.0, timeout) * 1000))
    finally:
        os.close(fd)


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def _tail(path: str, chars: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 4 * chars - 256))
            data = f.read()
    except OSError:
        return ""
    return data.decode("utf-8", errors="replace")


def _read_info(fd: int) -> dict:
    """Merge the JSON lines the launcher wrote to its info pipe (non-blocking)."""
    os.set_blocking(fd, False)
    chunks = []
    try:
        while True:
            b = os.read(fd, 65536)
            if not b:
                break
            chunks.append(b)
    except (BlockingIOError, OSError):
        pass
    info: dict = {}
    for line in b"".join(chunks).decode("utf-8", errors="replace").splitlines():
        try:
            info.update(json.loads(line))
        except ValueError:
            pass
    return info


def _rmtree(path: str) -> None:
    def fix(func, p, exc):  # a folder the program made unreadable: give it back, retry
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=fix)
    if os.path.exists(path):  # last resort: a second pass (files created while we deleted)
        shutil.rmtree(path, ignore_errors=True)


def _last_line(text: str) -> str:
    for line in reversed(text.strip().splitlines()):
        if line.strip():
            return line.strip()[:300]
    return ""


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _clean_env(workdir: str, extra: dict | None) -> dict[str, str]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
           "HOME": workdir, "TMPDIR": workdir}
    env.update({str(k): str(v) for k, v in (extra or {}).items()})
    return env


def run_program(source: str, timeout: float = 10.0, memory_mb: int = 1024, cpu_seconds: float | None = None, *,
                max_processes: int = 64, file_size_mb: int = 16, max_open_files: int = 256,
                guard: bool = True, namespaces: bool = True, isolate_network: bool = True,
                switch_user: bool = True, require_end: bool = True, python: str | None = None, env: dict | None = None,
                tail_chars: int = 4000) -> ExecResult:
    """Run the Python program ``source`` in the sandbox described in the module docstring.

    Args:
        source: the whole program (e.g. prompt + completion + tests + ``check(entry_point)``).
        timeout: wall-clock seconds, interpreter start-up included; then everything is killed.
        memory_mb: ``RLIMIT_AS`` per process, in MiB (address space, not resident memory).
        cpu_seconds: ``RLIMIT_CPU`` per process; default ``ceil(timeout) + 1``.
        max_processes: ``RLIMIT_NPROC``: processes and threads of the sandbox at once.
        file_size_mb: ``RLIMIT_FSIZE``: the largest file (stdout/stderr included) it may write.
        max_open_files: ``RLIMIT_NOFILE``.
        guard: install the Python guard (step 4); ``False`` leaves only the OS mechanisms
            (used by the tests to check that those hold on their own).
        namespaces: try the PID/network/IPC/UTS namespaces (step 1).
        isolate_network: include the network namespace (``False``: host network, but the
            guard, if on, still refuses sockets).
        switch_user: when the parent is root, run as a fresh unprivileged uid (step 3). Turn
            it off only where the uid switch is impossible (a container without
            ``CAP_SETUID``): ``RLIMIT_NPROC`` then does not bound a root fork bomb.
        require_end: an exit with status 0 before the last statement counts as failed.
        python: interpreter to run (default ``sys.executable``).
        env: extra environment variables for the program (nothing else is inherited).
        tail_chars: how much of stdout/stderr to keep.
    """
    t0 = time.monotonic()
    if timeout <= 0:
        raise ValueError(f"timeout must be > 0, got {timeout}")
    cpu = max(1, math.ceil(cpu_seconds) if cpu_seconds is not None else math.ceil(timeout) + 1)
    marker = "__sandbox_end_" + secrets.token_hex(16) + "__"
    uid = _pick_uid() if switch_user else None
    outer = tempfile.mkdtemp(prefix="rd-sandbox-")
    work = os.path.join(outer, "work")
    proc = None
    info_r = info_w = None
    iso: dict = {}
    try:
        os.chmod(outer, 0o711)  # others may traverse to work/, not list or read our files
        os.mkdir(work, 0o700)
        if uid is not None:
            os.chown(work, uid, uid)
        out_path, err_path = os.path.join(outer, "stdout"), os.path.join(outer, "stderr")
        nproc = max_processes
        if _LINUX and uid is None and os.geteuid() != 0:
            nproc = _user_task_count(os.getuid()) + max_processes
        info_r, info_w = os.pipe()
        cfg = {
            "source": source, "marker": marker if require_end else None, "workdir": work, "uid": uid,
            "info_fd": info_w, "guard": guard, "namespaces": namespaces and _LINUX,
            "isolate_network": isolate_network, "limits": {
                "AS": memory_mb * 2**20, "CPU": cpu, "FSIZE": file_size_mb * 2**20,
                "NOFILE": max_open_files, "NPROC": nproc, "CORE": 0},
        }
        payload = json.dumps(cfg).encode("utf-8")
        def private(path, flags):  # only the parent reads them; the child writes through its fds
            return os.open(path, flags, 0o600)

        with open(out_path, "wb", opener=private) as out_f, open(err_path, "wb", opener=private) as err_f:
            try:
                proc = subprocess.Popen(
                    [python or sys.executable, "-I", "-B", "-X", "utf8", os.path.abspath(__file__)],
                    stdin=subprocess.PIPE, stdout=out_f, stderr=err_f, cwd=work, env=_clean_env(work, env),
                    start_new_session=True, close_fds=True, pass_fds=(info_w,))
            except OSError as e:
                return ExecResult(False, "error", None, "", "", time.monotonic() - t0,
                                  f"could not start the interpreter: {e}", {}, work)
        os.close(info_w)
        info_w = None
        try:
            proc.stdin.write(payload)
            proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        remaining = timeout - (time.monotonic() - t0)
        exited = _wait_exit(proc, remaining)
        _killpg(proc.pid)  # stragglers in the group (the leader, not reaped yet, pins the id)
        if not exited:
            proc.kill()
        rc = proc.wait()
        iso = _read_info(info_r)
        elapsed = time.monotonic() - t0
        stdout, stderr = _tail(out_path, tail_chars), _tail(err_path, tail_chars)
        ended = marker in stdout
        stdout = stdout.replace("\n" + marker + "\n", "").replace(marker, "")[-tail_chars:]
        stderr = stderr[-tail_chars:]
        setup_error = iso.pop("setup_error", None)
        if not exited:
            status, detail = "timeout", f"wall-clock limit of {timeout:g} s exceeded"
        elif setup_error is not None and rc == _SETUP_ERROR:
            status, detail = "error", f"sandbox setup failed: {setup_error}"
        elif rc < 0:
            name = _signal_name(-rc)
            if -rc == signal.SIGXCPU or (-rc == signal.SIGKILL and elapsed >= cpu):
                status, detail = "timeout", f"CPU-time limit of {cpu} s exceeded ({name})"
            else:
                status, detail = "error", f"killed by {name}"
        elif rc != 0:
            status, detail = "failed", _last_line(stderr) or f"exit status {rc}"
        elif require_end and not ended:
            status, detail = "failed", "exited with status 0 before its last statement (sys.exit/os._exit)"
        else:
            status, detail = "passed", ""
        iso["guard"] = bool(guard)
        return ExecResult(status == "passed", status, rc, stdout, stderr, elapsed, detail, iso, work)
    finally:
        if proc is not None and proc.returncode is None:  # an exception between launch and wait
            _killpg(proc.pid)
            proc.kill()
            proc.wait()
        if uid is not None:
            _kill_uid(uid)
        for fd in (info_r, info_w):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        _rmtree(outer)
        _release_uid(uid)


def run_many(sources, workers: int = 2, progress: bool = False, **kwargs) -> list[ExecResult]:
    """Run every program of ``sources`` with at most ``workers`` at once; results in input order.

    ``kwargs`` go to :func:`run_program` (timeout, memory_mb, ...). Each worker thread only
    launches and waits for a subprocess, so ``workers`` is the number of programs executing
    concurrently (about one CPU core each for CPU-bound tests).
    """
    from concurrent.futures import ThreadPoolExecutor

    sources = list(sources)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        it = pool.map(lambda s: run_program(s, **kwargs), sources)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, total=len(sources), desc="execute", unit="program")
        return list(it)


_INFO_CACHE: dict | None = None


def sandbox_info() -> dict:
    """What isolation this machine gives (runs one trivial program once, then cached): the
    ``isolation`` dict of an :class:`ExecResult`, plus ``status`` of that probe run."""
    global _INFO_CACHE
    if _INFO_CACHE is None:
        r = run_program("pass\n", timeout=30.0)
        _INFO_CACHE = dict(r.isolation, status=r.status, detail=r.detail)
    return dict(_INFO_CACHE)


# ----------------------------------------------------------------------------------------------
# Launcher side (this file run as a script by run_program; standard library only)
# ----------------------------------------------------------------------------------------------
def _emit(fd: int | None, obj: dict) -> None:
    if fd is None:
        return
    try:
        os.write(fd, (json.dumps(obj) + "\n").encode("utf-8"))
    except OSError:
        pass


def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _unshare(libc, flags: int) -> int:
    """0 on success, else errno."""
    import ctypes

    return 0 if libc.unshare(flags) == 0 else (ctypes.get_errno() or -1)


def _enter_namespaces(cfg: dict) -> tuple[bool, str]:
    """New PID (+ network, IPC, UTS) namespaces for the children of this process."""
    flags = _CLONE_NEWPID | _CLONE_NEWIPC | _CLONE_NEWUTS
    if cfg["isolate_network"]:
        flags |= _CLONE_NEWNET
    libc = _libc()
    if os.geteuid() == 0 and _unshare(libc, flags) == 0:
        return True, "root"
    uid, gid = os.geteuid(), os.getegid()
    if _unshare(libc, _CLONE_NEWUSER | flags) == 0:
        # map our own ids so that the program sees its real uid rather than "nobody"
        for path, text in (("/proc/self/setgroups", "deny"), ("/proc/self/uid_map", f"{uid} {uid} 1"),
                           ("/proc/self/gid_map", f"{gid} {gid} 1")):
            try:
                with open(path, "w") as f:
                    f.write(text)
            except OSError:
                pass
        return True, "user"
    return False, ""


def _traversable_by_others(path: str) -> bool:
    """Could a uid that owns nothing and is in no group reach ``path``?"""
    import stat

    p = os.path.abspath(path)
    parts = [p]
    while True:
        parent = os.path.dirname(parts[-1])
        if parent == parts[-1]:
            break
        parts.append(parent)
    for d in parts:
        try:
            mode = os.stat(d).st_mode
        except OSError:
            return False
        if not mode & stat.S_IXOTH:
            return False
    try:
        return bool(os.stat(p).st_mode & stat.S_IROTH)
    except OSError:
        return False


def _reroute_imports() -> int:
    """Make the interpreter's folders importable after giving up root: every ``sys.path``
    folder (and the ``__path__`` of every package already imported) that an unprivileged uid
    could not reach is replaced by ``/proc/self/fd/N``, a directory descriptor opened now, as
    root. A descriptor skips the permission checks of the folders *above* it; the folder
    itself and the files below it keep their own permissions (read-only for the program)."""
    remap: dict[str, str] = {}
    new_path = []
    for entry in sys.path:
        real = os.path.realpath(entry) if entry else entry
        if entry and os.path.isdir(real) and not _traversable_by_others(real):
            fd = os.open(real, os.O_RDONLY | os.O_DIRECTORY)
            os.set_inheritable(fd, False)
            remap[real] = f"/proc/self/fd/{fd}"
            new_path.append(remap[real])
        else:
            new_path.append(entry)
    if not remap:
        return 0
    sys.path[:] = new_path

    def moved(p: str) -> str:
        rp = os.path.realpath(p)
        for old, new in remap.items():
            if rp == old or rp.startswith(old + os.sep):
                return new + rp[len(old):]
        return p

    for mod in list(sys.modules.values()):
        path = getattr(mod, "__path__", None)
        if isinstance(path, list):
            path[:] = [moved(p) for p in path]
    sys.path_importer_cache.clear()
    return len(remap)


def _set_limits(limits: dict) -> None:
    import resource

    for name, value in limits.items():
        res = getattr(resource, "RLIMIT_" + name, None)
        if res is None or value is None:
            continue
        value = int(value)
        try:
            resource.setrlimit(res, (value, value if name != "CPU" else value + 1))
        except (ValueError, OSError):  # above the current hard limit: lower the soft limit only
            soft, hard = resource.getrlimit(res)
            if hard == resource.RLIM_INFINITY or value <= hard:
                raise
            resource.setrlimit(res, (hard, hard))


def _drop_privileges(uid: int) -> None:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)  # as root: real, effective and saved ids
    if os.getuid() != uid or os.geteuid() != uid:
        raise OSError("could not switch to the sandbox uid")
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise OSError("regained root after dropping privileges")


def _install_guard(root: str) -> None:
    """Disable process creation, signals, sockets and ctypes, and refuse writes, deletions and
    mode changes outside ``root`` (see the module docstring: a safety net, not a boundary)."""
    import builtins
    import io
    import posix
    import socket
    import subprocess as sp

    import _io
    import _socket

    root = os.path.realpath(root)
    realpath, join, getcwd, readlink = os.path.realpath, os.path.join, os.getcwd, os.readlink
    fspath, fsdecode = os.fspath, os.fsdecode

    def inside(path, dir_fd=None) -> bool:
        if isinstance(path, int):  # a descriptor it already holds
            return True
        base = getcwd() if dir_fd is None else readlink(f"/proc/self/fd/{dir_fd}")
        full = realpath(join(base, fsdecode(fspath(path))))
        return full == root or full.startswith(root + os.sep)

    def refuse(what: str):
        raise PermissionError(f"sandbox: {what} is not allowed")

    def deny(name: str):
        def denied(*args, **kwargs):
            refuse(f"{name}()")
        denied.__name__ = name
        return denied

    def set_both(name: str, fn) -> None:
        for mod in (os, posix):
            if hasattr(mod, name):
                setattr(mod, name, fn)

    for name in ("system", "popen", "fork", "forkpty", "kill", "killpg", "execv", "execve", "execl", "execle",
                 "execlp", "execlpe", "execvp", "execvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv",
                 "spawnve", "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp", "setsid", "setpgid",
                 "setpgrp", "setuid", "setgid", "seteuid", "setegid", "setreuid", "setregid", "setresuid",
                 "setresgid", "chroot", "pidfd_open"):
        set_both(name, deny(f"os.{name}"))

    def no_fork_hooks(*args, **kwargs):  # fork itself is denied, so a hook could never run: accept it
        return None
    set_both("register_at_fork", no_fork_hooks)  # `import logging` (numpy.testing, concurrent.futures) calls it

    def one_path(name: str, orig):
        def checked(path, *args, dir_fd=None, **kwargs):
            if not inside(path, dir_fd):
                refuse(f"os.{name}({path!r}) outside the sandbox folder")
            if dir_fd is not None:
                kwargs["dir_fd"] = dir_fd
            return orig(path, *args, **kwargs)
        checked.__name__ = name
        return checked

    for name in ("remove", "unlink", "rmdir", "mkdir", "chmod", "chown", "lchown", "lchmod", "truncate",
                 "utime", "mkfifo", "mknod", "chdir", "chflags", "lchflags", "removexattr", "setxattr"):
        if hasattr(os, name):
            set_both(name, one_path(name, getattr(os, name)))

    def two_paths(name: str, orig, check_src: bool):
        def checked(src, dst, *args, src_dir_fd=None, dst_dir_fd=None, **kwargs):
            if (check_src and not inside(src, src_dir_fd)) or not inside(dst, dst_dir_fd):
                refuse(f"os.{name}({src!r}, {dst!r}) outside the sandbox folder")
            if src_dir_fd is not None:
                kwargs["src_dir_fd"] = src_dir_fd
            if dst_dir_fd is not None:
                kwargs["dst_dir_fd"] = dst_dir_fd
            return orig(src, dst, *args, **kwargs)
        checked.__name__ = name
        return checked

    for name, check_src in (("rename", True), ("replace", True), ("link", True), ("symlink", False)):
        if hasattr(os, name):
            set_both(name, two_paths(name, getattr(os, name), check_src))

    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    orig_os_open = os.open

    def guarded_os_open(path, flags, *args, dir_fd=None, **kwargs):
        if flags & write_flags and not inside(path, dir_fd):
            refuse(f"os.open({path!r}) for writing outside the sandbox folder")
        if dir_fd is not None:
            kwargs["dir_fd"] = dir_fd
        return orig_os_open(path, flags, *args, **kwargs)

    set_both("open", guarded_os_open)
    orig_open = _io.open

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(c in str(mode) for c in "wax+") and not inside(file):
            refuse(f"open({file!r}, {mode!r}) outside the sandbox folder")
        return orig_open(file, mode, *args, **kwargs)

    builtins.open = io.open = _io.open = guarded_open

    orig_rmtree = shutil.rmtree

    def guarded_rmtree(path, *args, **kwargs):
        if not inside(path):
            refuse(f"shutil.rmtree({path!r}) outside the sandbox folder")
        return orig_rmtree(path, *args, **kwargs)

    shutil.rmtree = guarded_rmtree

    sp.Popen = deny("subprocess.Popen")  # run/call/check_output build a Popen
    try:
        import _posixsubprocess

        _posixsubprocess.fork_exec = deny("_posixsubprocess.fork_exec")
    except ImportError:
        pass

    class NoSocket:
        def __new__(cls, *args, **kwargs):
            refuse("network access (socket)")

    for mod in (socket, _socket):
        mod.socket = NoSocket
        for name in ("socketpair", "fromfd", "create_connection", "create_server", "getaddrinfo"):
            if hasattr(mod, name):
                setattr(mod, name, deny(f"socket.{name}"))
    for name in ("ctypes", "_ctypes", "ctypes.util"):
        sys.modules[name] = None  # import fails


def _exit_status(status: int) -> None:
    """Leave this process the way the child with wait status ``status`` left."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
            time.sleep(1.0)
        except (OSError, ValueError):
            pass
        os._exit(128 + sig)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


def _system_exit_code(e: SystemExit) -> int:
    code = e.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        sys.stderr.write(f"{code}\n")
    except Exception:
        pass
    return 1


def _flush() -> None:
    for s in (sys.stdout, sys.stderr):
        try:
            s.flush()
        except Exception:
            pass


def _program_main(cfg: dict, info_fd: int | None, isolation: dict) -> None:
    """In the process that becomes the program: limits, user, guard, then run it. Never returns."""
    try:
        import resource  # noqa: F401  (before limits and the user switch)
        import traceback  # noqa: F401
        import linecache
        import types

        uid = cfg["uid"]
        rerouted = _reroute_imports() if uid is not None else 0
        _set_limits(cfg["limits"])
        if uid is not None:
            _drop_privileges(uid)
        if _LINUX:
            libc = _libc()
            libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
            if uid is not None:  # the uid switch made it non-dumpable: /proc/self would belong to root
                libc.prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0)
            if isolation.get("namespaces"):  # die with the launcher
                libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if rerouted:  # fail loudly now rather than at the program's first import
            for entry in sys.path:
                if entry.startswith("/proc/self/fd/"):
                    os.listdir(entry)
        isolation.update(uid=uid, imports_rerouted=rerouted,
                         nproc_enforced=bool(uid is not None or os.geteuid() != 0))
        if cfg["guard"]:
            _install_guard(cfg["workdir"])
        _emit(info_fd, isolation)
        if info_fd is not None:
            os.close(info_fd)
    except BaseException as e:  # noqa: BLE001
        _emit(info_fd, {"setup_error": f"{type(e).__name__}: {e}"})
        _flush()
        os._exit(_SETUP_ERROR)

    source, marker = cfg["source"], cfg["marker"]
    cfg.clear()
    filename = "<sandbox-program>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    import builtins

    module = types.ModuleType("__main__")
    module.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = module
    try:
        code = compile(source, filename, "exec")
        del source
        exec(code, module.__dict__)
    except SystemExit as e:
        rc = _system_exit_code(e)
        _flush()
        os._exit(rc)  # status 0 here is an early exit: no end marker
    except BaseException:  # noqa: BLE001
        try:
            import traceback

            etype, value, tb = sys.exc_info()
            traceback.print_exception(etype, value, tb.tb_next if tb is not None else None)  # not this frame
        except BaseException:  # noqa: BLE001  (e.g. no memory left to format it)
            try:
                os.write(2, b"sandbox: the program raised an exception\n")
            except OSError:
                pass
        _flush()
        os._exit(1)
    _flush()
    if marker:
        try:
            os.write(1, ("\n" + marker + "\n").encode())
        except OSError:
            os._exit(1)
    os._exit(0)


def _launcher_main() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    cfg = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    info_fd = cfg["info_fd"]
    isolation = {"namespaces": False}
    try:
        os.chdir(cfg["workdir"])
        if cfg["namespaces"]:
            ok, how = _enter_namespaces(cfg)
            isolation.update(namespaces=ok, namespace_owner=how, network_isolated=ok and cfg["isolate_network"])
    except BaseException as e:  # noqa: BLE001
        _emit(info_fd, {"setup_error": f"{type(e).__name__}: {e}"})
        os._exit(_SETUP_ERROR)
    if not isolation["namespaces"]:
        _program_main(cfg, info_fd, isolation)

    # PID namespace: the first child is its init; it only reaps orphans (SIGCHLD ignored) and
    # lives as long as this launcher holds the pipe open. When it exits the kernel kills every
    # process left in the namespace.
    hold_r, hold_w = os.pipe()
    init = os.fork()
    if init == 0:
        os.close(hold_w)
        os.close(info_fd)
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)
        try:
            os.read(hold_r, 1)
        finally:
            os._exit(0)
    os.close(hold_r)
    child = os.fork()
    if child == 0:
        os.close(hold_w)
        _program_main(cfg, info_fd, isolation)
    os.close(info_fd)
    cfg.clear()
    _, status = os.waitpid(child, 0)
    os.close(hold_w)  # the init exits, the namespace is emptied
    os.waitpid(init, 0)
    _exit_status(status)


if __name__ == "__main__":
    _launcher_main()
