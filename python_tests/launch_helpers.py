"""Starting the programs under torchrun in tests: several CPU ranks (gloo) on this machine."""
import socket
import sys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(processes: int) -> list:
    """The command line that starts `processes` ranks; append the program (-m MODULE, or a script)."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port())]
