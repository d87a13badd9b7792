#!/usr/bin/env bash
# kube-apiserver and kubectl of one Kubernetes release, built from the Go module proxy with the committed
# tests/sandbox/gobuild/go.mod (k8s.io/kubernetes at that release, every k8s.io staging module pinned to the
# matching v0.x) and go.sum, into .tools/kubernetes-<version>/. Rebuilt only when a binary is missing.
# With KUBEBUILDER_ASSETS naming a folder that holds kube-apiserver (envtest's convention), nothing is built.
# Prints the folder holding the binaries.
#
# --without-metrics NAME,... builds kube-apiserver alone (same release and flags) with those KMS envelope metrics
# (apiserver_envelope_encryption_*) never registered, into .tools/kubernetes-<version>-without-<hash>/: what
# --disabled-metrics would do to them, had kube-apiserver applied that flag before it loads the encryption
# configuration (it does not: Metrics.Apply() runs after BuildGenericConfig, which registers them), and what
# kubernetes PR #136354 does to apiserver_envelope_encryption_key_id_hash_total. The k8s.io/apiserver module is
# copied, its envelope metrics.go loses the MustRegister line of each, and go.mod's replace points at the copy.
#
# KUBE_GOBUILD names another module folder: tests/sandbox/gobuild-newest (the newest release the proxy serves that
# builds, for `make test-k8s-newest`); KUBEBUILDER_ASSETS then does not apply.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
mod="$root/tests/sandbox/gobuild"
if [ -n "${KUBE_GOBUILD:-}" ]; then
    mod="$(cd "$KUBE_GOBUILD" && pwd)"
    unset KUBEBUILDER_ASSETS
fi
without=""
if [ "${1:-}" = "--without-metrics" ]; then
    without="${2:?--without-metrics needs NAME,...}"
fi
if [ -z "$without" ] && [ -n "${KUBEBUILDER_ASSETS:-}" ] && [ -x "$KUBEBUILDER_ASSETS/kube-apiserver" ]; then
    echo "$KUBEBUILDER_ASSETS"
    exit 0
fi
version="$(sed -n 's/^require k8s.io\/kubernetes \(v[0-9.]*\)$/\1/p' "$mod/go.mod")"
out="$root/.tools/kubernetes-$version"
if [ -n "$without" ]; then
    out="$out-without-$(printf '%s' "$without" | sha256sum | cut -c1-12)"
    if [ -x "$out/kube-apiserver" ]; then
        echo "$out"
        exit 0
    fi
elif [ -x "$out/kube-apiserver" ] && [ -x "$out/kubectl" ]; then
    echo "$out"
    exit 0
fi
command -v go >/dev/null || { echo "kube-build: no Go toolchain (go) on PATH: install Go, or set KUBEBUILDER_ASSETS to a folder holding kube-apiserver" >&2; exit 1; }
mkdir -p "$out"
minor="${version#v1.}"; minor="${minor%%.*}"
# The release's date on the module proxy stands for the build date (reproducible builds).
built="$(curl -fsS --max-time 10 "$(go env GOPROXY | cut -d, -f1)/k8s.io/kubernetes/@v/$version.info" 2>/dev/null | sed -n 's/.*"Time": *"\([^"]*\)".*/\1/p')"
built="${built:-1970-01-01T00:00:00Z}"
# /version answers what a release build answers (hack/lib/version.sh sets the same variables).
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.gitCommit= -X $pkg.buildDate=$built"
done
start=$(date +%s)
cd "$mod"
cmds="kube-apiserver kubectl"
if [ -n "$without" ]; then
    # a source copy of its own: two builds of the same variant at once (shared .tools) do not meet
    src="$(mktemp -d "$out.src.XXXXXX")"
    trap 'rm -rf "$src"' EXIT
    mkdir -p "$src/mod"
    cp "$mod/go.mod" "$mod/go.sum" "$mod/tools.go" "$src/mod/"
    apiserver="$(go list -mod=readonly -m -f '{{.Dir}}' k8s.io/apiserver)"
    cp -r "$apiserver" "$src/apiserver" && chmod -R u+w "$src/apiserver"
    metrics="$src/apiserver/pkg/storage/value/encrypt/envelope/metrics/metrics.go"
    for name in ${without//,/ }; do
        short="${name#apiserver_envelope_encryption_}"
        # the Go variable whose opts carry Name: "<short>" (the envelope metrics' namespace and subsystem are
        # apiserver and envelope_encryption)
        var="$(awk -v want="\"$short\"," '/^[ \t]*[A-Za-z_][A-Za-z0-9_]* *= *metrics\.New/ {v=$1} $1=="Name:" && $2==want {print v}' "$metrics")"
        if [ "$short" = "$name" ] || [ -z "$var" ] || ! grep -q "legacyregistry.MustRegister($var)" "$metrics"; then
            echo "kube-build: $name is not a KMS envelope metric of k8s.io/apiserver (apiserver_envelope_encryption_*)" >&2
            rmdir "$out" 2>/dev/null || true
            exit 1
        fi
        sed -i "/legacyregistry.MustRegister($var)\$/d" "$metrics"
    done
    sed -i "s#^\(\s*k8s.io/apiserver => \).*#\1../apiserver#" "$src/mod/go.mod"
    grep -q "k8s.io/apiserver => ../apiserver" "$src/mod/go.mod"
    cd "$src/mod"
    cmds="kube-apiserver"
fi
# providerless: no in-tree cloud providers (k8s.io/legacy-cloud-providers v0.29.6 is not on the proxy, and
# the sandbox has no cloud); -mod=readonly: go.sum is committed and must already hold every module.
for cmd in $cmds; do
    echo "kube-build: building $cmd $version (cold: tens of minutes on 2 cores)" >&2
    CGO_ENABLED=0 go build -mod=readonly -tags providerless -trimpath -ldflags "$ldflags" \
        -o "$out/$cmd.tmp.$$" "k8s.io/kubernetes/cmd/$cmd"
    mv "$out/$cmd.tmp.$$" "$out/$cmd"
done
echo "kube-build: built in $(( $(date +%s) - start ))s into $out${without:+ (without $without)}" >&2
echo "$out"
