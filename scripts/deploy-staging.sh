#!/usr/bin/env bash
# The deployment guide's staging deploy, now a thin wrapper over qlensctl:
#
#   export AZURE_OPENAI_ENDPOINT=... AZURE_OPENAI_API_KEY=... AWS_REGION=... \
#          AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...
#   ./scripts/deploy-staging.sh [qlensctl deploy options, e.g. --version TAG --timeout 600]
#
# It runs `qlensctl deploy staging --wait`: creates/updates Secret qlens-secrets from those
# variables, backs up the current values, upgrades or installs release qlens in qlens-staging and
# waits for the rollout (a failed rollout is rolled back and the script exits 1).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
qlensctl=$root/.venv/bin/qlensctl
[[ -x $qlensctl ]] || qlensctl=$(command -v qlensctl) \
  || { echo "deploy-staging: qlensctl not found: run scripts/test once, or pip install -e $root" >&2; exit 2; }
exec "$qlensctl" deploy staging --wait "$@"
