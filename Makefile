# The two commands a newcomer needs. Both set up everything first (idempotent,
# cached under $REPLAYGATE_HOME, default ~/.cache/replaygate).
.PHONY: serve test lint setup

setup:
	deploy/bootstrap.sh all

serve: setup
	.venv/bin/gateway serve $(ARGS)

lint:
	.venv/bin/python -m ruff check .
	.venv/bin/python -m ruff format --check .
	.venv/bin/python -m mypy gateway cache scorer

test: setup lint
	.venv/bin/python -m pytest $(ARGS)
