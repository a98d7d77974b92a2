# Every target runs through tox (installed by .ci/grid-bootstrap), so a fresh
# machine needs only the pyenv interpreters and, for the real-server tests,
# rabbitmq-server and redis-server.
GRID := .ci/grid-bootstrap run

.PHONY: test lint types docs grid grid-table bench bench-gate bench-budget demo

test:           ## lint, types, docs and the whole grid, as CI runs it
	.ci/test

lint:
	$(GRID) -e lint

types:          ## mypy + stubtest on the stubs; a user's module on the default and a 3.8 target
	$(GRID) -e types,types-user

docs:
	$(GRID) -e docs

grid:           ## only the interpreter x Celery grid (two tox runs: see .ci/grid)
	.ci/grid

grid-table:     ## write the last grid run's table into README.md
	.ci/grid-report --write

bench:
	$(GRID) -e bench

bench-gate:     ## instruction counts against bench/budget.json; fails above +3 % (needs valgrind)
	$(GRID) -e bench-gate

bench-budget:   ## measure and rewrite bench/budget.json; review the diff and commit it
	$(GRID) -e bench-gate -- --write-budget bench/budget.json

demo:
	python -m celery_ctxthread demo
