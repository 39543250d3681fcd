#!/usr/bin/env bash
# The ranker's CUDA path on a lent GPU machine, in one call: the CUDA unit tests, bench_rank.py on the GPU
# and on the same machine's CPUs (same run, so the two figures compare), and the `ranker` evaluation of
# Amazon Beauty on the GPU. Every step has its own time limit and its log under $OUT.
#
# The GPU image has torch but not this project's other needs; they travel as wheels (Python 3.12):
#   mkdir -p .whl .gpu; printf '/.whl/\n/.gpu/\n' >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 -d .whl pydantic pydantic_core pydantic-settings annotated-types \
#     typing-inspection python-dotenv psycopg2-binary dill implicit     (the versions of .venv)
#   cp ../shared/data/amazon-s3rec/Beauty.txt .gpu/
# then run `bash benchmarks/gpu_check.sh` there with carry [".whl", ".gpu"]; BEAUTY_MODELS (default ranker) and
# BEAUTY_SECONDS (220) choose the Beauty models and their time limit.
set -u
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 RERANK_HOME=/tmp/rerank-home PYTHONDONTWRITEBYTECODE=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi -L
python3 -c "import torch, os; print('torch', torch.__version__, torch.cuda.get_device_name(0), 'cpus', os.cpu_count())"

step() {  # name, seconds, command...
  local name=$1 secs=$2; shift 2
  local t0=$SECONDS
  timeout "$secs" "$@" >"$OUT/$name.log" 2>&1
  echo "== $name: rc $? in $((SECONDS - t0)) s"
  tail -n 12 "$OUT/$name.log"
}

step pytest 100 python3 -m pytest -q -p no:cacheprovider --timeout=140 tests/unit/test_rank.py tests/unit/test_rank_encoding.py \
  tests/unit/test_rank_features.py
# bench_rank at a size that fills a GPU batch better than the CI size; the CPU run is the same machine's baseline
BENCH=(benchmarks/bench_rank.py --users 8000 --items 2000 --days 10 --windows 5 --reps 5)
step bench_cuda 120 python3 "${BENCH[@]}" --device cuda --threads 16
if [ -f .gpu/Beauty.txt ]; then
  # run_evaluation without a database (the CLI's throwaway database needs Postgres, which that image lacks)
  step beauty_cuda "${BEAUTY_SECONDS:-220}" env RERANK_DEVICE=cuda python3 -c "import json, sys
from pipeline.evaluate.runner import run_evaluation
r = run_evaluation('amazon-s3rec', '.gpu/Beauty.txt', protocol='leave-one-out', models=sys.argv[2].split(','), out_dir=sys.argv[1])
print(json.dumps(r['results']))" "$OUT/beauty" "${BEAUTY_MODELS:-ranker}"
  cp "$OUT/beauty/metrics.json" "$OUT/beauty_metrics.json" 2>/dev/null
  rm -rf "$OUT/beauty"
fi
step bench_cpu16 100 python3 "${BENCH[@]}" --device cpu --threads 16
