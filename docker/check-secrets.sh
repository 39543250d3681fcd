#!/usr/bin/env bash
# Entrypoint guard of docker compose: refuse to start while a secret this container gets is empty or still a
# placeholder from .env.example (change-me...), then run the real entrypoint ("$@").
set -euo pipefail
bad=()
while IFS='=' read -r name value; do
  case "${name}" in
    *PASSWORD|*_SECRET|*FERNET_KEY|*SECRET_KEY)
      if [[ -z "${value}" || "${value}" == change-me* ]]; then bad+=("${name}"); fi ;;
  esac
  if [[ "${value}" == *change-me* ]]; then bad+=("${name}"); fi
done < <(env)
if (( ${#bad[@]} )); then
  echo "refusing to start: set these secrets in .env (not empty, not change-me): $(printf '%s\n' "${bad[@]}" | sort -u | tr '\n' ' ')" >&2
  exit 1
fi
exec "$@"
