"""Run the bundles' ``python -m monai.bundle`` command lines from tests (shared by the bundle test files).

- :func:`run_bundle`: one command in its own ``python -m monai.bundle`` process; returns its output and
  fails the test, showing the output's end, when it exits non-zero.
- :func:`run_bundle_commands`: several commands whose exit status is the point (e.g. bad inputs that
  must fail), each in its own process forked from one interpreter that has imported MONAI once:
  ``import monai`` takes most of a command's 7-10 s here, and a failing command is done in 1-2 s
  after it. Each child runs exactly what ``python -m monai.bundle ARGS`` runs (``sys.argv`` set to
  ``ARGS``, then the ``monai.bundle`` package's ``__main__`` via ``runpy``, Python's own ``-m``
  machinery), with its stdout and stderr in its own log, and exits with the code that command would
  (an uncaught exception: ``sys.excepthook``, status 1).

Every process runs from the repository root (or ``cwd``) with one OpenMP / MKL thread, ``MONAI_RAT_CACHE``
set to the test's cache folder (demo data) and the repository on ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: size overrides for a tiny training run (4 iterations of 2 x 32 x 32 crops, feature_size 8)
TINY = [
    "--num_iterations", "4",
    "--val_interval", "2",
    "--log_interval", "1",
    "--batch_size", "2",
    "--patch_size", "[32,32]",
    "--feature_size", "8",
]  # fmt: skip
#: a smaller CT demo set for the CT bundle tests (8 training sources x 2 noise draws, 1 + 1 validation and
#: 2 + 1 test pairs, the real heads at 96 x 96): builds in a few seconds instead of about 20
CT_DEMO_SMALL = ["--demo_options", "{'num_train': 8, 'noise_draws': 2, 'num_val': 1, 'num_test': 2, 'real_size': 96}"]
TINY_CT = TINY + CT_DEMO_SMALL


def bundle_env(cache: Path) -> dict:
    """The environment of a bundle command: demo data under ``cache``, one thread, the repository importable."""
    env = dict(os.environ)
    env.update(
        MONAI_RAT_CACHE=str(cache),
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    return env


def run_bundle(
    args: list[str], cache: Path, timeout: int = 300, launcher: list[str] | None = None, cwd: Path = ROOT
) -> str:
    """Run ``python -m monai.bundle <args>`` from the repository root; return its output, fail with it.

    Args:
        args: the command line after ``python -m monai.bundle``.
        cache: ``MONAI_RAT_CACHE`` for the command.
        timeout: seconds.
        launcher: the interpreter part (default ``[sys.executable]``; e.g. ``torch.distributed.run``).
        cwd: the working directory (default the repository root).
    """
    cmd = (launcher or [sys.executable]) + ["-m", "monai.bundle", *args]
    proc = subprocess.run(
        cmd, cwd=cwd, env=bundle_env(cache), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed with {proc.returncode}:\n{out[-6000:]}"
    return out


_FORKED_RUNNER = r"""
import json, os, runpy, sys, time

import monai.bundle.scripts  # noqa: F401  (imports all of MONAI, the slow part, once for every command)

commands, logs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
results = []
for args, log in zip(commands, logs):
    start = time.monotonic()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: exactly `python -m monai.bundle *args`, output to its log
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        code = 0
        try:
            sys.argv = ["monai.bundle", *args]  # runpy sets argv[0] to the module's path, as -m does
            runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
        except SystemExit as e:
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
            code = 0 if e.code is None else (e.code if isinstance(e.code, int) else 1)
        except BaseException:
            sys.excepthook(*sys.exc_info())  # what Python does with an uncaught exception
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    results.append([os.waitstatus_to_exitcode(status), time.monotonic() - start])
print(json.dumps(results))
"""


def run_bundle_commands(
    commands: list[list[str]], cache: Path, log_dir: Path, timeout: int = 300, cwd: Path = ROOT
) -> list[dict]:
    """Run several ``python -m monai.bundle`` command lines, one after the other, each in a forked child.

    See the module docstring. POSIX only (``os.fork``).

    Args:
        commands: command lines (each the part after ``python -m monai.bundle``).
        cache: ``MONAI_RAT_CACHE`` for the commands.
        log_dir: where each command's output is written (``cmd_<i>.log``).
        timeout: seconds for all of them together.
        cwd: the working directory of every command (default the repository root).

    Returns:
        one ``{"returncode": int, "output": str, "seconds": float}`` per command, in order.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    logs = [str(log_dir / f"cmd_{i}.log") for i in range(len(commands))]
    proc = subprocess.run(
        [sys.executable, "-c", _FORKED_RUNNER, json.dumps(commands), json.dumps(logs)],
        cwd=cwd, env=bundle_env(cache), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 0, f"the command runner failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-6000:]}"
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    return [{"returncode": rc, "output": Path(log).read_text(), "seconds": s} for (rc, s), log in zip(results, logs)]
