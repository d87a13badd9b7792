# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""What each command needs from Kubernetes RBAC, what an identity lacks, and the least-privilege grant. Pure.

Why: most operators and pipeline identities are not cluster admins. Without a preflight they learn what they lack
from a 403 in the middle of a run (after the probe secret was written, or halfway through a re-encryption). The
API server can answer "may I?" for every request beforehand (SelfSubjectAccessReview), so the commands ask first
and say exactly which verb on which resource, subresource, namespace or non-resource URL is missing, and for
which command, and print the Role/ClusterRole and binding that grant just that.

The requirement lists mirror the requests the product makes (kube/ and operations/), not a guess:

* etcd is read by exec-ing etcdctl in the etcd pods of kube-system (kube/pods.py, kube/execstream.py): ``list``
  pods there (``get`` the pod with ``--etcd-pod``), and ``pods/exec``. The exec is a WebSocket upgrade, an HTTP
  GET, so it is authorized as ``get pods/exec``; since Kubernetes 1.35 the ``AuthorizePodWebsocketUpgrade
  CreatePermission`` gate (beta, on by default) also demands ``create pods/exec``, the verb SPDY's POST always
  needed. Both are asked for, so the grant works on every release.
* the probe (kube/probe.py): ``create`` and ``delete`` secrets in the probe namespace.
* ``--secret NS/NAME``: etcd only; ``get`` secrets in NS is used only to explain a secret etcd does not have
  (kube/secrets.secret_exists), so it is optional.
* ``--all-secrets`` and ``reencrypt``'s plan: ``get`` on the non-resource URL ``/metrics`` for the current key
  (kube/metrics.py; optional: without it the key comes from the probe or the latest write), ``list`` secrets in
  all namespaces for the KMS v1 write times (kube/secrets.list_secret_metadata; optional: without it the KMS v1
  age check is skipped), ``get`` secrets (metadata of at most two) to date the current KMS v2 key
  (kube/keyage.py; optional: without it ``KmsKeyRotation`` is skipped).
* ``reencrypt`` (kube/rewrite.py): ``get`` and ``update`` secrets in all namespaces (a GET and a PUT; no patch),
  unless ``--dry-run``.
* KMS health (kube/health.py): ``get`` ``/readyz``; the reason of a failing check is on ``/readyz/<check>``,
  which the default roles do not cover (``system:discovery`` and ``system:public-info-viewer`` grant ``/readyz``,
  not ``/readyz/*``: plugin/pkg/auth/authorizer/rbac/bootstrappolicy/testdata/cluster-roles.yaml), hence
  ``/readyz/*`` (optional).
* the preflight itself: ``create`` selfsubjectaccessreviews, which ``system:basic-user`` grants every
  authenticated user by default (same file).
* ``status``: ``/readyz`` only is required; ``/readyz/*`` and ``/metrics`` add facts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from azext_kmsverify import defaults

VERIFY_PROBE = 'verify'
VERIFY_SECRETS = 'verify --secret'
VERIFY_ALL_SECRETS = 'verify --all-secrets'
REENCRYPT = 'reencrypt'
REENCRYPT_DRY_RUN = 'reencrypt --dry-run'
STATUS = 'status'
COMMANDS = (VERIFY_PROBE, VERIFY_SECRETS, VERIFY_ALL_SECRETS, REENCRYPT, REENCRYPT_DRY_RUN, STATUS)

ALLOWED, DENIED, UNKNOWN = 'allowed', 'denied', 'unknown'


@dataclass(frozen=True)
class Permission:  # pylint: disable=too-many-instance-attributes  # the attributes an access review names
    """One request the API server authorizes: a resource attribute set, or a non-resource URL (``path``).

    ``namespace`` '' means every namespace (a cluster-wide grant); ``name`` narrows to one object (a
    ``resourceNames`` rule). ``required`` False: the command still runs without it, with less evidence."""

    verb: str
    resource: str = ''
    subresource: str = ''
    namespace: str = ''
    group: str = ''
    name: str = ''
    path: str = ''
    required: bool = True
    why: str = ''

    @property
    def key(self) -> tuple:
        """What the API server is asked: the identity of the permission, without ``required``/``why``."""
        return (self.verb, self.group, self.resource, self.subresource, self.namespace, self.name, self.path)

    @property
    def resource_ref(self) -> str:
        return f'{self.resource}/{self.subresource}' if self.subresource else self.resource

    def describe(self) -> str:
        """'create pods/exec in namespace kube-system', "get on the non-resource URL /metrics"."""
        if self.path:
            return f'{self.verb} on the non-resource URL {self.path}'
        what = self.resource_ref + (f'.{self.group}' if self.group else '')
        if self.name:
            what += f" named '{self.name}'"
        where = f'in namespace {self.namespace}' if self.namespace else 'in all namespaces'
        return f'{self.verb} {what} {where}'

    def review_spec(self) -> dict:
        """The ``spec`` of a SelfSubjectAccessReview (authorization.k8s.io/v1) asking for this permission."""
        if self.path:
            return {'nonResourceAttributes': {'path': self.path, 'verb': self.verb}}
        attributes = {'verb': self.verb, 'group': self.group, 'resource': self.resource}
        for key, value in (('subresource', self.subresource), ('namespace', self.namespace), ('name', self.name)):
            if value:
                attributes[key] = value
        return {'resourceAttributes': attributes}

    def to_dict(self) -> dict:
        data = {'verb': self.verb, 'required': self.required, 'description': self.describe(), 'why': self.why}
        if self.path:
            data['nonResourceURL'] = self.path
        else:
            data.update(group=self.group, resource=self.resource, subresource=self.subresource or None,
                        namespace=self.namespace or None, name=self.name or None)
        return data


@dataclass(frozen=True)
class Answer:
    """The API server's answer for one permission: allowed, denied, or unknown (``reason`` says why)."""

    permission: Permission
    state: str
    reason: str = ''

    def to_dict(self) -> dict:
        return {**self.permission.to_dict(), 'state': self.state, 'reason': self.reason or None}


@dataclass
class CommandAccess:
    """What one command lacks: ``missing`` (denied and required), ``degraded`` (denied, optional: the command
    runs with less evidence), ``unknown`` (the server would not say)."""

    command: str
    missing: list = field(default_factory=list)
    degraded: list = field(default_factory=list)
    unknown: list = field(default_factory=list)

    @property
    def can_run(self) -> bool | None:
        """True: every required permission is allowed; False: one is denied; None: some could not be asked."""
        if self.missing:
            return False
        if any(a.permission.required for a in self.unknown):
            return None
        return True

    def to_dict(self) -> dict:
        return {'command': self.command, 'canRun': self.can_run,
                'missing': [a.to_dict() for a in self.missing],
                'degraded': [a.to_dict() for a in self.degraded],
                'unknown': [a.to_dict() for a in self.unknown]}


def _etcd(etcd_pod: str | None) -> list[Permission]:
    ns = defaults.ETCD_NAMESPACE
    why = 'read etcd: exec etcdctl in the etcd pod'
    listing = (Permission('get', 'pods', namespace=ns, name=etcd_pod, why='read the --etcd-pod') if etcd_pod else
               Permission('list', 'pods', namespace=ns, why='find the etcd pods'))
    return [listing,
            Permission('get', 'pods', 'exec', ns, name=etcd_pod or '', why=why + ' (the WebSocket upgrade is a GET)'),
            Permission('create', 'pods', 'exec', ns, name=etcd_pod or '',
                       why=why + ' (required for WebSocket exec since Kubernetes 1.35, and for SPDY)')]


def _health() -> list[Permission]:
    return [Permission('get', path='/readyz', why='KMS health'),
            Permission('get', path='/readyz/*', required=False, why='the reason a KMS health check fails')]


def _metrics() -> Permission:
    return Permission('get', path='/metrics', required=False,
                      why='the current KMS v2 key id hash (else the probe or the latest write names it)')


def _scanned(resources, *, rewrite: bool) -> list[Permission]:
    """Per scanned resource ``(group, plural)``: ``list`` (metadata: KMS v1 write times) and ``get`` (metadata: the
    KMS v2 key's first write), optional; with ``rewrite``, ``get`` and ``update`` required (reencrypt's GET+PUT)."""
    needs = []
    for group, resource in resources:
        needs.append(Permission('list', resource, group=group, required=False,
                                why=f'the last write times of KMS v1 {resource} (else that age check is skipped)'))
        if rewrite:
            needs += [Permission('get', resource, group=group, why='read each target before rewriting it'),
                      Permission('update', resource, group=group,
                                 why='rewrite each target (PUT with its resourceVersion)')]
        else:
            needs.append(Permission('get', resource, group=group, required=False,
                                    why='date the current KMS v2 key: the creation time of an object written once '
                                        '(else KmsKeyRotation is skipped)'))
    return needs


def requirements(command: str, *, probe_namespace: str = defaults.PROBE_NAMESPACE, secret_namespaces=(),
                 etcd_pod: str | None = None, resources=(('', 'secrets'),)) -> list[Permission]:
    """The permissions ``command`` (one of :data:`COMMANDS`) uses, required ones first, without duplicates.

    ``secret_namespaces``: the namespaces of ``--secret NS/NAME``; ``etcd_pod``: ``--etcd-pod`` (the exec grant
    can then name the pod); ``resources``: the ``(group, plural)`` of each ``--resource`` scanned by ``verify
    --all-secrets`` and ``reencrypt`` (default secrets)."""
    if command not in COMMANDS:
        raise ValueError(f'unknown command {command!r}')
    if command == STATUS:
        needs = _health() + [_metrics()]
    elif command == VERIFY_PROBE:
        needs = _health() + _etcd(etcd_pod) + [
            Permission('create', 'secrets', namespace=probe_namespace, why='write the probe secret'),
            Permission('delete', 'secrets', namespace=probe_namespace, why='delete the probe secret')]
    elif command == VERIFY_SECRETS:
        needs = _health() + _etcd(etcd_pod) + [
            Permission('get', 'secrets', namespace=ns, required=False,
                       why='explain a secret etcd does not hold (does the API know it?)')
            for ns in sorted(set(secret_namespaces))]
    elif command == VERIFY_ALL_SECRETS:
        needs = _health() + _etcd(etcd_pod) + [_metrics()] + _scanned(resources, rewrite=False)
    else:
        needs = _etcd(etcd_pod) + [_metrics()] + _scanned(resources, rewrite=command == REENCRYPT)
    return combine(needs)


def combine(*lists) -> list[Permission]:
    """One permission per key from ``lists`` (e.g. ``verify`` with the probe and ``--all-secrets``), required when
    any list requires it, required ones first."""
    merged = {}
    for permission in (p for permissions in lists for p in permissions):
        known = merged.get(permission.key)
        if known is None or (permission.required and not known.required):
            merged[permission.key] = permission
    return sorted(merged.values(), key=lambda p: not p.required)


def preflight_commands(probe_namespace: str = defaults.PROBE_NAMESPACE) -> dict:
    """``{command: [Permission]}`` for what ``status`` reports: each command a user may want to run next."""
    return {command: requirements(command, probe_namespace=probe_namespace)
            for command in (VERIFY_PROBE, VERIFY_ALL_SECRETS, REENCRYPT, STATUS)}


def unique_permissions(per_command: dict) -> list[Permission]:
    """Every distinct permission of ``{command: [Permission]}``, each asked once."""
    return combine(*per_command.values())


def assess(command: str, needs: list[Permission], answers) -> CommandAccess:
    """What ``command`` lacks, from ``answers`` (``Answer``s keyed by anything; matched by permission key). A
    permission without an answer is unknown."""
    by_key = {a.permission.key: a for a in (answers.values() if isinstance(answers, dict) else answers)}
    access = CommandAccess(command)
    for permission in needs:
        answer = by_key.get(permission.key)
        if answer is None:
            answer = Answer(permission, UNKNOWN, 'not asked')
        elif answer.permission != permission:
            answer = Answer(permission, answer.state, answer.reason)  # the command's own required/why
        if answer.state == DENIED:
            (access.missing if permission.required else access.degraded).append(answer)
        elif answer.state == UNKNOWN:
            access.unknown.append(answer)
    return access


def missing_summary(access: CommandAccess) -> str:
    """One line for a check or an error: 'missing: create secrets in namespace default; ...'."""
    parts = []
    if access.missing:
        parts.append('missing: ' + '; '.join(a.permission.describe() for a in access.missing))
    if access.degraded:
        parts.append('optional, missing: ' + '; '.join(a.permission.describe() for a in access.degraded))
    if access.unknown:
        parts.append('not known: ' + '; '.join(f'{a.permission.describe()} ({a.reason})' for a in access.unknown))
    return ', '.join(parts) if parts else 'every permission is allowed'


# ---- least-privilege RBAC ---------------------------------------------------------------------------------------

SUBJECT_KINDS = ('User', 'Group', 'ServiceAccount')


def _rules(permissions) -> list[dict]:
    """RBAC rules: one per (group, resources, names) with the verbs merged; non-resource URLs by verb set."""
    resource_rules, url_verbs = {}, {}
    for p in permissions:
        if p.path:
            url_verbs.setdefault(p.path, set()).add(p.verb)
            continue
        resource_rules.setdefault((p.group, p.resource_ref, p.name), set()).add(p.verb)
    rules = []
    for (group, resource, name), verbs in sorted(resource_rules.items()):
        rule = {'apiGroups': [group], 'resources': [resource]}
        if name:
            rule['resourceNames'] = [name]
        rule['verbs'] = sorted(verbs)
        rules.append(rule)
    by_verbs = {}
    for path, verbs in sorted(url_verbs.items()):
        by_verbs.setdefault(tuple(sorted(verbs)), []).append(path)
    for verbs, paths in sorted(by_verbs.items()):
        rules.append({'nonResourceURLs': paths, 'verbs': list(verbs)})
    return rules


def rbac_objects(permissions, subject_kind: str, subject_name: str, *, subject_namespace: str = '',
                 name: str = 'kmsverify') -> list[dict]:
    """The Roles, ClusterRole and bindings granting exactly ``permissions`` to one subject.

    Namespaced where possible: a permission in one namespace (pods/exec in kube-system, the probe's secrets) is a
    Role and RoleBinding in that namespace; secrets in all namespaces and non-resource URLs (only a ClusterRole
    can name those) are one ClusterRole and ClusterRoleBinding."""
    if subject_kind not in SUBJECT_KINDS:
        raise ValueError(f'subject kind must be one of {", ".join(SUBJECT_KINDS)}')
    if not subject_name or (subject_kind == 'ServiceAccount' and not subject_namespace):
        raise ValueError('a subject needs a name (and a ServiceAccount its namespace)')
    subject = {'kind': subject_kind, 'name': subject_name}
    if subject_kind == 'ServiceAccount':
        subject['namespace'] = subject_namespace
    else:
        subject['apiGroup'] = 'rbac.authorization.k8s.io'
    namespaced, cluster = {}, []
    for p in permissions:
        if p.namespace and not p.path:
            namespaced.setdefault(p.namespace, []).append(p)
        else:
            cluster.append(p)
    objects = []
    for namespace, perms in sorted(namespaced.items()):
        meta = {'name': name, 'namespace': namespace}
        objects.append({'apiVersion': 'rbac.authorization.k8s.io/v1', 'kind': 'Role', 'metadata': meta,
                        'rules': _rules(perms)})
        objects.append({'apiVersion': 'rbac.authorization.k8s.io/v1', 'kind': 'RoleBinding', 'metadata': dict(meta),
                        'roleRef': {'apiGroup': 'rbac.authorization.k8s.io', 'kind': 'Role', 'name': name},
                        'subjects': [subject]})
    if cluster:
        objects.append({'apiVersion': 'rbac.authorization.k8s.io/v1', 'kind': 'ClusterRole',
                        'metadata': {'name': name}, 'rules': _rules(cluster)})
        objects.append({'apiVersion': 'rbac.authorization.k8s.io/v1', 'kind': 'ClusterRoleBinding',
                        'metadata': {'name': name},
                        'roleRef': {'apiGroup': 'rbac.authorization.k8s.io', 'kind': 'ClusterRole', 'name': name},
                        'subjects': [subject]})
    return objects


def rbac_yaml(permissions, subject_kind: str, subject_name: str, *, subject_namespace: str = '',
              name: str = 'kmsverify') -> str:
    """:func:`rbac_objects` as a multi-document YAML stream for ``kubectl apply -f -`` ('' when nothing is
    missing). Every string is a double-quoted scalar (JSON string syntax, which YAML accepts), so a user name such
    as ``system:serviceaccount:ns:sa`` or ``a@b.example`` cannot change the document's structure."""
    objects = rbac_objects(permissions, subject_kind, subject_name, subject_namespace=subject_namespace, name=name)
    return ''.join('---\n' + _yaml(obj, 0) for obj in objects)


def _yaml(value, indent: int) -> str:
    pad = ' ' * indent
    lines = []
    for key, item in value.items():
        if isinstance(item, dict):
            lines.append(f'{pad}{key}:\n' + _yaml(item, indent + 2))
        elif isinstance(item, list):
            if all(isinstance(i, str) for i in item):
                lines.append(f'{pad}{key}: [{", ".join(json.dumps(i) for i in item)}]\n')
            else:
                lines.append(f'{pad}{key}:\n')
                for element in item:
                    body = _yaml(element, indent + 2)
                    lines.append(pad + '- ' + body[indent + 2:])
        else:
            lines.append(f'{pad}{key}: {json.dumps(item)}\n')
    return ''.join(lines)


def subject_of(user: dict) -> tuple[str, str, str]:
    """``(kind, name, namespace)`` of the RBAC subject for a SelfSubjectReview user: a service account's token
    names ``system:serviceaccount:NS:NAME``, which RBAC binds as kind ServiceAccount; anyone else is a User."""
    name = user['username']
    parts = name.split(':')
    if len(parts) == 4 and parts[:2] == ['system', 'serviceaccount'] and parts[2] and parts[3]:
        return 'ServiceAccount', parts[3], parts[2]
    return 'User', name, ''


def grant(accesses, user: dict | None, *, include_optional: bool = True, name: str = 'kmsverify') -> str:
    """The least-privilege YAML granting ``user`` (a SelfSubjectReview user, see :func:`subject_of`) what the
    ``CommandAccess`` records lack (and, with ``include_optional``, the optional grants that add evidence); '' when
    nothing is missing or the user is not known."""
    wanted = [a.permission for access in accesses
              for a in access.missing + (access.degraded if include_optional else [])]
    if not wanted or not user:
        return ''
    kind, subject, namespace = subject_of(user)
    return rbac_yaml(combine(wanted), kind, subject, subject_namespace=namespace, name=name)
