# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""``--resource NAME``: which etcd prefix holds a resource, as kube-apiserver stores it. Pure.

Why: Kubernetes can encrypt any resource (the EncryptionConfiguration lists them; OpenShift encrypts configmaps,
routes and OAuth tokens), and each needs the same proof as secrets. The scan reads raw etcd keys, so it must know
where the API server puts each resource, exactly; a wrong prefix would scan nothing and pass.

Where kube-apiserver stores objects (``--etcd-prefix``, default ``/registry``):

* built-in resources: ``<prefix>/<resource>/`` whatever their API group (deployments.apps is ``/registry/
  deployments/``), except the names ``specialDefaultResourcePrefixes`` overrides (pkg/kubeapiserver/
  default_storage_factory_builder.go): services ``services/specs``, endpoints ``services/endpoints``, nodes
  ``minions``, replicationcontrollers ``controllers``, ingresses (networking.k8s.io, extensions) ``ingress``;
* custom resources: ``<prefix>/<group>/<plural>/`` (``ResourcePrefix: resource.Group + "/" + resource.Resource``
  in staging/src/k8s.io/apiextensions-apiserver/pkg/apiserver/customresource_handler.go);
* then ``<namespace>/<name>`` for namespaced objects, ``<name>`` for cluster-scoped ones.

Whether a group is built in is the API's to say: a CustomResourceDefinition may use a ``*.k8s.io`` group (with
the api-approved annotation; Gateway API does), so the caller passes ``custom`` from the API (the CRD list, or
discovery); :func:`parse_resource` only parses and validates the name. Resources served by another API server
(aggregated APIs, OpenShift's) are stored by that server under prefixes of its own and are refused: their keys
are not in this etcd layout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

ETCD_PREFIX = '/registry'
DEFAULT_RESOURCE = 'secrets'

# (group, resource) -> the storage path kube-apiserver uses instead of the resource name.
SPECIAL_PREFIXES = {
    ('', 'replicationcontrollers'): 'controllers',
    ('', 'endpoints'): 'services/endpoints',
    ('', 'nodes'): 'minions',
    ('', 'services'): 'services/specs',
    ('extensions', 'ingresses'): 'ingress',
    ('networking.k8s.io', 'ingresses'): 'ingress',
}

# A DNS-1123 label (a resource plural) and a DNS-1123 subdomain (an API group), as the API validates them.
_LABEL = re.compile(r'[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?')
_SUBDOMAIN = re.compile(r'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')


@dataclass(frozen=True)
class ResourceRef:
    """A resource as ``--resource`` names it: ``resource`` (plural, lower case) and ``group`` ('' for core)."""

    resource: str
    group: str = ''

    @property
    def name(self) -> str:
        """kubectl's spelling: ``secrets``, ``widgets.example.com``."""
        return f'{self.resource}.{self.group}' if self.group else self.resource


def parse_resource(text: str) -> ResourceRef:
    """``RESOURCE`` or ``RESOURCE.GROUP`` (kubectl's form: ``configmaps``, ``routes.route.openshift.io``).
    Raises ValueError with a one-line reason for anything else (a kind, a version, a path, upper case)."""
    value = (text or '').strip()
    if not value:
        raise ValueError('a resource name is empty')
    if '/' in value:
        raise ValueError(f"'{value}' is not a resource name: give RESOURCE or RESOURCE.GROUP (e.g. configmaps), "
                         'not a path or an API version')
    if value != value.lower():
        raise ValueError(f"'{value}' is not a resource name: resources are lower-case plurals (configmaps, not "
                         'ConfigMap)')
    resource, dot, group = value.partition('.')
    if dot and not group:
        raise ValueError(f"'{value}' ends in a dot: give RESOURCE or RESOURCE.GROUP")
    if not _LABEL.fullmatch(resource):
        raise ValueError(f"'{resource}' is not a resource name (lower-case letters, digits and '-')")
    if group and (len(group) > 253 or not _SUBDOMAIN.fullmatch(group)):
        raise ValueError(f"'{group}' is not an API group name (a DNS subdomain such as example.com)")
    if group == 'core':
        group = ''  # 'configmaps.core' is not kubectl's spelling, but means the core group
    return ResourceRef(resource, group)


def etcd_prefix(ref: ResourceRef, *, custom: bool, etcd_prefix_root: str = ETCD_PREFIX) -> str:
    """The etcd key prefix (with a trailing ``/``) under which kube-apiserver stores ``ref``.

    ``custom``: whether the API serves it from a CustomResourceDefinition (the API says so, see the module
    docstring). Core resources are never custom."""
    root = etcd_prefix_root.rstrip('/')
    if custom:
        if not ref.group:
            raise ValueError(f"'{ref.resource}' has no API group: a custom resource always has one")
        return f'{root}/{ref.group}/{ref.resource}/'
    path = SPECIAL_PREFIXES.get((ref.group, ref.resource), ref.resource)
    return f'{root}/{path}/'


def prefixes(names, custom_groups=frozenset(), *, custom_resources=frozenset()) -> list[tuple[ResourceRef, str]]:
    """``[(ref, etcd prefix)]`` for the ``--resource`` values ``names`` (default: secrets), in order, without
    duplicates. A name is custom when its ``(group, resource)`` is in ``custom_resources`` (from the API's CRD list)
    or, failing that, its group is in ``custom_groups``. Raises ValueError for a bad name or two names that map to
    the same prefix (e.g. ``ingresses.extensions`` and ``ingresses.networking.k8s.io``: one scan)."""
    names = list(names) or [DEFAULT_RESOURCE]
    seen, result = {}, []
    for text in names:
        ref = parse_resource(text)
        custom = (ref.group, ref.resource) in custom_resources or (bool(ref.group) and ref.group in custom_groups)
        prefix = etcd_prefix(ref, custom=custom)
        if prefix in seen:
            if seen[prefix] == ref:
                continue
            raise ValueError(f'--resource {ref.name} and --resource {seen[prefix].name} are stored under the same '
                             f'etcd prefix {prefix}: give one of them')
        seen[prefix] = ref
        result.append((ref, prefix))
    return result


def split_key(key: str, prefix: str, namespaced: bool = True) -> tuple[str | None, str]:
    """``(namespace, name)`` of an etcd key under ``prefix`` (``namespace`` None for cluster-scoped objects)."""
    if not key.startswith(prefix):
        raise ValueError('the key is not under the prefix')
    rest = key[len(prefix):]
    if not namespaced:
        return None, rest
    namespace, _, name = rest.partition('/')
    return namespace, name


def api_path(ref: ResourceRef, version: str, name: str, namespace: str | None = None) -> str:
    """The API path of one object, for ``reencrypt``'s GET and PUT: ``/api/v1/...`` for the core group,
    ``/apis/<group>/<version>/...`` otherwise. ``version`` is the one to write in; for a custom resource, the
    CRD's storage version (``spec.versions[].storage``), which the API gives, so the object is stored as it is
    read. Names are percent-encoded (any byte an etcd key can hold)."""
    base = f'/api/{version}' if not ref.group else f'/apis/{ref.group}/{version}'
    scope = f"/namespaces/{quote(namespace, safe='')}" if namespace is not None else ''
    return f"{base}{scope}/{ref.resource}/{quote(name, safe='')}"


def storage_version(crd: dict) -> str | None:
    """The storage version of a CustomResourceDefinition object (apiextensions.k8s.io/v1): the one version with
    ``storage: true``; None when the object has none (not a CRD)."""
    versions = ((crd or {}).get('spec') or {}).get('versions') or []
    stored = [v.get('name') for v in versions if isinstance(v, dict) and v.get('storage') is True]
    return stored[0] if len(stored) == 1 and isinstance(stored[0], str) else None
