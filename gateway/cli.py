"""``gateway``: serve, and look after the cache."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from gateway.config import ConfigError, load_config, replaygate_home


@click.group()
def main() -> None:
    """replaygate's caching inference gateway."""


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="YAML config; without it, the embedded local SmolLM2 on vLLM.",
)
@click.option("--host", default=None, help="Address to bind (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port to bind (default 8000).")
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where runs and the index live (default $REPLAYGATE_HOME/store).",
)
def serve(config_path: Path | None, host: str | None, port: int | None, cache_dir: Path | None) -> None:
    """Serve the OpenAI-compatible gateway."""
    from aiohttp import web

    from gateway.app import REDACTOR, create_app
    from gateway.redaction import RedactingFilter

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(config_path, host=host, port=port, cache_dir=cache_dir)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    _use_uvloop()
    click.echo(
        f"gateway: serving {', '.join(m.name for m in config.models)} on "
        f"http://{config.host}:{config.port} (cache {config.cache_dir})",
        err=True,
    )
    app = create_app(config)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter(app[REDACTOR]))
    web.run_app(
        app,
        host=config.host,
        port=config.port,
        access_log=None,
        print=None,
        handle_signals=True,  # SIGTERM/SIGINT: stop accepting, let in-flight requests finish, clean up
        shutdown_timeout=config.shutdown_timeout_s,
    )


@main.group()
def keys() -> None:
    """Gateway keys."""


@keys.command("hash")
def hash_key() -> None:
    """Print the sha256 digest of a key read from stdin, for a config's ``keys`` list."""
    from gateway.auth import digest

    key = sys.stdin.readline().strip()
    if not key:
        raise click.UsageError("no key on stdin")
    click.echo(digest(key))


@main.group()
def cache() -> None:
    """Inspect and repair the cache."""


@cache.command()
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    default=lambda: replaygate_home() / "store",
    show_default="$REPLAYGATE_HOME/store",
)
def rebuild(cache_dir: Path) -> None:
    """Rebuild the response index from the run records alone."""
    from cache.index import rebuild_index
    from cache.records import ReadReport

    report = ReadReport()
    written = rebuild_index(cache_dir, report)
    click.echo(f"rebuilt index from {report.describe()}: {written} entries")


def _use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    if sys.platform != "win32":
        uvloop.install()


if __name__ == "__main__":
    main()
