# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""A kubeconfig, read and resolved once: the selected context with its cluster and user, checked for the shape
kubectl accepts before anything uses them. Pure but for reading ``--kubeconfig`` and checking referenced paths.

Messages name fields and entries, never values: a kubeconfig holds tokens and keys.
"""

from __future__ import annotations

import base64
import binascii
import copy
import os
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from azext_kmsverify.errors import argument_error, make
from azext_kmsverify.text import printable, truncate

AZURE_SOURCE = 'the kubeconfig from Azure'
# *-data fields and the path field each replaces.
DATA_FIELDS = {'certificate-authority-data': 'certificate-authority', 'client-certificate-data': 'client-certificate',
               'client-key-data': 'client-key'}
_CLUSTER_STRINGS = ('server', 'certificate-authority', 'certificate-authority-data', 'tls-server-name', 'proxy-url')
_USER_STRINGS = ('client-certificate', 'client-certificate-data', 'client-key', 'client-key-data', 'token',
                 'tokenFile', 'username', 'password', 'as')
_PATH_FIELDS = {'cluster': ('certificate-authority',), 'user': ('client-certificate', 'client-key', 'tokenFile')}


@dataclass(frozen=True)
class Kubeconfig:  # pylint: disable=too-many-instance-attributes  # a record: one field per resolved part
    """The selected context of a kubeconfig. ``cluster`` and ``user`` are the entries' bodies (copies)."""

    source: str             # for messages: "--kubeconfig 'path'" or AZURE_SOURCE
    from_azure: bool        # fetched from ARM: its exec plugins were not chosen by the user
    base_dir: str           # relative paths resolve against the kubeconfig's folder, as with kubectl
    context_name: str
    cluster_name: str
    user_name: str
    cluster: dict
    user: dict
    namespace: str | None = None
    # Replaces the user's credentials (kubelogin): ``authorization()`` gives each request's header.
    token_source: object = field(default=None, compare=False, repr=False)

    @property
    def server(self) -> str:
        return self.cluster['server']

    def with_user(self, user: dict) -> Kubeconfig:
        return replace(self, user=user)

    def with_token_source(self, source) -> Kubeconfig:
        return replace(self, user={}, token_source=source)

    def loader_dict(self, add_file) -> dict:
        """A kubeconfig of this one context for the kubernetes client's KubeConfigLoader, ``*-data`` fields
        replaced by ``add_file(name, bytes) -> path`` (the loader would write them to temporary files)."""
        cluster, user = copy.deepcopy(self.cluster), copy.deepcopy(self.user)
        for body in (cluster, user):
            for data_key, file_key in DATA_FIELDS.items():
                if body.get(data_key):
                    body[file_key] = add_file(file_key, base64.b64decode(body.pop(data_key)))
        return {'apiVersion': 'v1', 'kind': 'Config', 'current-context': self.context_name,
                'contexts': [{'name': self.context_name,
                              'context': {'cluster': self.cluster_name, 'user': self.user_name}}],
                'clusters': [{'name': self.cluster_name, 'cluster': cluster}],
                'users': [{'name': self.user_name, 'user': user}]}


def parse_kubeconfig(text: str) -> dict | None:
    """Parse kubeconfig YAML; ``None`` when it is not a kubeconfig (never echo the content: it holds keys)."""
    import yaml
    loader = getattr(yaml, 'CSafeLoader', yaml.SafeLoader)  # the C loader reads a 32 MB file in a second, not 40
    try:
        config = yaml.load(text, Loader=loader)  # a safe loader
    except (yaml.YAMLError, RecursionError, ValueError, TypeError):
        return None
    if not isinstance(config, dict):
        return None
    return config


def load_kubeconfig_file(path: str) -> dict:
    """Read ``--kubeconfig``; a file that is not a kubeconfig is a bad argument (exit 2)."""
    from azure.cli.core.azclierror import FileOperationError, InvalidArgumentValueError
    try:
        with open(path, encoding='utf-8') as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as ex:
        raise argument_error(make(FileOperationError, f"Could not read --kubeconfig '{printable(path)}': "
                                  f"{getattr(ex, 'strerror', None) or type(ex).__name__}.",
                                  'Check the path and its permissions.')) from None
    config = parse_kubeconfig(text)
    if config is None or not any(k in config for k in ('clusters', 'contexts', 'users')):
        raise argument_error(make(InvalidArgumentValueError,
                                  f"--kubeconfig '{printable(path)}' is not a kubeconfig file.",
                                  "Give a kubeconfig, for example one written by 'az aksarc get-credentials'."))
    return config


def resolve(config: dict, context_name: str | None, *, source: str, base_dir: str = '',
            from_azure: bool = False) -> Kubeconfig:
    """The context ``context_name`` (default: the current context), its cluster and user, checked."""
    contexts = _entries(config, 'contexts', 'context', source)
    name = context_name or config.get('current-context')
    if name is not None and not isinstance(name, str):
        raise _invalid(source, 'current-context is not a string')
    if not name:
        raise _bad_argument(f'{source} has no current context.',
                            f'Choose one with --context: {_choices(contexts)}.')
    if name not in contexts:
        raise _bad_argument(f"Context '{printable(truncate(name, 100))}' is not in {source}.",
                            f'Choose one of: {_choices(contexts)}.')
    context = contexts[name]
    cluster_name, user_name = context.get('cluster'), context.get('user')
    for key, value in (('cluster', cluster_name), ('user', user_name), ('namespace', context.get('namespace'))):
        if value is not None and not isinstance(value, str):
            raise _invalid(source, f"context '{printable(name)}': {key} is not a string")
    if not cluster_name:
        raise _invalid(source, f"context '{printable(name)}' names no cluster")
    clusters = _entries(config, 'clusters', 'cluster', source, only=cluster_name)
    if cluster_name not in clusters:
        raise _invalid(source, f"context '{printable(name)}' names cluster '{printable(cluster_name)}', which is not "
                               'there')
    users = _entries(config, 'users', 'user', source, only=user_name) if user_name else {}
    if user_name and user_name not in users:
        raise _invalid(source, f"context '{printable(name)}' names user '{printable(user_name)}', which is not there")
    cluster = copy.deepcopy(clusters[cluster_name])
    user = copy.deepcopy(users.get(user_name) or {})
    where = f"cluster '{printable(cluster_name)}'"
    _check_strings(source, where, cluster, _CLUSTER_STRINGS)
    _check_server(source, where, cluster)
    if 'insecure-skip-tls-verify' in cluster and not isinstance(cluster['insecure-skip-tls-verify'], bool):
        raise _invalid(source, f'{where}: insecure-skip-tls-verify is not true or false')
    where_user = f"user '{printable(user_name)}'"
    _check_strings(source, where_user, user, _USER_STRINGS)
    _check_exec(source, where_user, user)
    if user.get('auth-provider') is not None:
        provider = user['auth-provider']
        kind = provider.get('name') if isinstance(provider, dict) else None
        raise _bad_argument(f"{source}: {where_user} uses the auth-provider "
                            f"'{printable(truncate(kind or '?', 40))}', which kmsverify does not support.",
                            'Use a kubeconfig with a client certificate, a token or an exec plugin (kubelogin), '
                            "for example one from 'az aksarc get-credentials'.")
    for body, section in ((cluster, 'cluster'), (user, 'user')):
        for data_key in DATA_FIELDS:
            if body.get(data_key):
                try:
                    base64.b64decode(body[data_key], validate=False)
                except (binascii.Error, ValueError):
                    raise _invalid(source, f'{where if section == "cluster" else where_user}: {data_key} is not '
                                           'base64') from None
        for path_key in _PATH_FIELDS[section]:
            _check_path(source, where if section == 'cluster' else where_user, body, path_key, base_dir)
    return Kubeconfig(source=source, from_azure=from_azure, base_dir=base_dir, context_name=name,
                      cluster_name=cluster_name, user_name=user_name or '', cluster=cluster, user=user,
                      namespace=context.get('namespace'))


def _entries(config: dict, section: str, body_key: str, source: str, only: str | None = None) -> dict:
    """``{name: body}`` of a section. Only the entry named ``only`` (if given) must be well formed: kubectl
    also ignores what the selected context does not use."""
    items = config.get(section)
    if items is None:
        return {}
    if not isinstance(items, list):
        raise _invalid(source, f'{section} is not a list')
    found = {}
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get('name'), str):
            continue
        name = item['name']
        if only is not None and name != only:
            continue
        body = item.get(body_key)
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise _invalid(source, f"{section}[{index}] ('{printable(truncate(name, 100))}'): {body_key} is not a "
                                   'mapping')
        found.setdefault(name, body)
    return found


def _check_strings(source: str, where: str, body: dict, keys) -> None:
    for key in keys:
        if key in body and body[key] is not None and not isinstance(body[key], str):
            raise _invalid(source, f'{where}: {key} is not a string')


def _check_server(source: str, where: str, cluster: dict) -> None:
    server = cluster.get('server')
    if not server:
        raise _invalid(source, f'{where} has no server')
    try:
        parts = urlsplit(server)
        _ = parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        raise _invalid(source, f'{where}: server is not a valid URL') from None
    if parts.scheme not in ('https', 'http') or not parts.hostname:
        raise _invalid(source, f'{where}: server is not an https:// URL with a host')
    proxy = cluster.get('proxy-url')
    if proxy:
        try:
            proxy_parts = urlsplit(proxy)
            _ = proxy_parts.port
        except ValueError:
            raise _invalid(source, f'{where}: proxy-url is not a valid URL') from None
        if proxy_parts.scheme not in ('http', 'https') or not proxy_parts.hostname:
            raise _invalid(source, f'{where}: proxy-url is not an http:// or https:// URL with a host (SOCKS '
                                   'proxies are not supported)')


def _check_exec(source: str, where: str, user: dict) -> None:
    plugin = user.get('exec')
    if plugin is None:
        return
    if not isinstance(plugin, dict):
        raise _invalid(source, f'{where}: exec is not a mapping')
    if not isinstance(plugin.get('command'), str) or not plugin['command']:
        raise _invalid(source, f'{where}: exec has no command')
    args = plugin.get('args')
    if args is not None and (not isinstance(args, list) or not all(isinstance(a, str) for a in args)):
        raise _invalid(source, f'{where}: exec args is not a list of strings')
    env = plugin.get('env')
    if env is not None and (not isinstance(env, list) or not all(
            isinstance(e, dict) and isinstance(e.get('name'), str) and isinstance(e.get('value'), str) for e in env)):
        raise _invalid(source, f'{where}: exec env is not a list of name/value strings')


def _check_path(source: str, where: str, body: dict, key: str, base_dir: str) -> None:
    path = body.get(key)
    if not path:
        return
    if not os.path.isabs(path):
        if not base_dir:
            raise _invalid(source, f'{where}: {key} is a relative path, which has nothing to be relative to')
        path = os.path.join(base_dir, path)
        body[key] = path
    if not os.path.isfile(path):
        raise _invalid(source, f"{where}: {key} file '{printable(truncate(path, 200))}' does not exist")


def _choices(entries: dict) -> str:
    return ', '.join(sorted(printable(truncate(n, 100)) for n in entries)) or '(none)'


def _invalid(source: str, what: str):
    from azure.cli.core.azclierror import InvalidArgumentValueError
    return argument_error(make(InvalidArgumentValueError, f'{source} is not usable: {what}.',
                               'Fix the kubeconfig, or fetch fresh credentials (az aksarc get-credentials, or '
                               '-g/-n with this command).'))


def _bad_argument(message: str, recommendation: str):
    from azure.cli.core.azclierror import InvalidArgumentValueError
    return argument_error(make(InvalidArgumentValueError, message, recommendation))
