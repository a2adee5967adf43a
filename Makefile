# The two commands of the README. Both create .venv when needed and install the project into it;
# a stamp keyed on pyproject.toml's hash makes a second call install nothing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml Makefile | sha256sum | cut -c1-16)
EXTRAS := dev,tflite,llm,devices,perf
export HF_HUB_OFFLINE := 1

# llama-cpp-python has no wheel on PyPI: pip compiles llama.cpp with -march=native. On this VM family the CPU
# advertises AMX but the kernel does not enable AMX tile data, so an AMX build dies with SIGILL on quantised
# models. Build once per machine without AMX (and without the multimodal library: 4 min instead of 15) into a
# wheel folder outside the repo, and install from there; pip's own cache may hold an AMX build, so bypass it.
LLAMA := llama-cpp-python==0.3.36
WHEELS := $(HOME)/.cache/edgedistill/wheels
NOAMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
LLAMA_CMAKE := -DLLAVA_BUILD=OFF -DCMAKE_C_FLAGS='$(NOAMX)' -DCMAKE_CXX_FLAGS='$(NOAMX)'

.PHONY: demo test lint setup test-setup clean converter

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q --upgrade pip setuptools wheel
	@ls $(WHEELS)/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1 || { \
	  echo "building $(LLAMA) once for this machine (several minutes)"; \
	  CMAKE_ARGS="$(LLAMA_CMAKE)" $(BIN)/pip wheel --disable-pip-version-check -q --no-deps --no-cache-dir \
	    -w $(WHEELS) "$(LLAMA)"; }
	$(BIN)/pip install --disable-pip-version-check -q --find-links $(WHEELS) -e ".[$(EXTRAS)]"
	@$(MAKE) --no-print-directory converter
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

# llama.cpp's own HF → GGUF converter, from the sdist of the llama-cpp-python installed above (its version is read
# from the installed package), extracted once per machine into ~/.cache/edgedistill/llama.cpp-convert-<version>.
# Not fatal: GGUF export fetches it on first use and says why when it cannot.
converter:
	@$(BIN)/python -m edgedistill.toolchain.llm.export.gguf >/dev/null \
	  || echo "could not fetch llama.cpp's converter now; GGUF export will retry on first use"

# Services and caches the tests use: sshd for the SSH transport, qemu + debootstrap for the emulated arm64
# device (its rootfs is built once per machine and cached), the aarch64 cross compiler and CMake for llama.cpp on
# Arm (cross-built once per machine per Arm ISA, ~2 min each), Chromium to open report.html headless. Where apt or
# root is unavailable the ssh/qemu tests skip and say why; the HTML report test fails and says why.
test-setup: $(STAMP)
	@for t in sshd qemu-aarch64-static debootstrap chromium aarch64-linux-gnu-g++ cmake; do \
	  command -v $$t >/dev/null 2>&1 || PATH=$$PATH:/usr/sbin command -v $$t >/dev/null 2>&1 || missing=1; done; \
	  test -z "$$missing" || { (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    openssh-server qemu-user-static debootstrap chromium g++-aarch64-linux-gnu cmake >/dev/null) \
	  || echo "apt-get failed: ssh/qemu tests will skip, tests/test_report_html.py will fail (no chromium)"; }
	-$(BIN)/edgedistill devices setup qemu-arm64
	-$(BIN)/python -m edgedistill.runtimes.llama_tools

demo: $(STAMP)
	$(BIN)/edgedistill run --out runs/demo

test: test-setup
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf runs .pytest_cache
