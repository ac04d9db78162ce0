"""A real ``redis-server`` (Debian's package) on a free port, which a test may stop and start again."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.upstreams import free_port

REDIS_SERVER = shutil.which("redis-server")


class RedisServer:
    """``redis-server`` on 127.0.0.1, no persistence, its files under ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, deadline_s: float = 20) -> None:
        """Start it and wait until it answers PING."""
        assert REDIS_SERVER is not None
        command = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "no", "--dir", str(self.directory), "--protected-mode", "no"]
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=log)
        deadline = time.monotonic() + deadline_s
        while not self.ping():
            log_text = (self.directory / "redis.log").read_text
            assert self.process.poll() is None, f"redis-server exited: {log_text()}"
            assert time.monotonic() < deadline, "redis-server did not answer PING"
            time.sleep(0.05)

    def ping(self) -> bool:
        """Whether it answers PING now (a raw RESP exchange: no client library needed)."""
        return self.command("PING") == b"+PONG\r\n"

    def command(self, *words: str) -> bytes:
        """One inline command's raw reply, b"" when it cannot be reached."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(" ".join(words).encode() + b"\r\n")
                return sock.recv(1 << 20)
        except OSError:
            return b""

    def flush(self) -> None:
        """Forget every key and the command statistics."""
        self.command("FLUSHALL")
        self.command("CONFIG", "RESETSTAT")

    def stop(self) -> None:
        """Kill it (SIGKILL: an outage, not a shutdown) and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
