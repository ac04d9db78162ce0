"""The scorer's error types: bad input (exit code 2) and responses the cache does not have."""

from __future__ import annotations


class BadInput(ValueError):
    """Input the scorer cannot use: a task file, an override, a run-id, a manifest.

    The message is one line that says what is wrong and where; the CLI prints it
    and exits with code 2 before anything in the run folder is changed.
    """


class MissingResponses(LookupError):
    """Responses a run should hold but the cache does not: reported, never fetched."""

    def __init__(
        self, task: str, keys: list[str], remedy: str = "run `scorer run` again to generate them"
    ) -> None:
        self.task = task
        self.keys = keys
        shown = ", ".join(k[:16] for k in keys[:3])
        super().__init__(
            f"task {task}: {len(keys)} response(s) missing from the cache (keys {shown}"
            f"{', …' if len(keys) > 3 else ''}); {remedy}"
        )


class GatewayFailure(RuntimeError):
    """The gateway refused or failed a request during `scorer run`."""


class GatewayUnreachable(GatewayFailure):
    """Nothing listens at the gateway's address: `scorer run` may still read everything from the cache."""
