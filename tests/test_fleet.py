"""Three `gateway serve` processes, each with its own cache dir, sharing state through a real redis-server.

What they must do as one gateway: one upstream call per distinct key, one
answer for every replica, one RPM limit for all three, and serving on
through a replica's crash or Redis's.
"""

from __future__ import annotations

import asyncio
import bisect
import random
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from cache.records import read_records, shard_paths
from cache.runs import run_dir
from tests.processes import GatewayProcess, StandInProcess, gateway_config
from tests.redis_server import RedisServer

RUN = "fleet"
REPLICAS = 3
# Short leases so a killed holder's expire within the test; a generous timeout, as three replicas, the
# stand-in and Redis share two cores and a busy event loop must not read as a slow Redis.
STATE_TIMING = "lease_s: 2, timeout_s: 3"


@pytest.fixture
async def standin() -> AsyncIterator[StandInProcess]:
    server = StandInProcess()
    yield server
    server.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:
        yield client


async def start_fleet(
    tmp_path: Path,
    standin: StandInProcess,
    redis_url: str,
    session: aiohttp.ClientSession,
    replicas: int = REPLICAS,
    state_timing: str = STATE_TIMING,
    **model: object,
) -> list[GatewayProcess]:
    """Three replicas, each with a cache dir of its own (as on three machines): only Redis is shared."""
    fleet = []
    for n in range(replicas):
        config = gateway_config(tmp_path / f"gateway{n}.yaml", standin.api_base, **model)
        state = f"state: {{backend: redis, url: '{redis_url}', replicas: {replicas}, {state_timing}}}\n"
        config.write_text(state + config.read_text())
        replica = GatewayProcess(config, tmp_path / f"store{n}", tmp_path / f"gateway{n}.log")
        replica.start()
        fleet.append(replica)
    for replica in fleet:
        await replica.wait_healthy(session)
    return fleet


def stop_fleet(fleet: list[GatewayProcess]) -> None:
    for replica in fleet:
        if replica.process is not None and replica.process.poll() is None:
            replica.stop()


async def ask(session: aiohttp.ClientSession, url: str, prompt: str) -> tuple[int, str, bytes]:
    body = {"model": "standin", "prompt": prompt, "max_tokens": 8, "temperature": 0}
    async with session.post(f"{url}/runs/{RUN}/v1/completions", json=body) as response:
        return response.status, response.headers.get("X-Cache", ""), await response.read()


def workload(distinct: int, duplicates: int, seed: int = 14) -> list[str]:
    prompts = [f"prompt {i}" for i in range(distinct)]
    rng = random.Random(seed)
    mixed = prompts + [rng.choice(prompts) for _ in range(duplicates)]
    rng.shuffle(mixed)
    return mixed


async def health(session: aiohttp.ClientSession, replica: GatewayProcess) -> dict[str, object]:
    async with session.get(replica.url + "/healthz") as response:
        return orjson.loads(await response.read())  # type: ignore[no-any-return]


def recorded_keys(replica: GatewayProcess) -> set[str]:
    shards = shard_paths(run_dir(replica.cache_dir, RUN))
    return {r["key"] for r in read_records(shards) if r.get("status") == 200}


async def test_three_replicas_call_the_upstream_once_per_distinct_key_and_share_every_answer(
    tmp_path: Path, standin: StandInProcess, redis_url: str, session: aiohttp.ClientSession
) -> None:
    fleet = await start_fleet(tmp_path, standin, redis_url, session)
    try:
        prompts = workload(distinct=210, duplicates=90)
        replies = await asyncio.gather(
            *(ask(session, fleet[i % REPLICAS].url, p) for i, p in enumerate(prompts))
        )
        assert all(status == 200 for status, _, _ in replies), [r for r in replies if r[0] != 200][:3]
        stats = await standin.stats(session)
        assert stats["total"] == 210, f"{stats['total']} upstream calls for 210 distinct keys"
        assert max(stats["calls"].values()) == 1
        # Every answer given by one replica is a hit on the others, and the same answer.
        answers = {p: body for p, (_, _, body) in zip(prompts, replies, strict=True)}
        for i, prompt in enumerate(sorted(answers)):
            status, served, body = await ask(session, fleet[(i + 1) % REPLICAS].url, prompt)
            assert (status, served) == (200, "hit"), (prompt, status, served)
            assert orjson.loads(body)["id"] == orjson.loads(answers[prompt])["id"]
        assert (await standin.stats(session))["total"] == 210
        detail = await health(session, fleet[0])
        assert detail["state"] == detail["state"] | {"backend": "redis", "shared": True}  # type: ignore[operator]
    finally:
        stop_fleet(fleet)


# The fleet's one bucket holds RPM and refills continuously at RPM/60 a second (Redis's clock): a burst of
# RPM goes at once, then one call every 60/RPM s. By SETTLE_S the burst (and what refilled while it went)
# has gone; after it the limiter alone sets the pace, for STEADY_S more.
RPM = 600
SETTLE_S, STEADY_S = 6.0, 12.0
WITHIN = 0.03


async def test_an_rpm_limit_holds_for_the_three_replicas_together_to_within_3_percent_per_window(
    tmp_path: Path, standin: StandInProcess, redis_url: str, session: aiohttp.ClientSession
) -> None:
    """rpm 600 over three replicas: upstream arrivals in any window from the first are the bucket plus its
    refill (±3%), and, once the burst is over, exactly the refill rate (±3%). Alone, each replica would let
    600 go at once. Every request is sent at once and waits in a queue with room (260 of 1024 per replica):
    none may be refused."""
    rate = RPM / 60
    sent = RPM + int(rate * (SETTLE_S + STEADY_S))
    fleet = await start_fleet(tmp_path, standin, redis_url, session, rpm=RPM)
    try:
        prompts = [f"limited {i}" for i in range(sent)]
        replies = await asyncio.gather(
            *(ask(session, fleet[i % REPLICAS].url, p) for i, p in enumerate(prompts))
        )
        statuses = [status for status, _, _ in replies]
        assert statuses.count(200) == sent, f"refused or failed with room in the queue: {set(statuses)}"
        arrivals = sorted(await standin.arrivals(session))
        assert len(arrivals) == sent
        first, last = arrivals[0], arrivals[-1]

        def allowed(window_s: float) -> float:  # what the bucket lets through in window_s from the first
            return RPM + rate * window_s

        for window_s in (1.0, SETTLE_S / 2):  # during the burst: at most the bucket and its refill
            count = bisect.bisect_right(arrivals, first + window_s)
            assert count <= allowed(window_s) * (1 + WITHIN), (window_s, count, allowed(window_s))
        settled = bisect.bisect_right(arrivals, first + SETTLE_S)
        assert settled <= allowed(SETTLE_S) * (1 + WITHIN), (settled, allowed(SETTLE_S))
        assert settled >= allowed(SETTLE_S) * (1 - WITHIN), (
            f"only {settled} calls in the first {SETTLE_S:g} s (the bucket allows {allowed(SETTLE_S):.0f}):"
            " the limiter held back more than its limit, or the machine was too busy to send the burst"
        )
        for window_s in (SETTLE_S + STEADY_S / 2, last - first):  # later windows from the first, to the end
            count = bisect.bisect_right(arrivals, first + window_s)
            assert abs(count - allowed(window_s)) <= allowed(window_s) * WITHIN, (window_s, count)
        # After the burst the bucket is empty and every call waits for its token: the refill rate itself.
        steady, span_s = sent - settled, last - (first + SETTLE_S)
        assert span_s >= STEADY_S * (1 - WITHIN), f"{steady} calls after the burst took only {span_s:.1f} s"
        assert abs(steady / span_s - rate) <= rate * WITHIN, (
            f"{steady / span_s:.2f} calls/s, limit {rate:g}/s"
        )
    finally:
        stop_fleet(fleet)


async def test_a_killed_replica_loses_no_acknowledged_answer_and_its_leases_expire(
    tmp_path: Path, standin: StandInProcess, redis_url: str, session: aiohttp.ClientSession
) -> None:
    fleet = await start_fleet(tmp_path, standin, redis_url, session)
    try:
        # A held call on replica 0 takes the key's lease; replica 1 asks for the same key and waits.
        held = asyncio.ensure_future(ask(session, fleet[0].url, "hold: slow"))
        await _until_in_flight(session, standin, 1)
        follower = asyncio.ensure_future(ask(session, fleet[1].url, "hold: slow"))
        acknowledged = await asyncio.gather(*(ask(session, fleet[0].url, f"before {i}") for i in range(30)))
        assert all(status == 200 for status, _, _ in acknowledged)
        fleet[0].kill9()
        with pytest.raises(aiohttp.ClientError):
            await held
        # Its lease expires (lease_s 2); the follower moves on and calls the upstream itself.
        await standin.release(session)
        status, served, _ = await asyncio.wait_for(follower, 30)
        assert (status, served) == (200, "miss")
        # Every answer it acknowledged is in its shard and a hit on the others.
        assert {f"before {i}" for i in range(30)} <= {
            r["request"]["prompt"] for r in _records(fleet[0]) if r.get("status") == 200
        }
        for i in range(30):
            status, served, _ = await ask(session, fleet[2].url, f"before {i}")
            assert (status, served) == (200, "hit")
    finally:
        stop_fleet(fleet)


# A waiter looks again on its own only every 30 s: one that answers within the tests' deadlines was woken.
ANNOUNCED_ONLY = STATE_TIMING + ", wait_recheck_s: 30"
WOKEN_WITHIN_S = 10


def redis_calls(redis_server: RedisServer, command: str) -> int:
    """How many times Redis has run ``command`` (``INFO commandstats``), those inside scripts included."""
    for line in redis_server.command("INFO", "commandstats").decode().splitlines():
        if line.startswith(f"cmdstat_{command}:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


async def holder_and_waiter(
    session: aiohttp.ClientSession, standin: StandInProcess, fleet: list[GatewayProcess], prompt: str
) -> tuple[asyncio.Future[tuple[int, str, bytes]], asyncio.Future[tuple[int, str, bytes]]]:
    """``prompt`` asked of replica 0 (held upstream), then of replica 1 once it waits for replica 0."""
    held = asyncio.ensure_future(ask(session, fleet[0].url, prompt))
    await _until_in_flight(session, standin, 1)
    follower = asyncio.ensure_future(ask(session, fleet[1].url, prompt))
    await _until_a_replica_waits(session, fleet[1:])
    return held, follower


async def test_a_waiter_on_another_replica_is_woken_by_the_holders_store_not_by_polling(
    tmp_path: Path,
    standin: StandInProcess,
    redis_url: str,
    redis_server: RedisServer,
    session: aiohttp.ClientSession,
) -> None:
    """The holder's store announces the answer to the replica waiting for it, even after a wait longer than
    lease_s (the waited-for mark lives in the lease, renewed with it): with its own looks 30 s apart, the
    waiter answers at once."""
    fleet = await start_fleet(tmp_path, standin, redis_url, session, replicas=2, state_timing=ANNOUNCED_ONLY)
    try:
        held, follower = await holder_and_waiter(session, standin, fleet, "hold: announced")
        renewed = redis_calls(redis_server, "eval")  # the holder renews its lease (an EVAL) every lease_s / 3

        async def past_lease_s() -> bool:
            return redis_calls(redis_server, "eval") >= renewed + 4

        await _until(past_lease_s, 20, "the holder to renew its lease for longer than lease_s")
        await standin.release(session)
        assert (await held)[:2] == (200, "miss")
        status, served, _ = await asyncio.wait_for(follower, WOKEN_WITHIN_S)
        assert (status, served) == (200, "coalesced")
        assert (await standin.stats(session))["total"] == 1
        assert (await health(session, fleet[1]))["state"]["announced"] >= 1  # type: ignore[index,operator]
    finally:
        stop_fleet(fleet)


async def test_a_waiter_is_woken_at_once_when_the_holder_gives_up(
    tmp_path: Path, standin: StandInProcess, redis_url: str, session: aiohttp.ClientSession
) -> None:
    """The holder's call fails (its upstream is gone): its release announces it, and the waiter (its own looks
    30 s apart) claims the key and tries itself at once, rather than after its next look."""
    fleet = await start_fleet(tmp_path, standin, redis_url, session, replicas=2, state_timing=ANNOUNCED_ONLY)
    try:
        held, follower = await holder_and_waiter(session, standin, fleet, "hold: given up")
        standin.stop()
        assert (await held)[0] >= 500
        status, served, _ = await asyncio.wait_for(follower, WOKEN_WITHIN_S)
        assert status >= 500 and served != "coalesced", (
            status,
            served,
        )  # it called the (gone) upstream itself
        assert (await health(session, fleet[1]))["state"]["announced"] >= 1  # type: ignore[index,operator]
    finally:
        stop_fleet(fleet)


async def test_after_redis_comes_back_each_replica_subscribes_again_and_its_waiters_are_woken(
    tmp_path: Path,
    standin: StandInProcess,
    redis_url: str,
    redis_server: RedisServer,
    session: aiohttp.ClientSession,
) -> None:
    fleet = await start_fleet(tmp_path, standin, redis_url, session, replicas=2, state_timing=ANNOUNCED_ONLY)
    try:
        for replica in fleet:
            await _until_subscribed(session, replica)
        redis_server.stop()

        async def unsubscribed() -> bool:
            return not any([(await health(session, replica))["state"]["subscribed"] for replica in fleet])  # type: ignore[index]

        await _until(unsubscribed, 10, "both replicas to lose their subscription")
        redis_server.start()
        for replica in fleet:
            await _until_subscribed(session, replica)
        held, follower = await holder_and_waiter(session, standin, fleet, "hold: after the outage")
        await standin.release(session)
        assert (await held)[:2] == (200, "miss")
        status, served, _ = await asyncio.wait_for(follower, WOKEN_WITHIN_S)
        assert (status, served) == (200, "coalesced")
        assert (await health(session, fleet[1]))["state"]["announced"] >= 1  # type: ignore[index,operator]
    finally:
        stop_fleet(fleet)


async def _until_subscribed(session: aiohttp.ClientSession, replica: GatewayProcess) -> None:
    async def subscribed() -> bool:
        return bool((await health(session, replica))["state"]["subscribed"])  # type: ignore[index]

    await _until(subscribed, 20, f"{replica.url} to subscribe to the fleet's announcements")


async def test_redis_stopped_mid_load_the_replicas_keep_answering_and_recording_then_share_again(
    tmp_path: Path,
    standin: StandInProcess,
    redis_url: str,
    redis_server: RedisServer,
    session: aiohttp.ClientSession,
) -> None:
    fleet = await start_fleet(tmp_path, standin, redis_url, session)
    try:
        first = await asyncio.gather(*(ask(session, fleet[i % 3].url, f"up {i}") for i in range(60)))
        redis_server.stop()
        during = await asyncio.gather(*(ask(session, fleet[i % 3].url, f"down {i}") for i in range(60)))
        assert all(status == 200 for status, _, _ in first + during)
        detail = await health(session, fleet[0])
        assert detail["state"]["shared"] is False  # type: ignore[index]
        async with session.get(fleet[0].url + "/metrics") as response:
            assert 'replaygate_state_shared{backend="redis"} 0.0' in (await response.text())
        recorded = set().union(*(recorded_keys(r) for r in fleet))
        assert len(recorded) == 120, "an answer acknowledged while Redis was down was not recorded"
        redis_server.start()
        for replica in fleet:
            await _until_shared(session, replica)
        await ask(session, fleet[0].url, "after")
        status, served, _ = await ask(session, fleet[1].url, "after")
        assert (status, served) == (200, "hit")
    finally:
        stop_fleet(fleet)


async def stream_chat(session: aiohttp.ClientSession, url: str, prompt: str) -> tuple[str, str, str]:
    """A streamed chat request: how it was served, the text of its events, and how its choice finished."""
    body = {"model": "standin", "messages": [{"role": "user", "content": prompt}], "stream": True}
    body |= {"max_tokens": 8, "temperature": 0}
    async with session.post(f"{url}/runs/{RUN}/v1/chat/completions", json=body) as response:
        assert response.status == 200, await response.text()
        served, raw = response.headers.get("X-Cache", ""), await response.read()
    events = [e.removeprefix("data: ") for e in raw.decode().split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "[DONE]", events  # the whole stream, to its end
    chunks = [orjson.loads(e) for e in events[:-1]]
    choices = [c for chunk in chunks for c in chunk["choices"]]
    text = "".join(c["delta"].get("content") or "" for c in choices)
    return served, text, ",".join(str(c["finish_reason"]) for c in choices if c["finish_reason"])


async def embed(session: aiohttp.ClientSession, url: str, inputs: list[str]) -> tuple[str, list[list[float]]]:
    """An embeddings request: how it was served, and its vectors."""
    body = {"model": "standin", "input": inputs}
    async with session.post(f"{url}/runs/{RUN}/v1/embeddings", json=body) as response:
        assert response.status == 200, await response.text()
        data = orjson.loads(await response.read())
        return response.headers.get("X-Cache", ""), [item["embedding"] for item in data["data"]]


async def _until_a_replica_waits(session: aiohttp.ClientSession, fleet: list[GatewayProcess]) -> None:
    """Until some replica has a request waiting for another's answer (``/healthz`` state.waiting)."""
    from tests.processes import until

    async def waiting() -> bool:
        details = [await health(session, replica) for replica in fleet]
        return any(detail["state"].get("waiting") for detail in details)  # type: ignore[attr-defined]

    await until(waiting, 20, "a replica to wait for another's answer")


async def test_identical_streamed_chats_on_two_replicas_share_one_upstream_call_and_each_client_gets_it_all(
    tmp_path: Path, standin: StandInProcess, redis_url: str, session: aiohttp.ClientSession
) -> None:
    fleet = await start_fleet(tmp_path, standin, redis_url, session, replicas=2)
    try:
        # The upstream sends the first event, then holds the rest: every request overlaps the first.
        clients = [
            asyncio.ensure_future(stream_chat(session, fleet[i % 2].url, "hold: one stream"))
            for i in range(8)
        ]
        await _until_in_flight(session, standin, 1)
        await _until_a_replica_waits(session, fleet)
        await standin.release(session)
        replies = await asyncio.gather(*clients)
        stats = await standin.stats(session)
        assert stats["total"] == 1, f"{stats['total']} upstream calls for one key asked on two replicas"
        assert {(text, finished) for _, text, finished in replies} == {(replies[0][1], "stop")}
        assert replies[0][1].startswith(" answer 0 to ")  # the one upstream call's whole text
        assert "coalesced" in {served for served, _, _ in replies[1::2]}  # the waiting replica's clients
        recorded = [r["served"] for replica in fleet for r in _records(replica)]
        assert sorted(recorded) == sorted(served for served, _, _ in replies), recorded  # one record each
    finally:
        stop_fleet(fleet)


async def test_identical_embeddings_on_two_replicas_share_one_upstream_call(
    tmp_path: Path, standin: StandInProcess, redis_url: str, session: aiohttp.ClientSession
) -> None:
    fleet = await start_fleet(tmp_path, standin, redis_url, session, replicas=2)
    try:
        inputs = ["hold: first", "second", "third"]
        clients = [asyncio.ensure_future(embed(session, fleet[i % 2].url, inputs)) for i in range(8)]
        await _until_in_flight(session, standin, 1)
        await _until_a_replica_waits(session, fleet)
        await standin.release(session)
        replies = await asyncio.gather(*clients)
        stats = await standin.stats(session)
        assert stats["total"] == 1, f"{stats['total']} upstream calls for one set of inputs on two replicas"
        # The stand-in numbers each vector it makes: one set of numbers means one call answered everyone.
        assert len({orjson.dumps(vectors) for _, vectors in replies}) == 1
        assert len(replies[0][1]) == 3
        assert {served for served, _ in replies} <= {"miss", "coalesced", "hit"}
        assert [served for served, _ in replies].count("miss") == 1
    finally:
        stop_fleet(fleet)


async def _until(condition: object, deadline_s: float, what: str) -> None:
    from tests.processes import until

    await until(condition, deadline_s, what)


def _records(replica: GatewayProcess) -> list[dict[str, object]]:
    return list(read_records(shard_paths(run_dir(replica.cache_dir, RUN))))


async def _until_in_flight(session: aiohttp.ClientSession, standin: StandInProcess, count: int) -> None:
    from tests.processes import until

    async def reached() -> bool:
        return bool((await standin.stats(session))["in_flight"] >= count)

    await until(reached, 10, f"{count} call(s) in flight at the stand-in")


async def _until_shared(session: aiohttp.ClientSession, replica: GatewayProcess) -> None:
    from tests.processes import until

    async def shared() -> bool:
        return bool((await health(session, replica))["state"]["shared"])  # type: ignore[index]

    await until(shared, 10, f"{replica.url} to share state again")


class WorkersProcess(GatewayProcess):
    """``gateway serve --workers N``."""

    def __init__(self, workers: int, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.workers = workers

    def start(self, preexec_fn: object = None) -> None:
        import subprocess
        import sys

        from tests.processes import REPO

        command = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(self.config)]
        command += ["--port", str(self.port), "--cache-dir", str(self.cache_dir), "--quiet"]
        command += ["--workers", str(self.workers)]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=log)


async def ask_both_workers(
    server: WorkersProcess, session: aiohttp.ClientSession, distinct: int, duplicates: int
) -> tuple[list[tuple[int, str, bytes]], dict[str, object]]:
    """Once both workers listen, the replies to a workload with duplicates, and ``/healthz``'s detail."""
    await server.wait_healthy(session)

    async def all_serving() -> bool:
        return server.log.read_text().count("gateway: serving") == 2

    await _until(all_serving, 60, "both workers to listen")
    # New connections each time: the kernel spreads connections, not requests, between workers.
    prompts = workload(distinct=distinct, duplicates=duplicates)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
        replies = await asyncio.gather(*(ask(fresh, server.url, p) for p in prompts))
        return list(replies), await health(fresh, server)


@pytest.mark.parametrize("backend", ["local", "redis"])
async def test_serve_workers_serves_one_port_from_several_processes_each_with_its_own_shards(
    backend: str,
    tmp_path: Path,
    standin: StandInProcess,
    redis_server: RedisServer,
    session: aiohttp.ClientSession,
) -> None:
    config = gateway_config(tmp_path / "gateway.yaml", standin.api_base)
    if backend == "redis":
        redis_server.flush()
        config.write_text(
            f"state: {{backend: redis, url: '{redis_server.url}', {STATE_TIMING}}}\n" + config.read_text()
        )
    server = WorkersProcess(2, config, tmp_path / "store", tmp_path / "gateway.log")
    server.start()
    try:
        replies, detail = await ask_both_workers(server, session, distinct=40, duplicates=20)
        assert all(status == 200 for status, _, _ in replies)
        shards = shard_paths(run_dir(server.cache_dir, RUN))
        assert len(shards) == 2, [s.name for s in shards]  # both workers served, each in its own shard
        if backend == "redis":
            assert (await standin.stats(session))["total"] == 40  # one single-flight for both workers
            assert detail["state"]["shared"] is True  # type: ignore[index]
        else:
            assert "single-flight" in detail["state"]["per_process"]  # type: ignore[index]
        assert "workers on port" in server.log.read_text()
    finally:
        server.stop()


async def test_serve_workers_launches_its_redis_and_upstream_once_and_stops_them_with_itself(
    tmp_path: Path, standin: StandInProcess, session: aiohttp.ClientSession
) -> None:
    import json
    import sys

    from tests.redis_server import REDIS_SERVER
    from tests.upstreams import free_port

    redis = RedisServer(tmp_path)  # not started: the gateway launches it (state.launch), on its port
    relay_port = free_port()
    relay = [sys.executable, "-m", "tests.upstreams", standin.url, str(relay_port)]
    config = gateway_config(
        tmp_path / "gateway.yaml",
        f"http://127.0.0.1:{relay_port}/v1",
        launch=json.dumps({"command": relay, "ready_timeout_s": 30}),
    )
    redis_command = [REDIS_SERVER, "--port", str(redis.port), "--bind", "127.0.0.1", "--save", ""]
    launch = json.dumps({"command": redis_command + ["--dir", str(tmp_path)]})
    state = f"state: {{backend: redis, url: '{redis.url}', {STATE_TIMING}, launch: {launch}}}\n"
    config.write_text(state + config.read_text())
    server = WorkersProcess(2, config, tmp_path / "store", tmp_path / "gateway.log")
    server.start()
    try:
        replies, detail = await ask_both_workers(server, session, distinct=20, duplicates=10)
        assert all(status == 200 for status, _, _ in replies)
        assert (await standin.stats(session))["total"] == 20  # both workers share the launched Redis
        assert detail["state"]["shared"] is True  # type: ignore[index]
        redis_log = (server.cache_dir / "logs" / "redis.log").read_text()
        assert redis_log.count("Ready to accept connections") == 1, redis_log  # launched once, by the parent
        assert "Address already in use" not in (server.cache_dir / "logs" / "standin.log").read_text()
    finally:
        server.stop()
    assert server.process is not None and server.process.returncode == 0
    assert not redis.ping()  # stopped with the gateway
    with pytest.raises(aiohttp.ClientError):
        await session.get(f"http://127.0.0.1:{relay_port}/v1/models")
