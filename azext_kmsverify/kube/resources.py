# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""``--resource``: what the API says of each named resource (custom or built in, namespaced or not, the version to
write in), so the scan reads the right etcd prefix (``verdict.resources``) and ``reencrypt`` writes the right path.

A custom resource is known by its CustomResourceDefinition (``<plural>.<group>``): its storage version and scope.
Anything else must be served by kube-apiserver itself: discovery (``/api/v1``, ``/apis/<group>``) gives the
preferred version and the scope; a group served by another API server (an APIService with a service) is refused,
since that server keeps its objects under prefixes of its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import quote

from azext_kmsverify.errors import make
from azext_kmsverify.text import printable
from azext_kmsverify.verdict.resources import ResourceRef, etcd_prefix, parse_resource, storage_version

_PERMISSION_CRD = 'get customresourcedefinitions.apiextensions.k8s.io (cluster-wide)'


@dataclass(frozen=True)
class Resource:
    """One ``--resource``, as the API serves it and etcd stores it."""

    ref: ResourceRef
    prefix: str        # the etcd key prefix, with its trailing '/'
    namespaced: bool
    version: str       # the API version to read and write in (a custom resource's storage version)
    custom: bool = False

    @property
    def name(self) -> str:
        return self.ref.name

    @property
    def singular(self) -> str:
        """How a message names one object: 'secret', 'configmap', 'widgets.example.com object'."""
        if self.ref.name == 'secrets':
            return 'secret'
        return f'{self.ref.name} object'


SECRETS = Resource(ResourceRef('secrets'), '/registry/secrets/', True, 'v1')


def resolve(client, names) -> list[Resource]:
    """The resources of ``names`` (validated ``--resource`` values; empty: secrets), as the API serves them.
    Raises ResourceNotFoundError (exit 3) for one the API does not serve."""
    if not names or list(names) == ['secrets']:
        return [SECRETS]
    found, seen = [], set()
    for text in names:
        ref = parse_resource(text)
        resource = SECRETS if ref == SECRETS.ref else _one(client, ref)
        if resource.prefix not in seen:
            seen.add(resource.prefix)
            found.append(resource)
    return found


def _one(client, ref: ResourceRef) -> Resource:
    if ref.group:
        crd = _get(client, f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{quote(ref.name, safe='')}",
                   f'reading the CustomResourceDefinition {ref.name}', _PERMISSION_CRD)
        if crd is not None:
            version = storage_version(crd)
            if version is None:
                raise _not_served(ref, 'its CustomResourceDefinition has no storage version')
            scope = ((crd.get('spec') or {}).get('scope') or 'Namespaced')
            return Resource(ref, etcd_prefix(ref, custom=True), scope == 'Namespaced', version, custom=True)
        group = _get(client, f"/apis/{quote(ref.group, safe='')}", f'reading API group {ref.group}',
                     'get on the non-resource URL /apis/*')
        if group is None:
            raise _not_served(ref, f'the API server serves no API group {ref.group}')
        version = ((group.get('preferredVersion') or {}).get('version')
                   or next((v.get('version') for v in group.get('versions') or [] if v.get('version')), None))
        if not version:
            raise _not_served(ref, f'API group {ref.group} lists no version')
        name = quote(f'{version}.{ref.group}', safe='')
        service = _get(client, f'/apis/apiregistration.k8s.io/v1/apiservices/{name}',
                       f'reading the APIService {version}.{ref.group}',
                       'get apiservices.apiregistration.k8s.io (cluster-wide)')
        if service is not None and (service.get('spec') or {}).get('service'):
            raise _not_served(ref, f'API group {ref.group} is served by another API server (an aggregated API), '
                                   "which stores its objects outside kube-apiserver's etcd prefixes")
        listing = _get(client, f"/apis/{quote(ref.group, safe='')}/{quote(version, safe='')}",
                       f'reading API group {ref.group}/{version}', 'get on the non-resource URL /apis/*')
    else:
        version = 'v1'
        listing = _get(client, '/api/v1', 'reading the core API', 'get on the non-resource URL /api/*')
    entry = next((r for r in (listing or {}).get('resources') or [] if r.get('name') == ref.resource), None)
    if entry is None:
        raise _not_served(ref, 'the API server does not serve it')
    return Resource(ref, etcd_prefix(ref, custom=False), bool(entry.get('namespaced')), version)


def _get(client, path: str, doing: str, permission: str) -> dict | None:
    """The JSON object at ``path``, or None on 404."""
    status, body = client.request('GET', path, timeout=30, doing=doing)
    if status == 404:
        return None
    if status != 200:
        raise client.errors.api(status, body, doing, permission=permission)
    try:
        value = json.loads(body)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        from azure.cli.core.azclierror import AzureResponseError
        raise make(AzureResponseError, f'{doing}: the API answered with something that is not a JSON object.',
                   'Check that the kubeconfig points at a Kubernetes API server.')
    return value


def _not_served(ref: ResourceRef, why: str):
    from azure.cli.core.azclierror import ResourceNotFoundError
    return make(ResourceNotFoundError, f'--resource {printable(ref.name)}: {printable(why)}.',
                "Check the name with 'kubectl api-resources' (give RESOURCE or RESOURCE.GROUP).")
