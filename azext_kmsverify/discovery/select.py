# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""Which clusters a fleet run verifies: ARM ids, the Resource Graph query that finds them, and shards. Pure."""

from __future__ import annotations

import hashlib
import re

CLUSTER_TYPE = 'microsoft.kubernetes/connectedclusters'
_ID = re.compile(r'/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/Microsoft\.Kubernetes/'
                 r'connectedClusters/([^/]+)', re.IGNORECASE)


def parse_cluster_id(value: str) -> dict | None:
    """``{'id', 'subscriptionId', 'resourceGroup', 'name'}`` of a connected cluster's ARM id, else None."""
    match = _ID.fullmatch(value.strip().rstrip('/'))
    if not match:
        return None
    subscription, group, name = match.groups()
    return {'id': f'/subscriptions/{subscription}/resourceGroups/{group}/providers/Microsoft.Kubernetes/'
                  f'connectedClusters/{name}',
            'subscriptionId': subscription, 'resourceGroup': group, 'name': name}


def _kql(value: str) -> str:
    """A KQL string literal."""
    return "'" + value.replace('\\', '\\\\').replace("'", "\\'") + "'"


def graph_query(resource_group: str | None = None, tags=()) -> str:
    """The Resource Graph query for AKS Arc clusters (connected clusters of kind ProvisionedCluster)."""
    where = [f'type =~ {_kql(CLUSTER_TYPE)}', "kind =~ 'ProvisionedCluster'"]
    if resource_group:
        where.append(f'resourceGroup =~ {_kql(resource_group)}')
    for key, value in tags:
        where.append(f'tags[{_kql(key)}] =~ {_kql(value)}' if value is not None else f'isnotnull(tags[{_kql(key)}])')
    return (f"resources | where {' and '.join(where)} | project id, name, resourceGroup, subscriptionId, tags, "
            'properties.connectivityStatus | order by id asc')


def cluster_from_row(row: dict) -> dict | None:
    """A Resource Graph row as a cluster entry (with its connectivity status)."""
    parsed = parse_cluster_id(str(row.get('id') or ''))
    if parsed is None:
        return None
    parsed['connectivityStatus'] = row.get('properties_connectivityStatus')
    parsed['tags'] = row.get('tags') if isinstance(row.get('tags'), dict) else {}
    return parsed


def in_shard(cluster_id: str, shard: tuple[int, int] | None) -> bool:
    """``--shard I/N``: a cluster belongs to one slice, decided by its ARM id alone (case-insensitive), so N
    parallel jobs that each list the clusters cover every cluster exactly once."""
    if not shard:
        return True
    index, count = shard
    digest = hashlib.sha256(cluster_id.lower().encode('utf-8')).digest()
    return int.from_bytes(digest[:8], 'big') % count == index - 1


def parse_tag(value: str) -> tuple[str, str | None]:
    key, sep, tag_value = value.partition('=')
    return key, (tag_value if sep else None)
