# Shortcuts for those who have make; each target is the README's command (bootstrap.py sets up
# the venv, .venv or $KMSSL_VENV, when needed and runs the command in it). ARGS=... passes arguments.
PYTHON ?= python3

.PHONY: quickstart test test-slow install

quickstart:
	$(PYTHON) bootstrap.py quickstart $(ARGS)

test:
	$(PYTHON) bootstrap.py test $(ARGS)

test-slow:
	$(PYTHON) bootstrap.py test-slow $(ARGS)

install:
	$(PYTHON) bootstrap.py install
