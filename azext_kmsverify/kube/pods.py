# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""The etcd pods of a cluster, and etcdctl run in them with failover from one pod to the next."""

from __future__ import annotations

import json

from knack.log import get_logger

from azext_kmsverify import defaults
from azext_kmsverify.errors import make
from azext_kmsverify.kube.execstream import ExecError, ExecResult, exec_in_pod
from azext_kmsverify.text import printable

logger = get_logger(__name__)


def etcd_pods(client, explicit: str | None = None) -> list[str]:
    """Names of etcd pods to try, healthiest first (``--etcd-pod`` alone when given)."""
    ns = defaults.ETCD_NAMESPACE
    if explicit:
        status, body = client.request('GET', f'/api/v1/namespaces/{ns}/pods/{explicit}', timeout=20,
                                      doing=f"reading pod '{explicit}' in {ns}")
        if status != 200:
            raise client.errors.api(status, body, f"reading pod '{explicit}' in {ns}",
                                    permission=f'get pods in {ns}',
                                    not_found=(f"etcd pod '{explicit}' was not found in {ns}.",
                                               "List the etcd pods with 'kubectl get pods -n kube-system -l "
                                               "component=etcd', or drop --etcd-pod to find it."))
        return [explicit]
    pods = _list_pods(client, ns, defaults.ETCD_LABEL_SELECTOR)
    if not pods:  # not kubeadm-labelled: fall back to the static pod naming scheme
        pods = [p for p in _list_pods(client, ns, None) if _name(p).startswith(defaults.ETCD_POD_PREFIX)]
    if not pods:
        from azure.cli.core.azclierror import ResourceNotFoundError
        raise make(ResourceNotFoundError, f'No etcd pod found in {ns} (label {defaults.ETCD_LABEL_SELECTOR} or '
                                          f'name {defaults.ETCD_POD_PREFIX}*).',
                   'Name the pod with --etcd-pod. Clusters with external or managed etcd cannot be verified this way.')
    pods.sort(key=lambda p: (not _pod_ready(p), _name(p)))
    return [_name(p) for p in pods]


def _list_pods(client, ns: str, selector: str | None) -> list[dict]:
    from azure.cli.core.azclierror import AzureResponseError
    query = [('labelSelector', selector)] if selector else []
    status, body = client.request('GET', f'/api/v1/namespaces/{ns}/pods', query=query, timeout=30,
                                  doing=f'listing pods in {ns}')
    if status != 200:
        raise client.errors.api(status, body, f'listing pods in {ns}', permission='list pods in ' + ns)
    try:
        items = json.loads(body).get('items') or []
    except (ValueError, AttributeError, RecursionError):
        items = None
    if not isinstance(items, list):
        raise make(AzureResponseError, f'The API server answered the pod list of {ns} with something that is not '
                                       'a pod list.', 'Check what answers at the server address of the kubeconfig.')
    return [p for p in items if isinstance(p, dict) and isinstance((p.get('metadata') or {}).get('name'), str)]


def _name(pod: dict) -> str:
    return pod['metadata']['name']


def _pod_ready(pod: dict) -> bool:
    status = pod.get('status') or {}
    if status.get('phase') != 'Running':
        return False
    return all(c.get('status') == 'True' for c in status.get('conditions') or []
               if isinstance(c, dict) and c.get('type') == 'Ready')


class EtcdExec:  # pylint: disable=too-few-public-methods  # a callable: the etcd reader's run(argv)
    """Runs etcdctl in the etcd pods, falling back to the next pod when one cannot serve.

    Several control-plane nodes mean several etcd pods, and any healthy member serves reads. A pod whose exec
    fails (node down, stream cut) or whose etcdctl fails is skipped with a warning; authorization failures and
    the deadline are not worth another pod.
    """

    def __init__(self, client, pods: list[str], container: str):
        self.client = client
        self.pods = list(pods)
        self.container = container
        self.pod: str | None = None  # the pod that last served
        self.last_pod: str | None = None  # the pod whose answer was returned, failing or not

    def __call__(self, argv: list[str]) -> ExecResult:
        first_failure = None
        candidates = [self.pod] + [p for p in self.pods if p != self.pod] if self.pod else list(self.pods)
        for index, pod in enumerate(candidates):
            last = index == len(candidates) - 1
            try:
                result = exec_in_pod(self.client, defaults.ETCD_NAMESPACE, pod, self.container, argv)
            except ExecError as ex:
                if ex.fatal or last:
                    raise (first_failure if isinstance(first_failure, ExecError) and not ex.fatal
                           else ex).error from None
                first_failure = first_failure or ex
                logger.warning('etcd pod %s could not run etcdctl (%s); trying %s.', printable(pod),
                               ex.error.error_msg.rstrip('.'), printable(candidates[index + 1]))
                continue
            if result.returncode != 0 and not last:
                first_failure = first_failure or result
                logger.warning('etcdctl failed in etcd pod %s (exit code %s); trying %s.', printable(pod),
                               result.returncode, printable(candidates[index + 1]))
                continue
            if result.returncode != 0 and isinstance(first_failure, ExecResult):
                self.last_pod = candidates[0]
                return first_failure  # the first pod's error explains best; the others usually repeat it
            self.last_pod = pod
            if result.returncode == 0:
                self.pod = pod
            return result
        raise AssertionError('unreachable')
