#!/usr/bin/env bash
# One-shot set-up for docker compose (service airflow-init): Airflow's metadata DB, the `gpu` pool,
# the shop schema and roles, and (DEMO_GENERATE_SHOP=1, first start only) a synthetic shop to run on.
set -euo pipefail
airflow db migrate
airflow pools set gpu "${GPU_POOL_SLOTS:-1}" "ecom-rerank ranker training: one slot per GPU"
rerank db migrate
if [[ "${DEMO_GENERATE_SHOP:-0}" == "1" ]]; then
  users=$(psql "${RERANK_DATABASE_URL}" -tAc "SELECT count(*) FROM shop.users")
  if [[ "${users}" == "0" ]]; then
    rerank generate --users 5000 --items 1000 --days 30 --seed 42
  fi
fi
echo "airflow-init: done"
