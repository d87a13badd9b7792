"""Command line for the sandbox (see README.md): up, down, kms, ctl, az-login.

    python -m tests.sandbox up   --dir DIR [--provider kms-v2] [--etcdctl 3.5] [--nodes 1] [--broken-node]
                                 [--readyz-style aggregate|per-provider] [--history] [--no-entra | --no-enforce-pop]
                                 [--disabled-metrics NAME,...] [--without-metrics NAME,...]
    python -m tests.sandbox up   --dir DIR --clusters N [--providers kms-v2,kms-v1,identity,...]
                                 [--disconnected NAME[:STATUS][,NAME...]] [--no-entra] [--etcdctl ...] [--nodes ...]
    python -m tests.sandbox down --dir DIR
    python -m tests.sandbox kms  --dir DIR [--cluster NAME] stop|kill|start|rotate|unhealthy|healthy
    python -m tests.sandbox ctl  --dir DIR [--cluster NAME] '<json>'
    python -m tests.sandbox az-login --dir DIR [--az PATH] [--identity sp|cert|federated]
    python -m tests.sandbox throttle --dir DIR [--shares N] [--queue N] | --off

``up`` prints sandbox.json on stdout and returns once the API server's /readyz passes; it cleans up after itself
when it fails. On a directory that holds a stopped sandbox it resumes that sandbox (saying so in one line on
stderr); on a running one it fails. ``--clusters N`` starts a fleet (tests/sandbox/fleet.py): ``sandbox-1`` ...
``sandbox-N`` and ``other-1`` behind one ARM, Resource Graph and Entra emulator; ``kms`` and ``ctl`` then take
``--cluster NAME``. ``az-login`` signs the az of ``--az`` (in the current ``AZURE_CONFIG_DIR``)
in to the sandbox's Entra emulator for real (tests/sandbox/azure/azlogin.py) and prints who is signed in. Errors go to
stderr with exit code 1 (2 for bad arguments).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from .control import (
    APISERVERS,
    DEFAULTS,
    KEY_ID_HASH_TOTAL,
    KEY_ID_METRICS,
    PROVIDERS,
    READYZ_STYLES,
    Sandbox,
    SandboxError,
    read_info,
)
from .fleet import Fleet


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.sandbox", description="Local AKS-Arc-like sandbox cluster.")
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a sandbox and wait until it is ready")
    # No defaults here: Sandbox.up applies them to a new sandbox, and resumes a stopped one as it was.
    up.add_argument("--dir", required=True)
    up.add_argument("--provider", choices=PROVIDERS, help=f"default {DEFAULTS['provider']}")
    up.add_argument("--etcdctl", choices=("3.5", "3.4"), help=f"default {DEFAULTS['etcdctl']}")
    up.add_argument("--nodes", type=int, choices=(1, 3), help=f"default {DEFAULTS['nodes']}")
    up.add_argument("--broken-node", action="store_true", default=None,
                    help="the first etcd pod's node does not answer exec")
    up.add_argument("--readyz-style", choices=READYZ_STYLES, help=f"default {DEFAULTS['readyz_style']}")
    up.add_argument("--history", action="store_true", default=None,
                    help="also seed a secret stored before encryption and (KMS) one under a rotated-out key")
    up.add_argument("--entra", action=argparse.BooleanOptionalAction, default=None,
                    help="the Entra ID emulator (default): ARM and the API server accept only tokens it signed; "
                         "--no-entra: without it (unsigned Entra-like tokens are accepted)")
    up.add_argument("--enforce-pop", action=argparse.BooleanOptionalAction, default=None,
                    help="with the Entra emulator: the API server accepts only PoP tokens (default); "
                         "--no-enforce-pop also accepts bearer tokens (still checked against the emulator's keys)")
    up.add_argument("--apiserver", choices=APISERVERS,
                    help=f"default {DEFAULTS['apiserver']}: the kube-apiserver `make kube-apiserver` builds "
                         "(tests/sandbox/apiserver/kubeapiserver.py); emulator: the Python API server emulator "
                         "(fault injection "
                         "with ctl; one cluster only: a fleet runs the real one)")
    up.add_argument("--disabled-metrics", metavar="NAME,...",
                    help="passed to the real kube-apiserver as --disabled-metrics (it does not remove the KMS "
                         "envelope metrics: 1.29 applies it after loading the encryption configuration)")
    up.add_argument("--without-metrics", metavar="NAME,...",
                    help="run a kube-apiserver of the same release built without these KMS envelope metrics (built "
                         f"on first use into .tools/): e.g. {KEY_ID_HASH_TOTAL} (upstream PR #136354 removes it), or "
                         f"every KMS v2 key-id metric: {','.join(KEY_ID_METRICS)}")
    up.add_argument("--apiservers", type=int, metavar="N",
                    help="default 1: N real kube-apiservers on the one etcd and KMS plugin, behind a local TCP load "
                         "balancer (round robin per connection) that the kubeconfigs name")
    up.add_argument("--clusters", type=int, metavar="N",
                    help="a fleet of N clusters (sandbox-1 ... sandbox-N, and other-1 in a second subscription)")
    up.add_argument("--providers", metavar="LIST",
                    help=f"with --clusters: providers given to the clusters in turn, comma-separated (default "
                         f"{DEFAULTS['provider']}; one of {', '.join(PROVIDERS)} each)")
    up.add_argument("--disconnected", metavar="NAME[:STATUS],...",
                    help="with --clusters: clusters that are not connected (status Offline unless given: Offline, "
                         "Connecting, Expired, AgentNotInstalled); their API servers refuse connections")
    down = sub.add_parser("down", help="stop every process of a sandbox (idempotent)")
    down.add_argument("--dir", required=True)
    kms = sub.add_parser("kms", help="control the KMS plugin")
    kms.add_argument("--dir", required=True)
    kms.add_argument("--cluster", metavar="NAME", help="in a fleet: that cluster's KMS plugin")
    kms.add_argument("action", choices=("stop", "kill", "start", "rotate", "unhealthy", "healthy"))
    ctl = sub.add_parser("ctl", help="fault injection: POST JSON to the control port")
    ctl.add_argument("--dir", required=True)
    ctl.add_argument("--cluster", metavar="NAME", help="in a fleet: that cluster's control port")
    ctl.add_argument("json")
    login = sub.add_parser("az-login", help="sign az in to the sandbox's Entra emulator (a real az login)")
    login.add_argument("--dir", required=True)
    login.add_argument("--az", help="the az to sign in (default .venv-az/bin/az, else .venv/bin/az)")
    login.add_argument("--identity", choices=("sp", "cert", "federated"), default="sp",
                       help="service principal with a secret (default), with a certificate, or the workload identity's "
                            "federated token")
    throttle = sub.add_parser("throttle", help="the real kube-apiserver's APF throttles kubeconfig-throttled's "
                                               "identity (Sandbox.throttle)")
    throttle.add_argument("--dir", required=True)
    throttle.add_argument("--shares", type=int, default=1,
                          help="nominal concurrency shares of its priority level (default 1: 3 seats of 600)")
    throttle.add_argument("--queue", type=int, default=0,
                          help="requests that may wait in its one queue (default 0: excess requests get 429 at once)")
    throttle.add_argument("--off", action="store_true", help="remove the FlowSchema and priority level again")
    a = p.parse_args(argv)
    if a.command == "az-login":
        from .azure.azlogin import AzLoginError, az_login
        try:
            print(az_login(a.dir, az=a.az, identity=a.identity))
        except (AzLoginError, SandboxError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        return 0

    try:
        box = _box(a)
        if a.command == "up":
            fleet = {"clusters": a.clusters, "providers": a.providers, "disconnected": a.disconnected} \
                if isinstance(box, Fleet) else {}
            info = box.up(provider=a.provider, etcdctl=a.etcdctl, nodes=a.nodes, broken_node=a.broken_node,
                          readyz_style=a.readyz_style, history=a.history, entra=a.entra, enforce_pop=a.enforce_pop,
                          apiserver=a.apiserver, disabled_metrics=a.disabled_metrics,
                          without_metrics=a.without_metrics, apiservers=a.apiservers, **fleet)
            print(json.dumps({k: v for k, v in info.items() if k != "pki"}, indent=2))
            if box.resumed:
                print(f"resumed the stopped sandbox in {box.dir} (its data, certificates and keys)", file=sys.stderr)
        elif a.command == "down":
            box.down()
        elif a.command == "kms":
            result = _one(box, a).kms(a.action)
            if result is not None:
                print(result)
        elif a.command == "throttle":
            if isinstance(box, Fleet):
                raise SandboxError(f"{box.dir} holds a fleet: throttle is for one cluster (Fleet.cluster(name))")
            if a.off:
                box.unthrottle()
            else:
                print(json.dumps(box.throttle(shares=a.shares, queue=a.queue), indent=2))
        elif a.command == "ctl":
            try:
                body = json.loads(a.json)
            except ValueError as e:
                print(f"error: the ctl argument is not JSON: {e}", file=sys.stderr)
                return 2
            print(json.dumps(_one(box, a).ctl(body), indent=2))
    except SandboxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def _box(a):
    """A Fleet for a fleet's directory or fleet options, else a Sandbox."""
    fleet_args = a.command == "up" and any(v is not None for v in (a.clusters, a.providers, a.disconnected))
    info = {}
    with contextlib.suppress(SandboxError):
        if (Path(a.dir) / "sandbox.json").exists():
            info = read_info(a.dir)
    if info.get("fleet") or (fleet_args and not info):
        return Fleet(a.dir)
    if fleet_args:
        raise SandboxError(f"{Path(a.dir).resolve()} holds a single-cluster sandbox: resume it without --clusters, "
                           f"--providers or --disconnected, or run 'python -m tests.sandbox down --dir {a.dir}' and "
                           "remove it, or use another --dir")
    return Sandbox(a.dir)


def _one(box, a):
    """The sandbox ``kms``/``ctl`` talk to: a fleet's cluster ``--cluster NAME``, or the sandbox itself."""
    if a.cluster:
        if not isinstance(box, Fleet):
            raise SandboxError(f"{box.dir} holds one cluster, not a fleet (up --clusters N)")
        return box.cluster(a.cluster)
    return box if isinstance(box, Sandbox) else Sandbox(box.dir)


if __name__ == "__main__":
    raise SystemExit(main())
