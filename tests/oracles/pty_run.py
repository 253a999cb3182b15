#!/usr/bin/env python3
"""Run a command under a real pseudo-terminal and save everything it wrote there.

    pty_run.py --cols 100 --rows 40 --out FILE [--timeout 300] -- COMMAND [ARGS...]

The command's stdin, stdout and stderr are the pty's slave side (so `isatty` is true and
the terminal has the given size); the raw bytes, escape codes included, go to FILE. Exits
with the command's exit code, or 124 when it outlived --timeout (it is then killed).
Standard library only (pty, select), for tests/generate.rs's progress bar test.
"""

import argparse
import fcntl
import os
import pty
import select
import signal
import struct
import sys
import termios
import time


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--cols", type=int, default=100)
    p.add_argument("--rows", type=int, default=40)
    p.add_argument("--out", required=True)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("command", nargs=argparse.REMAINDER)
    a = p.parse_args()
    command = a.command[1:] if a.command[:1] == ["--"] else a.command
    pid, fd = pty.fork()
    if pid == 0:
        # Sized by the child on its own side before exec: nothing can measure it first.
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", a.rows, a.cols, 0, 0))
        os.execvp(command[0], command)
    deadline = time.monotonic() + a.timeout
    out = bytearray()
    timed_out = False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            os.kill(pid, signal.SIGKILL)
            break
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: the child closed its side
            break
        if not data:
            break
        out += data
    _, status = os.waitpid(pid, 0)
    with open(a.out, "wb") as f:
        f.write(out)
    return 124 if timed_out else os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main())
