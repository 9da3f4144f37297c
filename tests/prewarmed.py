"""A prewarmed interpreter for the entry-point tests: the heavy libraries imported once, a fork per run.

Why: a `train.py` / `evaluate.py` start spends ~8 of its ~10 s importing torch, torchvision, torchmetrics and
Lightning, and the suite starts them some forty times. The server below imports those libraries (and nothing of
``mavos``, so our own imports still run in every child), then forks one child per request; the child takes the
run's working directory, environment, ``sys.argv`` and standard streams and runs the script (or ``-m`` module) as
``__main__``, as ``python ...`` would, and exits through the interpreter's normal shutdown (atexit handlers,
non-daemon threads). Forking here is safe for the reason a DataLoader worker's fork is: the server has run no
torch op and has no Python thread (the BLAS pools that numpy / scipy start register their own fork handlers;
the thread count is checked before it serves, and so is that no library holds a temporary folder). What a fork cannot change is what the preloaded libraries read as they
loaded: a run whose environment differs from the server's in such a variable (``IMPORT_TIME``: thread pools,
``PYTHON*``, the loader) is given a fresh interpreter by ``tests/conftest.py``, as is every run with
``MAVOS_TEST_FRESH_INTERPRETERS=1`` or on a platform other than Linux.

Protocol, one JSON object per line: a request ``{"argv", "cwd", "env", "stdout", "stderr"}`` on the server's
stdin (``argv`` is what follows ``python``: ``[script, ...]`` or ``["-m", module, ...]``); the replies
``{"pid": n}`` at once and ``{"returncode": n}`` (negative: ended by that signal) when the child has ended. The
server runs one child at a time.
"""
from __future__ import annotations

import gc
import importlib
import json
import os
import runpy
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time

# Not wandb: it makes a media folder at import and removes it when the process exits, so the first child to end
# would take it away from every later one (checked below for any preloaded library).
PRELOADED = ("numpy", "cv2", "PIL.Image", "av", "torch", "torchvision", "torchmetrics", "lightning.pytorch",
             "albumentations", "matplotlib", "hydra", "omegaconf")
# Prefixes of the environment variables that those libraries or the interpreter read as they start.
IMPORT_TIME = ("PYTHON", "OMP_", "GOMP_", "KMP_", "MKL_", "OPENBLAS_", "LD_", "MALLOC_")


def _become(request: dict) -> None:
    """In the forked child: become ``python <argv>``; never returns to the server's loop."""
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for fd, target in ((null, 0), (out, 1), (err, 2)):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = sys.__stdin__ = open(0, closefd=False)
    sys.stdout = sys.__stdout__ = open(1, "w", closefd=False)
    sys.stderr = sys.__stderr__ = open(2, "w", closefd=False, errors="backslashreplace", buffering=1)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    argv = request["argv"]
    if argv[0] == "-m":  # python -m module: argv[0] becomes the module's file, the working directory leads sys.path
        sys.argv = ["-m", *argv[2:]]
        sys.path[0] = os.getcwd()
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(argv)
        sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
        runpy.run_path(argv[0], run_name="__main__")
    sys.exit(0)  # unwinds to the top level: the interpreter's own shutdown, as after a script's last line


def serve() -> None:
    for name in PRELOADED:
        importlib.import_module(name)
    if threading.active_count() != 1:
        raise SystemExit(f"prewarmed: a preloaded library started a thread ({threading.enumerate()}); "
                         "forking would not be safe")
    if any(isinstance(obj, tempfile.TemporaryDirectory) for obj in gc.get_objects()):
        raise SystemExit("prewarmed: a preloaded library holds a temporary folder that each child would remove "
                         "when it exits")
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    for line in requests:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _become(request)  # the script's SystemExit or exception ends the child from here
        replies.write(json.dumps({"pid": pid}).encode() + b"\n")
        replies.flush()
        _, status = os.waitpid(pid, 0)
        replies.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
        replies.flush()


class Server:
    """The test side: one server process for the session, started on first use."""

    def __init__(self, root: str, env: dict):
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.prewarmed"], cwd=root, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.env, self.pending = env, b""
        self.active: Run | None = None

    def serves(self, env: dict) -> bool:
        """Whether a run with ``env`` can be a fork of this server: no variable read at startup differs."""
        return all(env.get(k) == self.env.get(k) for k in {*env, *self.env} if k.startswith(IMPORT_TIME))

    def reply(self, deadline: float | None) -> dict | None:
        """The server's next reply; None when ``deadline`` (``time.monotonic``) passes first."""
        while b"\n" not in self.pending:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self.proc.stdout], [], [], wait)[0]:
                return None
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError(f"the prewarmed interpreter ended (exit {self.proc.wait()}); see its stderr")
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return json.loads(line)

    def start(self, args: list[str], cwd: str, env: dict) -> Run:
        """Fork ``args`` (``[sys.executable, ...]``, as for Popen)."""
        self._end_active()
        self.active = Run(self, args, cwd, env)
        return self.active

    def _end_active(self) -> None:
        """The server runs one child at a time: kill one still running (left so by a failed test) and reap it."""
        if self.active is not None and self.active.poll() is None:
            self.active.kill()
            self.active.wait()

    def close(self) -> None:
        """End of input: the server leaves its loop and exits."""
        self._end_active()
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


class Run:
    """One forked run, used as ``subprocess.Popen(..., stdout=PIPE, stderr=PIPE, text=True)`` is."""

    def __init__(self, server: Server, args: list[str], cwd: str, env: dict):
        self.server, self.args, self.returncode, self._text = server, args, None, None
        self._tmp = tempfile.TemporaryDirectory(prefix="mavos-run-")
        self._out, self._err = os.path.join(self._tmp.name, "stdout"), os.path.join(self._tmp.name, "stderr")
        request = {"argv": args[1:], "cwd": str(cwd), "env": env, "stdout": self._out, "stderr": self._err}
        server.proc.stdin.write(json.dumps(request).encode() + b"\n")
        server.proc.stdin.flush()
        self.pid = server.reply(None)["pid"]

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            done = self.server.reply(None if timeout is None else time.monotonic() + timeout)
            if done is None:
                raise subprocess.TimeoutExpired(self.args, timeout)
            self.returncode = done["returncode"]
        return self.returncode

    def poll(self) -> int | None:
        try:
            return self.wait(0)
        except subprocess.TimeoutExpired:
            return None

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """Wait, then the run's whole stdout and stderr (read from its files, which are then removed)."""
        self.wait(timeout)
        if self._text is None:
            with open(self._out, errors="replace") as out, open(self._err, errors="replace") as err:
                self._text = out.read(), err.read()
            self._tmp.cleanup()
        return self._text


if __name__ == "__main__":
    serve()
