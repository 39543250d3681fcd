#!/usr/bin/env bash
# Runs once, on the first start of the postgres service: Airflow's metadata database and its owner.
# The shop database (POSTGRES_DB) and its owner (POSTGRES_USER) are created by the image itself.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v airflow_password="$AIRFLOW_DB_PASSWORD" <<'SQL'
CREATE ROLE airflow LOGIN PASSWORD :'airflow_password';
CREATE DATABASE airflow OWNER airflow;
SQL
