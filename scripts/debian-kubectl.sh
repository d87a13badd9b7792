#!/usr/bin/env bash
# Prints the path of a kubectl that speaks SPDY/3.1 for exec: Debian bookworm's kubernetes-client (kubectl 1.20),
# which is what `make system-deps` installs on a CI machine that has no kubectl. The tests run it against the
# sandbox beside the machine's own (WebSocket) kubectl, so it is never installed: the .deb is fetched with
# `apt-get download` (checked against the signed apt lists) into .tools/debian-kubectl/ and /usr/bin/kubectl
# extracted from it with dpkg-deb. Repeated runs reuse the extracted binary.
#   scripts/debian-kubectl.sh            # prints e.g. <project>/.tools/debian-kubectl/root/usr/bin/kubectl
# Exit 1 with a message on stderr when it cannot be obtained (no apt, no network, package gone).
set -euo pipefail
project="$(cd "$(dirname "$0")/.." && pwd)"
cache="$project/.tools/debian-kubectl"
kubectl="$cache/root/usr/bin/kubectl"

spdy_kubectl() {  # kubectl older than 1.29 execs over SPDY by default
    local v
    v="$("$1" version --client 2>/dev/null | sed -n 's/.*GitVersion:"v1\.\([0-9]*\)\..*/\1/p')"
    [ -n "$v" ] && [ "$v" -lt 29 ]
}

if [ -x "$kubectl" ] && spdy_kubectl "$kubectl"; then
    echo "$kubectl"
    exit 0
fi
command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || {
    echo "debian-kubectl: apt-get and dpkg-deb are needed to fetch Debian's kubernetes-client (kubectl 1.20)" >&2
    exit 1
}
mkdir -p "$cache"
rm -rf "$cache/root" "$cache"/kubernetes-client_*.deb
fetch() { (cd "$cache" && apt-get download -q kubernetes-client >/dev/null 2>"$cache/apt.log"); }
if ! fetch; then
    # No apt lists yet (fresh container): refresh them, as `make system-deps` does for its packages.
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -q >/dev/null 2>&1 || true
    fetch || {
        echo "debian-kubectl: 'apt-get download kubernetes-client' failed:" >&2
        cat "$cache/apt.log" >&2
        exit 1
    }
fi
deb="$(ls "$cache"/kubernetes-client_*.deb)"
dpkg-deb -x "$deb" "$cache/root"
if [ ! -x "$kubectl" ] || ! spdy_kubectl "$kubectl"; then
    echo "debian-kubectl: $deb has no kubectl older than 1.29 at usr/bin/kubectl" >&2
    exit 1
fi
echo "$kubectl"
