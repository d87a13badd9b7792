"""kube.resources: what the API says of each --resource (a fake client answering as kube-apiserver does)."""

import json

import pytest
from azure.cli.core.azclierror import ResourceNotFoundError

from azext_kmsverify.deadline import Deadline
from azext_kmsverify.kube.errors import KubeErrors
from azext_kmsverify.kube.resources import SECRETS, resolve
from azext_kmsverify.verdict.plan import Target, addressable


class FakeApi:
    def __init__(self, answers):
        self.answers = answers  # path -> (status, body)
        self.asked = []
        self.deadline = Deadline(30)
        self.errors = KubeErrors('https://api.example:6443', 'kubeconfig', self.deadline)

    def request(self, method, path, **_):
        self.asked.append((method, path))
        status, body = self.answers.get(path, (404, {'kind': 'Status', 'code': 404}))
        return status, json.dumps(body).encode()


CORE = {'kind': 'APIResourceList', 'groupVersion': 'v1',
        'resources': [{'name': 'configmaps', 'namespaced': True}, {'name': 'nodes', 'namespaced': False},
                      {'name': 'secrets', 'namespaced': True}]}
CRD = {'kind': 'CustomResourceDefinition', 'spec': {'group': 'example.com', 'scope': 'Cluster',
                                                    'versions': [{'name': 'v1beta1', 'storage': False},
                                                                 {'name': 'v2', 'storage': True}]}}


def test_secrets_alone_ask_the_api_nothing():
    api = FakeApi({})
    assert resolve(api, []) == [SECRETS] and resolve(api, ['secrets']) == [SECRETS]
    assert api.asked == []


def test_core_custom_and_built_in_group_resources():
    api = FakeApi({
        '/api/v1': (200, CORE),
        '/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.com': (200, CRD),
        '/apis/apps': (200, {'kind': 'APIGroup', 'preferredVersion': {'version': 'v1'}}),
        '/apis/apiregistration.k8s.io/v1/apiservices/v1.apps': (200, {'spec': {'service': None}}),
        '/apis/apps/v1': (200, {'resources': [{'name': 'deployments', 'namespaced': True}]}),
    })
    configmaps, nodes, widgets, deployments, secrets = resolve(
        api, ['configmaps', 'nodes', 'widgets.example.com', 'deployments.apps', 'secrets'])
    assert (configmaps.prefix, configmaps.namespaced, configmaps.version) == ('/registry/configmaps/', True, 'v1')
    assert (nodes.prefix, nodes.namespaced) == ('/registry/minions/', False)
    assert (widgets.prefix, widgets.namespaced, widgets.version, widgets.custom) == (
        '/registry/example.com/widgets/', False, 'v2', True)  # the storage version, not the first listed
    assert (deployments.prefix, deployments.version, deployments.custom) == ('/registry/deployments/', 'v1', False)
    assert secrets is SECRETS


@pytest.mark.parametrize('answers,name,why', [
    ({}, 'gadgets.example.com', 'serves no API group example.com'),
    ({'/api/v1': (200, CORE)}, 'pods', 'does not serve it'),
    ({'/apis/metrics.k8s.io': (200, {'preferredVersion': {'version': 'v1beta1'}}),
      '/apis/apiregistration.k8s.io/v1/apiservices/v1beta1.metrics.k8s.io':
          (200, {'spec': {'service': {'name': 'metrics-server', 'namespace': 'kube-system'}}})},
     'pods.metrics.k8s.io', 'aggregated API'),
])
def test_what_the_api_does_not_serve_is_not_found(answers, name, why):
    with pytest.raises(ResourceNotFoundError) as raised:
        resolve(FakeApi(answers), [name])
    assert why in raised.value.error_msg and name in raised.value.error_msg


def test_a_forbidden_crd_read_names_the_permission():
    from azure.cli.core.azclierror import AzCLIError
    api = FakeApi({'/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.com':
                   (403, {'kind': 'Status', 'code': 403, 'message': 'forbidden'})})
    with pytest.raises(AzCLIError) as raised:
        resolve(api, ['widgets.example.com'])
    assert 'customresourcedefinitions' in str(raised.value.error_msg) + str(raised.value.recommendations)


def test_an_object_target_names_its_resource_and_key_and_a_cluster_scoped_one_has_no_namespace():
    target = Target('', 'big', 'plaintext', 'identity', resource='widgets.example.com',
                    etcd_key='/registry/example.com/widgets/big')
    shown = target.to_dict()
    assert shown['resource'] == 'widgets.example.com' and shown['etcdKey'] == '/registry/example.com/widgets/big'
    assert 'resource' not in Target('ns', 's', 'plaintext', 'identity').to_dict()  # a secret's shape is unchanged
    assert addressable('', 'big', namespaced=False) and not addressable('', 'big')
    assert not addressable('default', 'big', namespaced=False)
