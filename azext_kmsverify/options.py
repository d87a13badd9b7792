# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""The options of one run, built once from az's arguments and frozen: the steps take this, not 21 parameters.

Light (no I/O, no heavy imports). ``from_args`` also drops az's default wrappers (``DefaultStr``/``DefaultInt``,
which serialise as ``{"isDefault": true}``) by converting each value to its field's type.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from azext_kmsverify import defaults


@dataclass(frozen=True)
class ClusterOptions:
    """Which cluster, and how to sign in to it."""

    resource_group: str | None = None
    name: str | None = None
    subscription: str | None = None  # default: the az login's current subscription
    admin: bool = False
    kubeconfig: str | None = None
    context: str | None = None

    @property
    def from_azure(self) -> bool:
        return bool(self.name)


@dataclass(frozen=True)
class EtcdOptions:
    """Where etcdctl runs and how it reaches etcd, inside the etcd pod."""

    pod: str | None = None
    container: str = defaults.ETCD_CONTAINER
    endpoint: str = defaults.ETCD_ENDPOINT
    cacert: str = defaults.ETCD_CACERT
    cert: str = defaults.ETCD_CERT
    key: str = defaults.ETCD_KEY
    page_size: int = defaults.PAGE_SIZE


@dataclass(frozen=True)
class VerifyOptions:  # pylint: disable=too-many-instance-attributes  # one field per option of the command
    cluster: ClusterOptions = field(default_factory=ClusterOptions)
    etcd: EtcdOptions = field(default_factory=EtcdOptions)
    secrets: tuple[tuple[str, str], ...] = ()
    all_secrets: bool = False
    resources: tuple[str, ...] = ()  # --resource (validated, kubectl's spelling); empty: secrets
    probe: bool = True
    probe_namespace: str = defaults.PROBE_NAMESPACE
    fail_on_stale: bool = False
    fail_on_kms_v1: bool = False
    rotation_days: int = defaults.ROTATION_DAYS
    timeout: int = defaults.TIMEOUT_SECONDS
    junit_xml: str | None = None
    sarif: str | None = None
    # A fleet: ARM ids, or every cluster Resource Graph finds (narrowed by subscriptions, group and tags).
    ids: tuple[str, ...] = ()
    all_clusters: bool = False
    subscriptions: tuple[str, ...] = ()
    tags: tuple[tuple[str, str | None], ...] = ()
    max_parallel: int = defaults.MAX_PARALLEL
    shard: tuple[int, int] | None = None

    @property
    def fleet(self) -> bool:
        return bool(self.ids or self.all_clusters)

    @classmethod
    def from_args(cls, args: dict) -> VerifyOptions:
        """From the command's arguments (already validated by ``_validators``)."""
        cluster = _build(ClusterOptions, args, resource_group='resource_group_name', name='cluster_name')
        etcd = _build(EtcdOptions, args, pod='etcd_pod', container='etcd_container', endpoint='etcd_endpoint',
                      cacert='etcd_cacert', cert='etcd_cert', key='etcd_key', page_size='page_size')
        secrets = tuple(tuple(ref) for ref in args.get('secrets') or ())
        probe = args.get('probe')
        if probe is None:  # read-only unless asked: the probe is the default only when nothing else is verified
            probe = not (secrets or args.get('all_secrets'))
        return _build(cls, dict(args, probe=probe), cluster=None, etcd=None, secrets=None, ids=None,
                      subscriptions=None, tags=None, shard=None, resources=None,
                      _extra={'cluster': cluster, 'etcd': etcd, 'secrets': secrets,
                              'resources': tuple(args.get('resources') or ()),
                              'ids': tuple(args.get('ids') or ()),
                              'subscriptions': tuple(args.get('subscriptions') or ()),
                              'tags': tuple(tuple(t) for t in args.get('tags') or ()),
                              'shard': tuple(args['shard']) if args.get('shard') else None})


@dataclass(frozen=True)
class StatusOptions(VerifyOptions):
    """``az aksarc kms status``: verify's cluster, sign-in and fleet options; it reads no secret and writes nothing
    (``probe`` is always False; ``probe_namespace`` is only the namespace the access preflight asks about)."""

    @classmethod
    def from_args(cls, args: dict) -> StatusOptions:
        return super().from_args(dict(args, probe=False))


@dataclass(frozen=True)
class ReencryptOptions:  # pylint: disable=too-many-instance-attributes  # one field per option of the command
    cluster: ClusterOptions = field(default_factory=ClusterOptions)
    etcd: EtcdOptions = field(default_factory=EtcdOptions)
    secrets: tuple[tuple[str, str], ...] = ()
    namespaces: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()  # --resource (validated, kubectl's spelling); empty: secrets
    only: str = 'all'
    dry_run: bool = False
    yes: bool = False
    parallel: int = defaults.REENCRYPT_PARALLEL
    max_per_second: float = 0.0
    rotation_days: int = defaults.ROTATION_DAYS
    timeout: int = defaults.REENCRYPT_TIMEOUT_SECONDS
    junit_xml: str | None = None
    sarif: str | None = None

    @classmethod
    def from_args(cls, args: dict) -> ReencryptOptions:
        common = VerifyOptions.from_args(dict(args, probe=False))
        return _build(cls, args, cluster=None, etcd=None, secrets=None, namespaces=None, resources=None,
                      _extra={'cluster': common.cluster, 'etcd': common.etcd, 'secrets': common.secrets,
                              'resources': common.resources,
                              'namespaces': tuple(args.get('namespaces') or ())})


_TYPES = {'str': str, 'int': int, 'bool': bool, 'float': float}


def _build(cls, args: dict, _extra: dict | None = None, **names):
    """``cls`` from ``args``: field ``f`` from ``args[names.get(f, f)]``; missing or None keeps the default."""
    values = dict(_extra or {})
    for f in fields(cls):
        if f.name in values or (f.name in names and names[f.name] is None):
            continue
        value = args.get(names.get(f.name, f.name))
        if value is None:
            continue
        kind = _TYPES.get(str(f.type).replace(' | None', ''))
        values[f.name] = kind(value) if kind else value
    return cls(**values)
