"""`gateway cache explain`: a missed request's nearest stored requests and the one field that differs."""

from __future__ import annotations

import orjson
from click.testing import CliRunner

from gateway.cli import main
from tests.conftest import RunningGateway

RUN = "explained"
BASE = {"model": "smollm2", "prompt": "The sky is", "max_tokens": 4, "temperature": 0, "stop": ["\n"]}


async def key_of(gateway: RunningGateway, body: dict, run: str = RUN) -> str:
    response = await gateway.post(f"/runs/{run}/v1/completions", body)
    assert response.status == 200
    return response.headers["X-Record-Key"]


def explain(gateway: RunningGateway, key: str, *args: str) -> dict:
    argv = ["cache", "explain", RUN, key, "--format", "json", *args, "--cache-dir", str(gateway.cache_dir)]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 0, result.output
    return orjson.loads(result.output)


async def test_explain_names_the_one_changed_field_of_the_nearest_stored_request(
    gateway: RunningGateway,
) -> None:
    base = await key_of(gateway, BASE, run="earlier")
    await key_of(gateway, {**BASE, "prompt": "Grass is", "max_tokens": 3})  # two fields away: farther
    changed = await key_of(gateway, {**BASE, "stop": ["."]})
    spaced = await key_of(gateway, {**BASE, "prompt": "The sky  is"})

    data = explain(gateway, changed)
    nearest = data["neighbours"][0]
    assert nearest["key"] == base and nearest["run_id"] == "earlier"
    assert [(d["field"], d["how"]) for d in nearest["differences"]] == [("stop", "changed")]
    assert (nearest["differences"][0]["this"], nearest["differences"][0]["cached"]) == (["."], ["\n"])

    data = explain(gateway, spaced)
    fields = [(d["field"], d["how"]) for d in data["neighbours"][0]["differences"]]
    assert fields == [("prompt", "whitespace only")]

    text = (
        CliRunner()
        .invoke(main, ["cache", "explain", RUN, changed, "--cache-dir", str(gateway.cache_dir)])
        .output
    )
    assert "stop: changed" in text and base in text


def test_explaining_an_unknown_key_is_one_line_and_exit_2(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "runs" / RUN).mkdir(parents=True)
    result = CliRunner().invoke(main, ["cache", "explain", RUN, "abc", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 2 and "abc" in result.output
