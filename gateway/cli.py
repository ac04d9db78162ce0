"""``gateway``: serve, and look after the cache."""

from __future__ import annotations

import logging
import socket
import sys
from pathlib import Path

import click

from gateway.config import ConfigError, load_config, replaygate_home
from gateway.logs import LogFormat, configure_logging
from gateway.workers import worker_count

CACHE_DIR = click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    default=lambda: replaygate_home() / "store",
    show_default="$REPLAYGATE_HOME/store",
    help="Where runs and the index live.",
)


@click.group()
def main() -> None:
    """replaygate's caching inference gateway."""
    from cache.private import keep_private

    keep_private()  # whatever a command creates under a cache dir is its user's alone


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
@click.option("--quiet", is_flag=True, help="No live status line on the terminal.")
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Processes serving one port (SO_REUSEPORT), each with its own record shards.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Log lines as text, or as one JSON object per line.",
)
def serve(
    config_path: Path | None,
    host: str | None,
    port: int | None,
    cache_dir: Path | None,
    quiet: bool,
    workers: int,
    log_format: LogFormat,
) -> None:
    """Serve the OpenAI-compatible gateway."""
    if workers > 1:
        from gateway.workers import serve_workers

        sys.exit(serve_workers(workers, config_path, host, port, cache_dir))
    from aiohttp import web

    from gateway.app import METRICS, REDACTOR, create_app
    from gateway.redaction import RedactingFilter
    from gateway.status import status_line_context, wanted

    configure_logging(log_format)
    try:
        config = load_config(config_path, host=host, port=port, cache_dir=cache_dir)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    from gateway.workers import as_worker

    config = as_worker(config)  # one of `serve --workers N`'s processes, or the only one
    _use_uvloop()
    _raise_open_file_limit()
    try:  # claim the port before launching anything: a port in use is one line, not a traceback
        sock = _bound_socket(config.host, config.port, reuse_port=worker_count() > 1)
    except OSError as exc:
        click.echo(f"gateway: cannot listen on {config.host}:{config.port}: {exc.strerror or exc}", err=True)
        sys.exit(2)
    url = f"http://{_url_host(config.host)}:{sock.getsockname()[1]}"

    def announce(_: str) -> None:  # called by aiohttp once every upstream is ready and it listens
        click.echo(
            f"gateway: serving {', '.join(m.name for m in config.models)} on {url} "
            f"(dashboard {url}/ui, metrics {url}/metrics, cache {config.cache_dir})",
            err=True,
        )

    app = create_app(config)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter(app[REDACTOR]))
    if wanted(quiet):
        app.cleanup_ctx.append(status_line_context(METRICS))
    web.run_app(
        app,
        sock=sock,
        access_log=None,
        print=announce,
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
    from gateway.redaction import MIN_SECRET_LENGTH

    key = sys.stdin.readline().strip()
    if not key:
        raise click.UsageError("no key on stdin")
    if len(key) < MIN_SECRET_LENGTH:  # it is masked wherever it appears: a short one masks words
        raise click.UsageError(
            f"a gateway key needs at least {MIN_SECRET_LENGTH} characters (use e.g. `openssl rand -hex 32`)"
        )
    click.echo(digest(key))


@main.group()
def cache() -> None:
    """Inspect and repair the cache."""


@cache.command()
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="The store to rebuild  [default: the config's cache_dir, else $REPLAYGATE_HOME/store]",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A gateway config: when its state backend is redis, that Redis's index is filled too.",
)
@click.option(
    "--state-url",
    default=None,
    help="Fill the index of the Redis at this URL too (redis://host:port/db; wins over the config's).",
)
def rebuild(cache_dir: Path | None, config_path: Path | None, state_url: str | None) -> None:
    """Rebuild the response index from the run records alone (and a fleet's Redis index with it)."""
    from cache.index import rebuild_index
    from cache.records import ReadReport

    prefix = "rg:"
    if config_path is not None:
        try:
            config = load_config(config_path, cache_dir=cache_dir)
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from exc
        cache_dir = config.cache_dir
        prefix = config.state.prefix
        if config.state.backend == "redis" and state_url is None:
            state_url = config.state.url
    cache_dir = cache_dir or replaygate_home() / "store"
    report = ReadReport()
    if state_url is None:
        written = rebuild_index(cache_dir, report)
        click.echo(f"rebuilt index from {report.describe()}: {written} entries")
        return
    from redis.exceptions import RedisError

    from gateway.state.redis import RedisIndexFiller

    try:
        filler = RedisIndexFiller(state_url, prefix)
        try:
            written = rebuild_index(cache_dir, report, also=[filler])
        finally:
            filler.close()
    except RedisError as exc:  # the local index may be rebuilt; the fleet's is not complete
        raise click.ClickException(f"cannot fill redis's index: {type(exc).__name__}: {exc}") from exc
    click.echo(f"rebuilt index from {report.describe()}: {written} entries, {filler.written} sent to redis")


@cache.command("explain")
@click.argument("run_id")
@click.argument("key")
@click.option("--nearest", type=int, default=3, show_default=True, help="Stored requests to compare with.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@CACHE_DIR
def explain_command(run_id: str, key: str, nearest: int, fmt: str, cache_dir: Path) -> None:
    """Why KEY of RUN_ID missed: the nearest stored requests of its endpoint and model, and what differs."""
    import orjson

    from cache.explain import NoSuchRequest, explain, to_text
    from cache.runs import BadRunId

    try:
        explanation = explain(cache_dir, run_id, key, nearest)
    except (BadRunId, NoSuchRequest) as exc:
        click.echo(f"gateway cache explain: {exc}", err=True)
        sys.exit(2)
    if fmt == "json":
        click.echo(orjson.dumps(explanation.as_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(to_text(explanation))


@main.command()
@click.argument("run_id")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv", "html"]),
    default="table",
    show_default=True,
    help="html is one self-contained file (charts included, no network needed to view it).",
)
@click.option(
    "--by",
    type=click.Choice(["model", "task", "hour"]),
    default="model",
    show_default=True,
    help="Group requests by model, by task (X-Task or metadata.task) or by UTC hour.",
)
@click.option("--output", "-o", type=click.Path(path_type=Path), default=None, help="Write here, not stdout.")
@CACHE_DIR
def report(run_id: str, fmt: str, by: str, output: Path | None, cache_dir: Path) -> None:
    """What RUN_ID cost, what the cache saved, and how fast it went, from its records."""
    from cache.runs import BadRunId
    from gateway.report import UnknownRun, build_report, render

    try:
        text = render(build_report(cache_dir, run_id, by), fmt)  # type: ignore[arg-type]
    except (BadRunId, UnknownRun) as exc:
        click.echo(f"gateway report: {exc}", err=True)
        sys.exit(2)
    if output is None:
        click.echo(text)
    else:
        output.write_text(text)
        click.echo(f"wrote {output}", err=True)


@main.command("log")
@click.argument("run_id")
@click.option("--served", multiple=True, help="hit, miss, coalesced, batched or batch (repeatable).")
@click.option("--status", multiple=True, help="503, 5xx, ok, error, or an error code (repeatable).")
@click.option("--model", multiple=True, help="A model name as the client asked for it (repeatable).")
@click.option("--task", multiple=True, help="A task (X-Task or metadata.task; - for none; repeatable).")
@click.option("--grep", default=None, help="Case-insensitive text of the prompt or the answer.")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json", "jsonl"]), default="table", show_default=True
)
@click.option("--limit", type=int, default=None, help="At most this many records.")
@CACHE_DIR
def log_command(
    run_id: str,
    served: tuple[str, ...],
    status: tuple[str, ...],
    model: tuple[str, ...],
    task: tuple[str, ...],
    grep: str | None,
    fmt: str,
    limit: int | None,
    cache_dir: Path,
) -> None:
    """RUN_ID's requests, newest first, streamed (jsonl: the records exactly as stored)."""
    import itertools

    from cache.runs import BadRunId
    from gateway.report import UnknownRun
    from gateway.report.log import LogFilter, RunLog
    from gateway.report.log_output import lines

    try:
        log = RunLog(cache_dir, run_id)
    except (BadRunId, UnknownRun) as exc:
        click.echo(f"gateway log: {exc}", err=True)
        sys.exit(2)
    entries = log.entries(LogFilter(served, status, model, task, grep))
    if limit is not None:
        entries = itertools.islice(entries, limit)
    try:
        for line in lines(log, entries, fmt):  # type: ignore[arg-type]
            click.echo(line)
    except BrokenPipeError:  # `gateway log RUN | head`: the reader has seen enough
        sys.stderr.close()


@main.command()
@click.argument("run_a")
@click.argument("run_b")
@click.option(
    "--match",
    type=click.Choice(["key", "request"]),
    default="key",
    show_default=True,
    help="key: same request to the same deployment; request: same request, whatever the model.",
)
@click.option("--examples", type=int, default=20, show_default=True, help="Differing answers to show.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@CACHE_DIR
def diff(run_a: str, run_b: str, match: str, examples: int, fmt: str, cache_dir: Path) -> None:
    """Compare RUN_A with RUN_B: requests in both, only in one, differing answers, totals side by side."""
    import orjson

    from cache.runs import BadRunId
    from gateway.report import UnknownRun
    from gateway.report.diff import diff_runs, to_text

    try:
        result = diff_runs(cache_dir, run_a, run_b, match, examples)  # type: ignore[arg-type]
    except (BadRunId, UnknownRun) as exc:
        click.echo(f"gateway diff: {exc}", err=True)
        sys.exit(2)
    if fmt == "json":
        click.echo(orjson.dumps(result.as_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(to_text(result))


@main.command()
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@CACHE_DIR
def runs(fmt: str, cache_dir: Path) -> None:
    """The runs under the cache dir: size, records, cost and time span."""
    import time

    import orjson

    from gateway.report import summarise_all
    from gateway.report.render import table

    summaries = summarise_all(cache_dir)
    if fmt == "json":
        click.echo(orjson.dumps([s.as_dict() for s in summaries], option=orjson.OPT_INDENT_2).decode())
        return

    def when(ts: float | None) -> str | None:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) if ts is not None else None

    headers = ["run", "records", "MB", "cost_usd", "saved_usd", "first (UTC)", "last (UTC)", "span_s"]
    body = [
        [
            s.run_id,
            s.records,
            round(s.bytes / 1e6, 3),
            s.cost_usd,
            s.cost_saved_usd,
            when(s.first_ts),
            when(s.last_ts),
            round(s.last_ts - s.first_ts, 1) if s.first_ts is not None and s.last_ts is not None else None,
        ]
        for s in summaries
    ]
    click.echo(table(headers, body) if summaries else f"no runs under {cache_dir}")


def _raise_open_file_limit() -> None:
    """Lift the soft open-file limit to the hard one: every client socket and run shard needs a descriptor.

    (The default soft limit, often 1024, is a relic of select(); the record
    writer sizes its set of open shards from the limit it finds.)
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):  # e.g. an unlimited hard limit the kernel caps lower: keep the soft one
            pass


def _bound_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A socket bound to ``host:port`` but not yet listening: clients are refused until the app is ready.

    With ``reuse_port`` several processes bind the same port and the kernel
    spreads connections between those listening (``serve --workers``).
    """
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    if sys.platform != "win32":
        uvloop.install()


if __name__ == "__main__":
    main()
