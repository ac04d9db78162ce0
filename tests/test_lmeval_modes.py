"""Stop sequences per lm-eval path, and the tokenize calls rolling loglikelihood's prefix costs.

lm-eval's ``handle_stop_sequences`` (its own function, imported) is the oracle for ``stop``; its
remote tokenizer's ``bos_token_id or eos_token_id`` for which special strings get tokenized.
"""

from __future__ import annotations

import pytest
from lm_eval.models.utils import handle_stop_sequences

from scorer.requests import ModelSettings, RequestBuilder
from scorer.tasks import parse_task
from scorer.tokenizer import TableTokenizer, prefix_texts, prefix_token

EOS = "<|im_end|>"


def _generate_task(until: list[str]):  # type: ignore[no-untyped-def]
    return parse_task(
        {
            "task": "gen",
            "dataset": {"path": "json", "data_files": {"test": "unused.jsonl"}},
            "eval_split": "test",
            "doc_to_text": "{{q}}",
            "doc_to_target": "{{a}}",
            "generation_kwargs": {"until": until, "max_gen_toks": 4, "temperature": 0},
        },
        "test",
    )


@pytest.mark.parametrize("until", [["\n"], ["\n", EOS], []])
def test_sequential_mode_adds_eos_to_stop_as_lm_evals_num_concurrent_1_path(until: list[str]) -> None:
    task = _generate_task(until)
    builder = RequestBuilder(task, ModelSettings("m", "m", eos=EOS), TableTokenizer({"q": [1, 2]}))
    assert builder.generate("q").body["stop"] == handle_stop_sequences(list(until), EOS)


def test_concurrent_mode_sends_the_tasks_until_as_it_is() -> None:
    task = _generate_task(["\n"])
    builder = RequestBuilder(task, ModelSettings("m", "m"), TableTokenizer({"q": [1, 2]}))
    assert builder.generate("q").body["stop"] == handle_stop_sequences(["\n"], None) == ["\n"]


def _tokenized_for_prefix(info: dict[str, str], ids: dict[str, list[int]]) -> tuple[list[str], int | None]:
    """The texts a prefix lookup tokenizes, in order, and the prefix it gives."""
    asked: list[str] = []
    table: dict[str, list[int]] = {}
    while texts := prefix_texts(info, table):
        asked.extend(texts)
        table.update({t: ids[t] for t in texts})
    return asked, prefix_token(info, TableTokenizer(table))


def test_a_bos_token_costs_one_tokenize_and_eos_is_never_asked() -> None:
    info = {"bos_token": "<s>", "eos_token": "</s>"}
    assert _tokenized_for_prefix(info, {"<s>": [7], "</s>": [8]}) == (["<s>"], 7)


def test_eos_is_tokenized_only_when_bos_is_missing_or_id_zero() -> None:
    assert _tokenized_for_prefix({"eos_token": "</s>"}, {"</s>": [8]}) == (["</s>"], 8)
    info = {"bos_token": "<s>", "eos_token": "</s>"}
    assert _tokenized_for_prefix(info, {"<s>": [0], "</s>": [8]}) == (["<s>", "</s>"], 8)
