"""The fast paths of `scorer score` give exactly what the slow ones give: bulk reads, keys, templates."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from cache.index import ResponseIndex
from cache.keys import KeySplice, canonical_fields, canonical_key, request_key
from scorer.templates import compile_template, render, simple_template
from tests.scorer_synthetic import generate_task, write_run


def test_get_many_answers_what_get_answers_key_by_key_including_bodies_kept_in_files(tmp_path: Path) -> None:
    index = ResponseIndex(tmp_path)
    try:
        bodies = {f"k{i}": orjson.dumps({"i": i, "pad": "x" * (i * 50)}) for i in range(1200)}
        bodies["big"] = b"y" * 100_000  # diskcache keeps values this large in a file, not in SQLite
        for key, body in bodies.items():
            index.set(key, body)
        wanted = [*bodies, "absent", "k3"]
        many = index.get_many(wanted)
        assert many == {k: index.get(k) for k in wanted if index.get(k) is not None}
        assert many == bodies
    finally:
        index.close()


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": [[1, 2]], "model": "m", "max_tokens": 8, "temperature": 0.0, "stop": ["\n"], "seed": 1},
        {"prompt": "text", "add_special_tokens": False},
        {"messages": [{"role": "user", "content": "hi"}], "stream": True, "top_p": 1.0},
    ],
)
def test_canonical_key_equals_request_key(body: dict[str, object]) -> None:
    assert canonical_key("/v1/completions", "up", canonical_fields(body)) == request_key(
        "/v1/completions", "up", body
    )
    assert canonical_key("/x", "up", canonical_fields(body), "s") == request_key("/x", "up", body, "s")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            {
                "prompt": [[1, 2]],
                "model": "m",
                "max_tokens": 8,
                "temperature": 0.0,
                "stop": ["\n"],
                "seed": 1,
            },
            "prompt",
        ),
        ({"prompt": 'tëxt "q"\n', "add_special_tokens": False}, "prompt"),
        ({"messages": [{"role": "user", "content": "hi"}], "stream": True, "top_p": 1.0}, "messages"),
        ({"a": 1, "zz": 2.0, "b": {"y": 1, "x": [2.0]}}, "zz"),
        ({"a": 1, "b": {"y": 1, "x": 2}}, "b"),
    ],
)
@pytest.mark.parametrize("salt", [None, "s"])
def test_a_spliced_key_equals_request_key(body: dict[str, object], field: str, salt: str | None) -> None:
    shared = canonical_fields({k: v for k, v in body.items() if k != field})
    splice = KeySplice("/v1/completions", "up", shared, field, salt)
    assert splice.key(body[field]) == request_key("/v1/completions", "up", body, salt)


DOCS = [
    {"q": "a", "n": 3, "f": 1.5, "z": None, "b": True, "l": [1, "x"], "d": {"k": 1}, "u": "é\n", "range": 1},
    {"q": "", "n": -0.0, "f": 1e20, "z": 0, "b": False, "l": [], "d": {}, "u": "\t", "range": "r"},
]


@pytest.mark.parametrize(
    "source",
    [
        "{{q}}",
        "Q: {{ q }}\nA:",
        "{{n}}+{{f}}={{z}} {{b}} {{l}} {{d}} {{u}}",
        "x}}y {",
        "\n\n{{q}}\n",
        "",
        "plain",
    ],
)
def test_plain_field_templates_render_without_jinja_exactly_as_jinja_does(source: str) -> None:
    assert simple_template(source) is not None
    for doc in DOCS:
        assert render(source, doc, "here") == compile_template(source).render(**doc)


@pytest.mark.parametrize(
    "source",
    ["{{ q | upper }}", "{% if q %}x{% endif %}", "{{true}}", "{{range}}", "a\r\n{{q}}", "{# c #}{{q}}"],
)
def test_templates_with_more_than_plain_fields_go_to_jinja(source: str) -> None:
    assert simple_template(source) is None
    for doc in DOCS:
        assert render(source, doc, "here") == compile_template(source).render(**doc)


def test_a_rescore_in_small_batches_equals_one_in_a_single_batch(tmp_path: Path) -> None:
    from scorer.replay import documents_of, score_from_cache
    from scorer.store import ResponseReader, RunFolder

    docs = [{"q": f"{i} + 1", "a": str(i + 1)} for i in range(50)]
    write_run(tmp_path, "r", generate_task(), docs, lambda i, d: f" {d['a'] if i % 3 else 'x'}")
    folder = RunFolder(tmp_path, "r")
    manifest = folder.read_manifest()
    task = generate_task()
    reader = ResponseReader(tmp_path, "r")
    try:
        whole = score_from_cache(reader, manifest, task, documents_of(folder, manifest, task))
        batched = score_from_cache(reader, manifest, task, documents_of(folder, manifest, task), batch_docs=7)
    finally:
        reader.close()
    assert whole.values == batched.values
    assert whole.values[("exact_match", "num")][0] == pytest.approx(33 / 50)
    assert whole.lines == batched.lines


def test_batches_scored_by_worker_processes_give_what_one_process_gives(tmp_path: Path) -> None:
    from scorer.errors import MissingResponses
    from scorer.replay import documents_of, score_from_cache
    from scorer.store import ResponseReader, RunFolder

    docs = [{"q": f"{i} + 1", "a": str(i + 1)} for i in range(60)]
    write_run(tmp_path, "r", generate_task(), docs, lambda i, d: f" {d['a'] if i % 3 else 'x'}")
    folder = RunFolder(tmp_path, "r")
    manifest = folder.read_manifest()
    task = generate_task()
    reader = ResponseReader(tmp_path, "r")
    try:
        one = score_from_cache(
            reader, manifest, task, documents_of(folder, manifest, task), batch_docs=7, workers=1
        )
        two = score_from_cache(
            reader, manifest, task, documents_of(folder, manifest, task), batch_docs=7, workers=2
        )
        # a document the cache has no answer for: the same error from the workers, naming it
        extra = documents_of(folder, manifest, task)
        extra.eval[60] = {"q": "unseen", "a": "0"}
        with pytest.raises(MissingResponses) as serial:
            score_from_cache(reader, manifest, task, extra, batch_docs=7, workers=1)
        with pytest.raises(MissingResponses) as parallel:
            score_from_cache(reader, manifest, task, extra, batch_docs=7, workers=2)
    finally:
        reader.close()
    assert one.values == two.values and one.lines == two.lines and one.n_samples == two.n_samples == 60
    assert str(serial.value) == str(parallel.value)
