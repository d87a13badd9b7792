#!/usr/bin/env bash
# Machine packages the sandbox needs besides .venv: Debian's etcd 3.4 client and server (the tests run the
# in-pod etcdctl in both 3.4 and 3.5) and a kubectl for the documented-procedure cross-check.
set -euo pipefail
need=()
[ -x /usr/bin/etcdctl ] || need+=(etcd-client)
[ -x /usr/bin/etcd ] || need+=(etcd-server)
command -v kubectl >/dev/null 2>&1 || need+=(kubernetes-client)
[ ${#need[@]} -eq 0 ] && exit 0
echo "Installing Debian packages: ${need[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q >/dev/null || true
# policy-rc.d keeps a packaged etcd service from starting on the machine.
$sudo apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
