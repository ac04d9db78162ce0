"""Judged tasks: a judge model's verdicts on the model's answers, as one more round of the run.

A task declares ``judge:`` (:mod:`scorer.judge.config`); its judge requests are
built from the document, the model's answer and the reference
(:mod:`scorer.judge.prompt`), sent through the gateway like every other round
(:mod:`scorer.judge.run`), read back by ``scorer score`` from the cache alone
(:mod:`scorer.judge.replay`), parsed (:mod:`scorer.judge.parse`) and
aggregated (:mod:`scorer.judge.aggregate`). A task may also be a conversation
(``turns:``, :mod:`scorer.judge.turns`): later user turns follow the model's own
earlier answers.
"""
