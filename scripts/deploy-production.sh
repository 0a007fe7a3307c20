#!/usr/bin/env bash
# The deployment guide's production deploy, now a thin wrapper over qlensctl:
#
#   kubectl config current-context      # must be production's pinned context (qlens-production)
#   ./scripts/deploy-production.sh v1.0.0 [qlensctl deploy options, e.g. --yes --timeout 600]
#
# It runs `qlensctl deploy production --version vX.Y.Z --wait`: refuses any other kube context,
# asks for confirmation (or --yes), backs up the current values, upgrades release qlens in
# qlens-production (secrets come from Key Vault through ExternalSecret) and waits for the rollout
# (a failed rollout is rolled back and the script exits 1).
set -euo pipefail
if [[ $# -lt 1 || $1 == -* ]]; then
  echo "usage: $0 vX.Y.Z [qlensctl deploy options]" >&2
  exit 2
fi
version=$1
shift
root=$(cd "$(dirname "$0")/.." && pwd)
qlensctl=$root/.venv/bin/qlensctl
[[ -x $qlensctl ]] || qlensctl=$(command -v qlensctl) \
  || { echo "deploy-production: qlensctl not found: run scripts/test once, or pip install -e $root" >&2; exit 2; }
exec "$qlensctl" deploy production --version "$version" --wait "$@"
