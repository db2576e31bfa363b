"""A separate process for a release's feature code (docs/twin.md 5).

The twin runs a candidate release's features, code signed by a release key,
on the gateway. That must not make a release key a way into the gateway:
the code runs in a process of its own (``python -I -B -m MODULE``, by
default gateway.twin.runner) that

- starts in a fresh temporary folder holding only what it is given (copies
  of the release's verified files, the device's record and fit as JSON), with
  a clean environment (no variable of the gateway's: PATH, LANG and HOME
  only) and no descriptor of the gateway's but its pipes;
- runs as `nobody` when the gateway runs as root (so the database, 0600,
  and the keys, 0600 in a 0700 folder, are not readable), in a session of
  its own and a network namespace of its own (no interface: not even the
  loopback's services), where the kernel allows one: the runner drops to it
  (setgroups, setgid, setuid) once its own modules are loaded, before it
  reads the release's files, and then may start no process (RLIMIT_NPROC
  0). A gateway that is not root refuses to run release code at all,
  unless PERMABETA_TWIN_SAME_USER=1 accepts running it as its own user;
- holds at most MAX_ANSWER bytes of the run's output (more stops it);
- has limits: address space (RLIMIT_AS), CPU seconds (RLIMIT_CPU), open
  files, file size, and a wall-clock timeout after which its whole process
  group is killed;
- and refuses, by an audit hook the runner installs before it imports the
  feature code, files outside its folder and Python's own, sockets, new
  processes and ctypes (runner.guard): a second wall, not a jail: code in
  the same interpreter can reach the hook's own state through a traceback's
  frames, and C code that raises no audit event goes around it. The walls
  are the user and the network namespace; where the gateway may run release
  code as itself (PERMABETA_TWIN_SAME_USER=1) the hook is the only one, and
  the gateway says so in its log.

run() answers the runner's JSON, or raises SandboxError saying what stopped
it: a time or memory limit, a crash, an answer that is not one.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import GatewayError

CPU_S = 120  # CPU seconds a run may use
WALL_S = 180.0  # seconds a run may take
MEMORY = 512 * 1024 * 1024  # bytes of address space
MAX_ANSWER = 8 * 1024 * 1024  # bytes of output read: more, and the run is stopped
MAX_ERRORS = 64 * 1024  # the last bytes of its error output kept
CLONE_NEWNET = 0x40000000  # unshare(2): a network of its own, with no interface up
SANDBOX_USER = "nobody"
SAME_USER = "PERMABETA_TWIN_SAME_USER"  # =1: a gateway not root runs release code as itself
log = logging.getLogger("permabeta.gateway.twin")
_warned = False


class SandboxError(GatewayError):
    """The sandboxed run did not answer: `code` is time, cpu, memory, crash or answer."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Limits:
    cpu_s: int = CPU_S
    wall_s: float = WALL_S
    memory: int = MEMORY


def _ids() -> tuple[int, int] | None:
    """(uid, gid) of the sandbox's user when the gateway runs as root, else None."""
    global _warned
    if os.geteuid() != 0:
        if os.environ.get(SAME_USER) != "1":
            raise SandboxError(
                f"the twin runs a release's code only as another user than the gateway's: run the gateway "
                f"as root (the code then runs as {SANDBOX_USER}, without network), or set {SAME_USER}=1 "
                "to accept running it as the gateway's own user (a development machine)",
                "unsafe",
            )
        if not _warned:
            _warned = True
            log.warning(
                "the twin's sandbox runs release code as the gateway's own user (the gateway is not "
                "root, so it cannot become %s): only the runner's audit hook and the limits keep it "
                "from the gateway's files; run the gateway as root or under a user of its own",
                SANDBOX_USER,
            )
        return None
    import pwd

    try:
        pw = pwd.getpwnam(SANDBOX_USER)
    except KeyError as exc:
        raise SandboxError(
            f"the gateway runs as root and there is no user {SANDBOX_USER!r} to run the twin as", "crash"
        ) from exc
    return pw.pw_uid, pw.pw_gid


def _limits(limits: Limits, root: bool) -> Any:
    def apply() -> None:  # in the child, before it runs Python
        if root:
            # no network at all, loopback included (the gateway's API, a
            # broker): where the kernel lets root make a network namespace
            import ctypes

            ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNET)
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory, limits.memory))
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 2))
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024 * 1024, 64 * 1024 * 1024))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def run(
    files: dict[str, bytes],
    *,
    module: str = "gateway.twin.runner",
    limits: Limits = Limits(),
) -> dict[str, Any]:
    """Run `python -m module` in a new folder holding `files` (relative path
    -> content) and answer the JSON object on the last line of its output.
    Raises SandboxError."""
    ids = _ids()
    work = Path(tempfile.mkdtemp(prefix="pb-twin-"))
    try:
        for rel, data in files.items():
            path = (work / rel).resolve()
            if not path.is_relative_to(work.resolve()):
                raise SandboxError(f"a sandbox file may not be outside its folder: {rel!r}", "crash")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        if ids is not None:
            for dirpath, _, filenames in os.walk(work):
                os.chown(dirpath, *ids)
                for name in filenames:
                    os.chown(os.path.join(dirpath, name), *ids)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(work)}
        # -I: the environment's PYTHON* and the user's site are ignored, the
        # working folder is not on sys.path; -B: no bytecode written
        argv = [sys.executable, "-I", "-B", "-m", module]
        if ids is not None:
            # the runner drops to them itself, once its own modules are
            # loaded and before it reads a byte of the release: the
            # interpreter may live where `nobody` cannot reach (/root/...)
            argv += ["--user", f"{ids[0]}:{ids[1]}"]
        try:
            proc = subprocess.Popen(
                argv,
                cwd=work,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                close_fds=True,
                start_new_session=True,
                preexec_fn=_limits(limits, ids is not None),  # (between fork and exec)
            )
        except OSError as exc:
            raise SandboxError(f"the twin's sandbox could not start: {exc}", "crash") from exc
        try:
            out, err = _read(proc, limits.wall_s)
        except subprocess.TimeoutExpired:
            _kill(proc)
            raise SandboxError(
                f"the feature code took longer than {limits.wall_s:g} s and was stopped", "time"
            ) from None
        finally:
            _kill(proc)
        return _answer(proc.returncode, out, err, limits)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _read(proc: subprocess.Popen[bytes], wall_s: float) -> tuple[bytes, bytes]:
    """The run's output and the end of its error output, as they come, until
    it closes both and exits: never more than MAX_ANSWER and MAX_ERRORS
    bytes held (a run that writes more is stopped). Raises
    subprocess.TimeoutExpired past wall_s, SandboxError for too much output."""
    assert proc.stdout is not None and proc.stderr is not None
    out, err = bytearray(), bytearray()
    deadline = time.monotonic() + wall_s
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, out)
        sel.register(proc.stderr, selectors.EVENT_READ, err)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(proc.args, wall_s)
            for key, _ in sel.select(left):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                buf: bytearray = key.data
                buf += chunk
                if buf is err and len(err) > MAX_ERRORS:
                    del err[: len(err) - MAX_ERRORS]
                elif buf is out and len(out) > MAX_ANSWER:
                    raise SandboxError(
                        f"the twin wrote more than {MAX_ANSWER // 2**20} MiB of output and was stopped",
                        "answer",
                    )
    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    return bytes(out), bytes(err)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill the run's whole process group, and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.communicate(timeout=5)
    except (subprocess.TimeoutExpired, ValueError):
        pass


def _answer(code: int | None, out: bytes, err: bytes, limits: Limits) -> dict[str, Any]:
    if code == -signal.SIGXCPU:
        raise SandboxError(f"the feature code used more than {limits.cpu_s} s of CPU and was stopped", "cpu")
    lines = [line for line in out.decode("utf-8", "replace").splitlines() if line.strip()]
    answer: Any = None
    if lines:
        try:
            answer = json.loads(lines[-1])
        except ValueError:
            answer = None
    if isinstance(answer, dict) and answer.get("ok") is False:
        message = str(answer.get("error", "failed"))
        if "out of memory" in message or message.startswith("MemoryError"):
            raise SandboxError(
                f"the feature code needed more than {limits.memory // 2**20} MiB of memory and was stopped",
                "memory",
            )
        raise SandboxError(f"the twin failed: {message}", "crash")
    if isinstance(answer, dict) and code == 0:
        return answer
    tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
    if code == -signal.SIGKILL:
        raise SandboxError(f"the twin was killed (memory or time): {tail[0][:200]}", "crash")
    if "MemoryError" in tail[0]:
        raise SandboxError(
            f"the feature code needed more than {limits.memory // 2**20} MiB of memory and was stopped",
            "memory",
        )
    raise SandboxError(f"the twin stopped with code {code}: {tail[0][:300]}", "crash")
