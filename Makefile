# The two set-up commands of a fresh machine (see README): `make demo` and `make test`.
PYTHON ?= python3
STAMP := .setup-done

.PHONY: setup demo test

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PYTHON) -m ctfgen demo

test: $(STAMP)
	$(PYTHON) -m pytest -q
