"""``gateway`` under uvloop's event loop: how the benchmark measures what uvloop would change.

Used exactly like the ``gateway`` command (``python benchmarks/uvloop_gateway.py serve …``);
uvloop must be importable (the benchmark puts a private copy on ``PYTHONPATH``). The CLI
installs uvloop by itself when it can import it; setting the policy here keeps the variant
explicit whatever the CLI does.
"""

from __future__ import annotations

import asyncio

import uvloop

from gateway.cli import main

if __name__ == "__main__":
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    main()
