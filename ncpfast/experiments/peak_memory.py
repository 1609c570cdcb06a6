"""Runs a command as its own child and writes that child's peak resident memory.

    python ncpfast/experiments/peak_memory.py OUT_FILE COMMAND...

Run by path (it imports nothing of ncpfast), as a small process between a large
parent and the measured command. A child's ru_maxrss is not its own alone: when
it execs, Linux keeps the high-water mark of the memory it leaves, which for a
child spawned by vfork or posix_spawn is its parent's. The experiments train in
their own process (hundreds of MiB and more), so they start each measured
command through this launcher, whose own footprint (a bare interpreter, about
10 MiB) is what leaks into the measurement instead, and is below anything
ncpfast's programs use. OUT_FILE gets the peak in KiB (ru_maxrss's unit on
Linux); the exit status is the command's.
"""
import os
import signal
import subprocess
import sys


def main(argv: list) -> int:
    if len(argv) < 2:
        print("usage: peak_memory.py OUT_FILE COMMAND...", file=sys.stderr)
        return 2
    out, command = argv[0], argv[1:]
    child = subprocess.Popen(command)

    def forward(signum, frame):  # an interrupt of the experiment reaches the command (train checkpoints on it)
        child.send_signal(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, forward)
    while True:
        try:
            _, status, usage = os.wait4(child.pid, 0)
            break
        except InterruptedError:
            continue
    with open(out, "w") as f:
        f.write(f"{usage.ru_maxrss}\n")
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
