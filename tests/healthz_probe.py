"""Ask a gateway's /healthz every 10 ms from a process of its own and log each latency, until killed.

    python -m tests.healthz_probe http://127.0.0.1:8000 probes.log

Each line of the log is ``<unix time sent> <seconds to answer> <status>``, or
``<unix time sent> error <what>``. Its own process, so a load generator
sharing the test's event loop cannot slow the measurement down.
"""

from __future__ import annotations

import http.client
import sys
import time
from urllib.parse import urlsplit


def main() -> None:
    """Probe until killed."""
    url, out = sys.argv[1], sys.argv[2]
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    with open(out, "a", buffering=1) as log:
        while True:
            sent = time.time()
            started = time.perf_counter()
            try:
                connection.request("GET", "/healthz")
                response = connection.getresponse()
                response.read()
                log.write(f"{sent:.6f} {time.perf_counter() - started:.6f} {response.status}\n")
            except (OSError, http.client.HTTPException) as exc:
                log.write(f"{sent:.6f} error {type(exc).__name__}: {exc}\n")
                connection.close()
            time.sleep(0.01)


if __name__ == "__main__":
    main()
