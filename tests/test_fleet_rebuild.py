"""`gateway cache rebuild` fills a fleet's Redis index too: every indexable entry of every shard, batched."""

from __future__ import annotations

from pathlib import Path

import orjson
import redis
from click.testing import CliRunner, Result

from cache.index import ResponseIndex
from cache.runs import run_dir
from gateway.cli import main as gateway_cli
from gateway.config import StateConfig
from gateway.state.redis import RedisState


def answer(key: str, text: str, ts_end: float, served: str = "miss", status: int = 200) -> dict[str, object]:
    return {"key": key, "served": served, "status": status, "response": {"text": text}, "ts_end": ts_end}


def write_shard(store: Path, run_id: str, name: str, records: list[dict[str, object]]) -> None:
    shard = run_dir(store, run_id) / name
    shard.parent.mkdir(parents=True, exist_ok=True)
    shard.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))


def two_runs_three_shards(store: Path) -> None:
    """k0..k9 across runs and processes, k3 refreshed later by another run, plus what is never indexed."""
    write_shard(store, "r1", "100-pod-a-1.jsonl", [answer(f"k{i}", f"a{i}", 10.0 + i) for i in range(5)])
    write_shard(store, "r1", "200-pod-b-1.jsonl", [answer(f"k{i}", f"b{i}", 20.0 + i) for i in range(5, 10)])
    later = [
        answer("k3", "refreshed", 99.0),
        answer("bad", "x", 50.0, status=500),
        answer("k1", "hit", 60.0, "hit"),
    ]
    write_shard(store, "r2", "050-pod-c-1.jsonl", later)


def redis_entries(url: str, prefix: str) -> dict[str, bytes]:
    client = redis.Redis.from_url(url)
    try:
        names = sorted(client.scan_iter(match=f"{prefix}idx:*"))
        return {
            name.decode()[len(prefix) + 4 :]: body
            for name, body in zip(names, client.mget(names), strict=True)
        }
    finally:
        client.close()


def mset_calls(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
        return int(stats.get("cmdstat_mset", {}).get("calls", 0))
    finally:
        client.close()


def fleet_config(tmp_path: Path, store: Path, url: str, prefix: str) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(
        f"cache_dir: {store}\nstate: {{backend: redis, url: '{url}', prefix: '{prefix}'}}\n"
        "models:\n  - {name: m, provider: openai-compatible, api_base: 'http://127.0.0.1:9/v1'}\n"
    )
    return path


def test_rebuild_with_a_redis_config_fills_redis_with_every_entry_the_local_index_gets(
    tmp_path: Path, redis_url: str
) -> None:
    store = tmp_path / "store"
    two_runs_three_shards(store)
    result = CliRunner().invoke(
        gateway_cli, ["cache", "rebuild", "--config", str(fleet_config(tmp_path, store, redis_url, "t14:"))]
    )
    assert result.exit_code == 0, result.output
    assert "10 entries, 10 sent to redis" in result.output
    shared = redis_entries(redis_url, "t14:")
    local = ResponseIndex(store)
    try:
        assert shared == {f"k{i}": local.get(f"k{i}") for i in range(10)}  # the same bodies, byte for byte
    finally:
        local.close()
    assert orjson.loads(shared["k3"]) == {"text": "refreshed"}  # the latest answer, from another run
    assert orjson.loads(shared["k7"]) == {"text": "b7"}


def rebuild(store: Path, state_url: str) -> Result:
    """``gateway cache rebuild --cache-dir STORE --state-url URL``, as a user runs it."""
    return CliRunner().invoke(
        gateway_cli, ["cache", "rebuild", "--cache-dir", str(store), "--state-url", state_url]
    )


def test_rebuild_with_state_url_fills_that_redis_under_the_default_prefix(
    tmp_path: Path, redis_url: str
) -> None:
    store = tmp_path / "store"
    two_runs_three_shards(store)
    result = rebuild(store, redis_url)
    assert result.exit_code == 0, result.output
    assert set(redis_entries(redis_url, "rg:")) == {f"k{i}" for i in range(10)}


def test_rebuild_sends_bodies_to_redis_in_bounded_batches(tmp_path: Path, redis_url: str) -> None:
    store = tmp_path / "store"
    big = "x" * 100_000  # 200 bodies of ~100 kB: 20 MB in all, batches of at most 8 MiB
    write_shard(
        store, "r", "100-pod-a-1.jsonl", [answer(f"big{i}", big + str(i), float(i)) for i in range(200)]
    )
    write_shard(store, "r", "200-pod-b-1.jsonl", [answer(f"small{i}", str(i), float(i)) for i in range(2500)])
    result = rebuild(store, redis_url)
    assert result.exit_code == 0, result.output
    assert len(redis_entries(redis_url, "rg:")) == 2700
    # 84 big bodies fill 8 MiB (twice), then 1000 entries a batch (32 big + 968 small, 1000, the last 532).
    assert mset_calls(redis_url) == 5


def test_rebuild_fails_loudly_when_the_named_redis_is_out_of_reach(tmp_path: Path) -> None:
    store = tmp_path / "store"
    two_runs_three_shards(store)
    result = rebuild(store, "redis://127.0.0.1:9/0")
    assert result.exit_code != 0
    assert "cannot fill redis's index" in result.output


async def test_a_replica_with_an_empty_store_answers_from_the_index_the_rebuild_put_in_redis(
    tmp_path: Path, redis_url: str
) -> None:
    store = tmp_path / "store"
    two_runs_three_shards(store)
    result = rebuild(store, redis_url)
    assert result.exit_code == 0, result.output
    state = RedisState(StateConfig(backend="redis", url=redis_url))
    await state.start()
    index = state.index(ResponseIndex(tmp_path / "new-pod"))  # a pod's fresh emptyDir: nothing on disk
    try:
        assert orjson.loads(await index.aget("k3") or b"null") == {"text": "refreshed"}
        assert await index.aget("bad") is None
    finally:
        index.close()
        await state.close()
