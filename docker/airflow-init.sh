#!/usr/bin/env bash
# One-shot set-up for docker compose (service airflow-init): Airflow's metadata DB, the `gpu` pool,
# the shop schema, roles and logins, and (DEMO_GENERATE_SHOP=1, first start only) a synthetic shop to run on.
set -euo pipefail
airflow db migrate
airflow pools set gpu "${GPU_POOL_SLOTS:-1}" "ecom-rerank ranker training: one slot per GPU"
# As the owner (RERANK_DATABASE_URL of this service only): the schema, then the pipeline and app logins with
# the passwords RERANK_PIPELINE_DB_PASSWORD / RERANK_APP_DB_PASSWORD.
rerank db migrate --create-logins
if [[ "${DEMO_GENERATE_SHOP:-0}" == "1" ]]; then
  users=$(psql "${RERANK_DATABASE_URL}" -tAc "SELECT count(*) FROM shop.users")
  if [[ "${users}" == "0" ]]; then
    rerank generate --users 5000 --items 1000 --days 30 --seed 42
  fi
fi
echo "airflow-init: done"
