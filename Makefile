# ecom-rerank: `make demo` and `make test` are the two entry points (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
export RERANK_HOME ?= $(CURDIR)/.rerank
export OPENBLAS_NUM_THREADS ?= 1
export HF_HUB_OFFLINE := 1
# Airflow: its own metadata in SQLite under RERANK_HOME, our DAGs, no examples, few processes on 2 cores.
export AIRFLOW_HOME ?= $(RERANK_HOME)/airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__PARALLELISM := 4
export AIRFLOW__CORE__UNIT_TEST_MODE := False
DEMO_AS_OF ?= 2026-11-24T00:00:00+00:00

.PHONY: setup chromium demo test lint eval bench deploy-check clean

setup: $(STAMP)

# The venv is made once and reinstalled only when pyproject.toml changes (idempotent, fast the second time).
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing ecom-rerank into $(VENV) (first time: about 2 minutes)"
	@$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,text,airflow]' 2>&1 | grep -v '^WARNING: Location' || true
	@$(BIN)/python -c "import pipeline.cli, torch, dask.distributed" || (echo "the install is incomplete"; exit 1)
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

# Headless Chromium for the tests that open the HTML reports (tests/chromium.py): Debian's package, installed
# with apt when missing and we are root (CI); otherwise those tests skip and say why. Never fails the build.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
		|| command -v google-chrome >/dev/null 2>&1 || test -n "$$RERANK_TEST_CHROMIUM" \
		|| { test "$$(id -u)" = 0 && command -v apt-get >/dev/null 2>&1 \
		     && echo "installing chromium (apt) for the report rendering tests" \
		     && (apt-get install -y -q chromium >/dev/null 2>&1 \
		         || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) \
		     || echo "no chromium: the report rendering tests will skip (apt-get install -y chromium)"; }

demo: setup
	@$(BIN)/rerank db up >/dev/null
	@$(BIN)/rerank db migrate
	@$(BIN)/rerank generate --users 5000 --items 1000 --days 30 --seed 42
	@mkdir -p $(AIRFLOW_HOME)
	@test -f $(AIRFLOW_HOME)/airflow.db || $(BIN)/airflow db migrate >/dev/null 2>&1
	@$(BIN)/airflow pools set gpu 1 "ecom-rerank ranker training: one slot per GPU" >/dev/null 2>&1
	@echo "running rerank_nightly through Airflow (airflow dags test) ..."
	@$(BIN)/airflow dags test rerank_nightly -c '{"as_of": "$(DEMO_AS_OF)"}' > $(RERANK_HOME)/airflow-demo.log 2>&1 \
		|| (tail -n 60 $(RERANK_HOME)/airflow-demo.log; echo "airflow dags test failed; full log: $(RERANK_HOME)/airflow-demo.log"; exit 1)
	@$(BIN)/python -m pipeline.demo --as-of $(DEMO_AS_OF)

# Two pytest workers, each file on one of them (its module fixtures, such as a real nightly run, built once):
# most tests wait on PostgreSQL, Airflow or Dask subprocesses, so two cores run the suite in about 9 minutes
# instead of 13.
test: setup chromium
	$(BIN)/python -m pytest -q -m "not slow" --timeout=900 -n 2 --dist loadfile

lint: setup
	$(BIN)/ruff check pipeline dags tests benchmarks research

# Full-size evaluations (minutes to tens of minutes each on 2 cores); figures in README "Latest figures".
DATA ?= $${RERANK_SHARED_DATA:-../shared/data}
# The evaluator's models' parameters per dataset: research/params/*.json (research-stack on ml-100k: ALS on BM25
# weights + EASE + user-kNN, chosen on the inner split; see research/RESULTS.md and issue #6's note).
eval: setup
	$(BIN)/rerank evaluate --format movielens --path $(DATA)/ml-100k \
		--protocol msr-stratified --models random,popularity,item-cf,als,bpr,ease,rp3beta,user-knn,research-stack,nightly \
		--params @research/params/ml-100k.json --out out/ml-100k
	$(BIN)/rerank evaluate --format movielens --path $(DATA)/ml-100k --protocol msr-stratified --models nightly \
		--config profiles/ratings-catalogue.env --out out/ml-100k-profile
	$(BIN)/rerank evaluate --format amazon-s3rec --path $(DATA)/amazon-s3rec/Beauty.txt \
		--protocol leave-one-out --models seq-knn,ranker,research-stack --out out/beauty
	$(BIN)/rerank evaluate --format amazon-s3rec --path $(DATA)/amazon-s3rec/Sports_and_Outdoors.txt \
		--protocol leave-one-out --models seq-knn,ranker,research-stack \
		--params @research/params/sports.json --out out/sports
	$(BIN)/rerank evaluate --format taobao --path $(DATA)/taobao-userbehavior/UserBehavior_head_814users.csv \
		--protocol temporal --models popularity,item-cf,als,seq-knn,ranker,research-stack \
		--params @research/params/taobao.json \
		--out out/taobao
	$(BIN)/python benchmarks/eval_nightly.py
	$(BIN)/python -m pipeline.recall.audit --format taobao \
		--path $(DATA)/taobao-userbehavior/UserBehavior_head_814users.csv --out-dir out/audit-taobao

bench: setup
	$(BIN)/python benchmarks/bench_generate.py --tier S
	$(BIN)/python benchmarks/bench_evaluate.py
	$(BIN)/python benchmarks/bench_recall.py --tier S
	$(BIN)/python benchmarks/bench_rank.py --users 1000 --items 300 --days 8 --windows 4
	$(BIN)/python benchmarks/bench_publish.py --users 20000 --top-n 50 --clients 1,8 --seconds 5 --repeats 3
	$(BIN)/python benchmarks/bench_refresh.py --seconds 15 --rates 200,1000

deploy-check: setup
	$(BIN)/python -m pytest -q tests/deploy

clean:
	-$(BIN)/rerank db down
	rm -rf .rerank out
