# The two commands a newcomer needs. Both set up everything first (idempotent,
# cached under $REPLAYGATE_HOME, default ~/.cache/replaygate).
.PHONY: serve test lint setup

setup:
	deploy/bootstrap.sh all

serve: setup
	.venv/bin/gateway serve $(ARGS)

lint:
	.venv/bin/ruff check gateway cache scorer tests benchmarks
	.venv/bin/ruff format --check gateway cache scorer tests benchmarks
	.venv/bin/mypy gateway cache scorer

test: setup lint
	.venv/bin/pytest $(ARGS)
