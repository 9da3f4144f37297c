"""The prewarmed interpreter (tests/prewarmed.py) behaves as a fresh ``python`` for what the tests look at: the
exit code, stdout and stderr, argv, working directory, environment, sys.path, atexit handlers, an uncaught
exception's traceback, ``-m`` modules and signals."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import prewarmed
from tests.conftest import run_env, run_python, start_python

PROBE = '''
import atexit, os, sys
from pathlib import Path
print("argv", sys.argv[1:], "name", __name__)
print("cwd", os.getcwd(), "probe", os.environ.get("PROBE"), "dropped", os.environ.get("DROPPED"))
print("path0", sys.path[0], "argv0", Path(sys.argv[0]).name)
print("to stderr", file=sys.stderr)
atexit.register(lambda: Path("atexit.txt").write_text("ran"))
if sys.argv[1:] == ["raise"]:
    raise ValueError("the probe's own error")
if sys.argv[1:] == ["wait"]:
    Path("started.txt").write_text("yes")
    import time
    time.sleep(60)
sys.exit(int(sys.argv[1]) if sys.argv[1:] and sys.argv[1].isdigit() else 0)
'''

pytestmark = pytest.mark.skipif(sys.platform != "linux" or os.environ.get("MAVOS_TEST_FRESH_INTERPRETERS") == "1",
                                reason="the prewarmed interpreter is used on Linux only")


@pytest.fixture
def probe(tmp_path: Path) -> Path:
    (tmp_path / "probe_script.py").write_text(PROBE)
    return tmp_path


def fresh(argv: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args", [["3", "x=1"], [], ["raise"]], ids=["exit-3", "exit-0", "uncaught"])
@pytest.mark.parametrize("as_module", [False, True], ids=["script", "module"])
def test_a_run_gives_what_a_fresh_interpreter_gives(probe: Path, args: list[str], as_module: bool):
    env = run_env(PROBE="yes")
    os.environ["DROPPED"] = "the test process's own variable, not the run's"
    try:
        argv = ["-m", "probe_script", *args] if as_module else [str(probe / "probe_script.py"), *args]
        want = fresh(argv, probe, env)
        (probe / "atexit.txt").unlink()
        proc = start_python(argv, cwd=probe, env=env)
        assert isinstance(proc, prewarmed.Run)  # not a fresh interpreter
        out, err = proc.communicate(timeout=120)
    finally:
        del os.environ["DROPPED"]
    got = subprocess.CompletedProcess(argv, proc.returncode, out, err)
    assert got.returncode == want.returncode == {"3": 3, "raise": 1}.get((args or ["0"])[0], 0)
    assert got.stdout == want.stdout and "probe yes dropped None" in got.stdout
    assert (probe / "atexit.txt").read_text() == "ran"
    if args == ["raise"]:
        assert "Traceback" in got.stderr and got.stderr.endswith("ValueError: the probe's own error\n")
        assert want.stderr.endswith("ValueError: the probe's own error\n")
    else:
        assert got.stderr == want.stderr == "to stderr\n"


def test_a_started_run_can_be_killed_and_the_next_run_still_works(probe: Path):
    proc = start_python([str(probe / "probe_script.py"), "wait"], cwd=probe)
    assert isinstance(proc, prewarmed.Run)
    deadline = time.monotonic() + 60
    while not (probe / "started.txt").is_file():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert err == "to stderr\n" and out == ""  # stderr is line-buffered, stdout (a file) lost with the process
    assert not (probe / "atexit.txt").exists()  # killed: no shutdown
    # a run left running by a test that failed is killed before the next one starts
    start_python([str(probe / "probe_script.py"), "wait"], cwd=probe)
    assert run_python([str(probe / "probe_script.py"), "5"], cwd=probe).returncode == 5


def test_a_run_that_needs_other_thread_settings_gets_a_fresh_interpreter(probe: Path):
    """OMP_NUM_THREADS is read when torch loads: a fork of the server could not honour another value."""
    assert isinstance(start_python([str(probe / "probe_script.py")], cwd=probe), prewarmed.Run)
    other = str(int(os.environ.get("OMP_NUM_THREADS", "1")) + 1)
    proc = start_python([str(probe / "probe_script.py")], cwd=probe, env=run_env(OMP_NUM_THREADS=other))
    assert isinstance(proc, subprocess.Popen)
    assert proc.communicate(timeout=120)[1] == "to stderr\n" and proc.returncode == 0
