"""The one helper that runs external commands.

Commands are argv lists, never shell strings.  Output goes to a log file (or
is captured); a failure raises ``CommandFailed`` naming the command line, its
exit status and the tail of its output, plus the log path when there is one.
"""

import ctypes
import os
import shlex
import signal
import subprocess

from .errors import CommandFailed

TAIL_LINES = 25
PR_SET_PDEATHSIG = 1


def die_with_parent():
    """Have the kernel kill this process when its parent ends: a build's
    commands must not outlive a killed ninja (each runs in a process group
    of its own, which a kill of ninja does not reach)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _tail(text, lines=TAIL_LINES):
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def die_with(pid, interval=0.5):
    """Kill this process (and, through ``tied`` commands and their
    namespaces, what it started) when process ``pid`` ends.  ninja runs a
    command through ``sh -c``, so the parent-death signal alone fires only
    when that shell ends, not when ninja is killed."""
    import threading
    import time

    def watch():
        while True:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except OSError:
                state = "X"
            if state in ("Z", "X"):
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(interval)
    threading.Thread(target=watch, daemon=True).start()


def run(argv, *, log=None, capture=False, cwd=None, env=None, input=None,
        check=True, tied=False, pass_fds=(), stdio=None):
    """Run ``argv``.

    ``log``: path of a file that receives stdout and stderr (appended).
    ``capture``: return stdout as text instead (stderr kept for errors).
    ``tied``: the command is killed when this process ends.
    ``pass_fds``: file descriptors the command inherits besides its stdio.
    ``stdio``: ``(stdin, stdout, stderr)`` descriptors the command gets (a
    terminal, for an interactive command): nothing is captured.
    Returns the ``subprocess.CompletedProcess``.
    """
    argv = [os.fspath(a) for a in argv]
    if stdio is not None:
        result = subprocess.run(argv, cwd=cwd, env=env, stdin=stdio[0],
                                stdout=stdio[1], stderr=stdio[2])
        if check and result.returncode != 0:
            raise _failed(argv, result.returncode, "")
        return result
    if log is not None:
        with open(log, "ab") as logf:
            logf.write(("$ " + shlex.join(argv) + "\n").encode())
            logf.flush()
            result = subprocess.run(argv, cwd=cwd, env=env, stdout=logf,
                                    stderr=subprocess.STDOUT,
                                    preexec_fn=die_with_parent if tied else None,
                                    pass_fds=pass_fds,
                                    input=input.encode() if isinstance(input, str) else input)
        if check and result.returncode != 0:
            with open(log, "rb") as logf:
                logf.seek(max(0, os.path.getsize(log) - 16384))
                tail = _tail(logf.read().decode(errors="replace"))
            raise CommandFailed(
                f"command failed with exit status {result.returncode}: "
                f"{shlex.join(argv)}\n{tail}\n(full log: {log})",
                argv=argv, status=result.returncode, output=tail)
        return result
    result = subprocess.run(argv, cwd=cwd, env=env, input=input,
                            stdout=subprocess.PIPE if capture else None,
                            stderr=subprocess.PIPE,
                            text=not isinstance(input, bytes))
    if check and result.returncode != 0:
        output = (result.stderr or "") if isinstance(result.stderr, str) else \
            (result.stderr or b"").decode(errors="replace")
        raise _failed(argv, result.returncode, output)
    return result


def _failed(argv, status, output):
    return CommandFailed(f"command failed with exit status {status}: "
                         f"{shlex.join(argv)}\n{_tail(output)}",
                         argv=argv, status=status, output=_tail(output))


class Started:
    """A command started now and given its standard input later
    (``finish``), so that its start-up overlaps other work.  It dies with
    this process; ``stop`` ends it if it was never finished."""

    def __init__(self, argv, env=None):
        self.argv = [os.fspath(a) for a in argv]
        self.process = subprocess.Popen(
            self.argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, preexec_fn=die_with_parent)

    def finish(self, input):
        """Give the command ``input``, wait for it; returns its stdout."""
        output, errors = self.process.communicate(input)
        if self.process.returncode != 0:
            raise _failed(self.argv, self.process.returncode, errors)
        return output

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()
