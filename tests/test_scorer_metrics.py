"""f1, bleu, rouge, perplexities and rolling windows agree with lm-evaluation-harness's own code."""

from __future__ import annotations

import math

import pytest

from scorer.metrics import Sample, get_metric
from scorer.requests import rolling_windows

PAIRS = [
    ("The cat sat on the mat.", "the cat sat on a mat"),
    ("Paris", "Paris, France"),
    ("a b c d", "e f g"),
    ("It was 1969 when they landed", "They landed on the moon in 1969 . It was July"),
    ("", "something"),
]


def _value(name: str, sample: Sample, **options: object) -> object:
    metric = get_metric(name)
    assert metric is not None
    return metric.per_sample(sample, options)


def _aggregate(name: str, values: list[object]) -> float:
    metric = get_metric(name)
    assert metric is not None
    return metric.aggregate(values)


def test_f1_is_lm_evals_squad_token_f1() -> None:
    from lm_eval.tasks.tydiqa.utils import f1_score, metric_max_over_ground_truths

    for prediction, gold in PAIRS:
        ours = _value("f1", Sample({}, gold, [prediction]))
        assert ours == pytest.approx(f1_score(prediction, gold, "en"))
    golds = [g for _, g in PAIRS]
    ours = _value("f1", Sample({}, golds, ["the cat sat"]))
    assert ours == pytest.approx(metric_max_over_ground_truths(f1_score, "the cat sat", golds, "en"))


def test_bleu_is_lm_evals_corpus_bleu() -> None:
    from lm_eval.api.metrics import bleu

    values = [_value("bleu", Sample({}, gold, [prediction])) for prediction, gold in PAIRS]
    assert _aggregate("bleu", values) == pytest.approx(bleu([[g, p] for p, g in PAIRS]))


@pytest.mark.parametrize("kind", ["rouge1", "rouge2", "rougeLsum"])
def test_rouge_is_lm_evals_truthfulqa_rouge(kind: str) -> None:
    from lm_eval.tasks.truthfulqa.utils import rouge

    for prediction, gold in PAIRS:
        ours = _value("rouge", Sample({}, gold, [prediction]), rouge_type=kind)
        assert ours == pytest.approx(rouge([gold], [prediction])[kind])


LLS = [(-12.5, "A short text.\nWith two lines"), (-40.25, "ünïcödé bytes count   more"), (-3.0, "x")]


def test_perplexity_is_lm_evals() -> None:
    from lm_eval.api.metrics import perplexity

    values = [_value("perplexity", Sample({}, "t", [], None, [ll], [False])) for ll, _ in LLS]
    assert _aggregate("perplexity", values) == pytest.approx(perplexity([ll for ll, _ in LLS]))


def test_word_and_byte_perplexity_and_bits_per_byte_are_lm_evals() -> None:
    from lm_eval.api.metrics import bits_per_byte, weighted_perplexity
    from lm_eval.api.task import ConfigurableTask

    words = [(ll, ConfigurableTask.count_words(text)) for ll, text in LLS]
    sizes = [(ll, ConfigurableTask.count_bytes(text)) for ll, text in LLS]
    samples = [Sample({}, text, [], None, [ll], [False]) for ll, text in LLS]
    ours = {
        name: _aggregate(name, [_value(name, s) for s in samples])
        for name in ("word_perplexity", "byte_perplexity", "bits_per_byte")
    }
    assert ours["word_perplexity"] == pytest.approx(weighted_perplexity(words))
    assert ours["byte_perplexity"] == pytest.approx(weighted_perplexity(sizes))
    assert ours["bits_per_byte"] == pytest.approx(bits_per_byte(sizes))
    assert ours["bits_per_byte"] == pytest.approx(math.log2(ours["byte_perplexity"]))


@pytest.mark.parametrize("length", [0, 1, 5, 7, 8, 9, 20, 33])
@pytest.mark.parametrize("max_seq_len", [1, 2, 8])
def test_rolling_windows_are_lm_evals_disjoint_windows(length: int, max_seq_len: int) -> None:
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    tokens = list(range(100, 100 + length))
    theirs = [
        make_disjoint_window(w)
        for w in get_rolling_token_windows(tokens, prefix_token=7, max_seq_len=max_seq_len, context_len=1)
    ]
    assert rolling_windows(tokens, 7, max_seq_len) == theirs
    assert [t for _, predicted in rolling_windows(tokens, 7, max_seq_len) for t in predicted] == tokens


def test_rolling_requests_are_the_echo_requests_lm_eval_sends_for_each_window() -> None:
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    from scorer.requests import Ask, ModelSettings, RequestBuilder
    from scorer.tasks import parse_task
    from scorer.tokenizer import TableTokenizer, prefix_token

    task = parse_task(
        {
            "task": "rolling",
            "dataset": {"path": "json", "data_files": {"test": "unused.jsonl"}},
            "eval_split": "test",
            "output_type": "loglikelihood_rolling",
            "doc_to_target": "{{text}}",
            "max_length": 6,
        },
        "test",
    )
    assert [m.name for m in task.metrics] == ["word_perplexity", "byte_perplexity", "bits_per_byte"]
    text_ids = list(range(50, 67))
    table = {"the text": text_ids, "<s>": [1], "</s>": [2]}
    prefix = prefix_token({"bos_token": "<s>", "eos_token": "</s>"}, TableTokenizer(table))
    assert prefix == 1
    builder = RequestBuilder(task, ModelSettings("m", "m"), TableTokenizer(table), prefix)
    requests = builder.requests(Ask("rolling", "the text"))
    max_length = 6 - 1  # lm-eval's API models keep one token for generation
    windows = [
        make_disjoint_window(w)
        for w in get_rolling_token_windows(
            text_ids, prefix_token=1, max_seq_len=max_length - 1, context_len=1
        )
    ]
    assert [(r.body["prompt"], r.ctxlen) for r in requests] == [([c + p], len(c)) for c, p in windows]
    assert all(r.body["echo"] and r.body["max_tokens"] == 1 and r.body["logprobs"] == 1 for r in requests)
