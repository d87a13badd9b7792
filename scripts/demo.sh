#!/usr/bin/env bash
# `make demo`: run `az aksarc kms verify` as a user would.
#  - With arguments (make demo ARGS="-g myRG -n myCluster"), against that real cluster with your own az login.
#  - Without, against two local sandbox clusters: one KMS v2 (passes, exit 0) and one that stores
#    secrets in plaintext (fails, exit 4), each with --kubeconfig; and the KMS v2 one with -g/-n as AKS Arc
#    demands it: a real `az login` to the sandbox's Entra ID emulator, the user kubeconfig from its ARM emulator,
#    PoP tokens (the sandbox's API server accepts no other). The sandboxes are stopped on every way out.
set -uo pipefail
cd "$(dirname "$0")/.."
AZ=${KMSVERIFY_DEMO_AZ:-.venv-az/bin/az}   # azure-cli alone; the extension's dependencies are in its folder
PY=.venv/bin/python  # the sandbox's python
# az runs `python -m azure.cli`, which puts the working directory first on sys.path: from here it would import
# ./azext_kmsverify (the working tree) instead of the installed wheel. Not for $PY: it runs the sandbox from here.
az() { PYTHONSAFEPATH=1 "$AZ" "$@"; }

if [ $# -gt 0 ]; then
  PYTHONSAFEPATH=1 exec "$AZ" aksarc kms verify "$@" -o table
fi

root=.sandbox/demo
cleanup() {
  for d in "$root"/kms-v2 "$root"/identity "$root"/history "$root"/fleet; do
    [ -f "$d/sandbox.json" ] && $PY -m tests.sandbox down --dir "$d" >/dev/null 2>&1
  done
}
trap cleanup EXIT INT TERM
rm -rf "$root" && mkdir -p "$root"
# No sign-in of yours is used: the sandbox kubeconfigs authenticate with a client certificate, and -g/-n signs a
# private az config dir in to the sandbox's own Entra ID emulator.
export AZURE_CONFIG_DIR="$PWD/$root/azure-config"
# info DIR KEY...: a value from the sandbox's sandbox.json
info() {
  $PY -c 'import functools, json, sys; print(functools.reduce(lambda v, k: v[int(k) if k.isdigit() else k], sys.argv[2:], json.load(open(sys.argv[1]))))' \
    "$1/sandbox.json" "${@:2}"
}

status=0
for provider in kms-v2 identity; do
  dir="$root/$provider"
  echo
  echo "=== sandbox cluster with provider '$provider' ==="
  $PY -m tests.sandbox up --dir "$dir" --provider "$provider" >/dev/null || { echo "sandbox did not start"; exit 1; }
  echo "\$ az aksarc kms verify --kubeconfig $dir/kubeconfig --secret default/db-user-pass -o table"
  az aksarc kms verify --kubeconfig "$dir/kubeconfig" --secret default/db-user-pass -o table
  code=$?
  echo "exit code: $code"
  echo "\$ az aksarc kms verify --kubeconfig $dir/kubeconfig -o table   # probe secret, created and deleted"
  az aksarc kms verify --kubeconfig "$dir/kubeconfig" -o table
  code2=$?
  echo "exit code: $code2"
  if [ "$provider" = kms-v2 ]; then
    rg=$(info "$dir" arm resource_group) cluster=$(info "$dir" arm cluster)
    echo "\$ python -m tests.sandbox az-login --dir $dir   # a real az login to the sandbox's Entra ID emulator"
    $PY -m tests.sandbox az-login --dir "$dir" --az "$AZ" || { echo "az login to the sandbox failed"; exit 1; }
    echo "\$ az aksarc kms verify -g $rg -n $cluster -o table   # user kubeconfig from ARM, PoP tokens from the az login"
    REQUESTS_CA_BUNDLE=$(info "$dir" ca_bundle) az aksarc kms verify -g "$rg" -n "$cluster" -o table
    code3=$?
    echo "exit code: $code3"
    if [ $code -ne 0 ] || [ $code2 -ne 0 ] || [ $code3 -ne 0 ]; then status=1; fi
  fi
  if [ "$provider" = identity ] && { [ $code -ne 4 ] || [ $code2 -ne 4 ]; }; then status=1; fi
done
# run EXPECTED_CODE COMMAND...: show the command, run it, say its exit code, remember an unexpected one
run() {
  local want=$1; shift
  echo "\$ $*"
  "$@"
  local got=$?
  echo "exit code: $got"
  [ "$got" -eq "$want" ] || status=1
}

echo
echo "=== re-encryption: a KMS v2 cluster with a plaintext leftover and a secret under the rotated-out key ==="
dir="$root/history"
$PY -m tests.sandbox up --dir "$dir" --provider kms-v2 --history >/dev/null || { echo "sandbox did not start"; exit 1; }
run 4 az aksarc kms verify --kubeconfig "$dir/kubeconfig" --all-secrets -o table
run 4 az aksarc kms reencrypt --kubeconfig "$dir/kubeconfig" --dry-run -o table
run 0 az aksarc kms reencrypt --kubeconfig "$dir/kubeconfig" --yes -o table
run 0 az aksarc kms verify --kubeconfig "$dir/kubeconfig" --all-secrets --fail-on-stale -o table

echo
echo "=== a fleet: three AKS Arc clusters (KMS v2, KMS v1, KMS v2) found with Azure Resource Graph ==="
dir="$root/fleet"
$PY -m tests.sandbox up --dir "$dir" --clusters 3 --providers kms-v2,kms-v1 >/dev/null || { echo "fleet did not start"; exit 1; }
echo "\$ python -m tests.sandbox az-login --dir $dir"
AZURE_CONFIG_DIR="$PWD/$root/azure-fleet" $PY -m tests.sandbox az-login --dir "$dir" --az "$AZ" || { echo "az login failed"; exit 1; }
subscription=$(info "$dir" clusters 0 subscription)
AZURE_CONFIG_DIR="$PWD/$root/azure-fleet" REQUESTS_CA_BUNDLE=$(info "$dir" ca_bundle) \
  run 0 az aksarc kms verify --all-clusters --subscriptions "$subscription" --all-secrets -o table

echo
[ $status -eq 0 ] && echo "demo: every exit code was the expected one (KMS v2 passed, also from Azure with PoP; plaintext failed; reencrypt fixed the leftovers; the fleet passed)." \
  || echo "demo: unexpected exit codes"
exit $status
