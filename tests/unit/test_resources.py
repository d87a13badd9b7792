"""verdict.resources: --resource NAME to the etcd prefix kube-apiserver stores it under."""

import pytest

from azext_kmsverify.verdict.resources import ResourceRef, etcd_prefix, parse_resource, prefixes, split_key


@pytest.mark.parametrize("name,custom,prefix", [
    ("secrets", False, "/registry/secrets/"),
    ("configmaps", False, "/registry/configmaps/"),
    ("deployments.apps", False, "/registry/deployments/"),          # built-in groups: the resource name only
    ("services", False, "/registry/services/specs/"),               # specialDefaultResourcePrefixes
    ("endpoints", False, "/registry/services/endpoints/"),
    ("nodes", False, "/registry/minions/"),
    ("replicationcontrollers", False, "/registry/controllers/"),
    ("ingresses.networking.k8s.io", False, "/registry/ingress/"),
    ("widgets.example.com", True, "/registry/example.com/widgets/"),  # CRDs: group/plural
    ("gateways.gateway.networking.k8s.io", True, "/registry/gateway.networking.k8s.io/gateways/"),
    ("configmaps.core", False, "/registry/configmaps/"),
])
def test_prefixes_as_kube_apiserver_stores_them(name, custom, prefix):
    assert etcd_prefix(parse_resource(name), custom=custom) == prefix


def test_another_etcd_prefix_root():
    assert etcd_prefix(ResourceRef("secrets"), custom=False, etcd_prefix_root="/kubernetes.io/") == \
        "/kubernetes.io/secrets/"


@pytest.mark.parametrize("bad", ["", "  ", "ConfigMap", "v1/configmaps", "/registry/secrets", "config_maps",
                                 "secrets.", "secrets..example.com", "-secrets", "a" * 64, "x." + "a" * 254])
def test_bad_names_are_refused_with_a_reason(bad):
    with pytest.raises(ValueError) as error:
        parse_resource(bad)
    assert str(error.value)


def test_a_custom_resource_needs_a_group():
    with pytest.raises(ValueError):
        etcd_prefix(ResourceRef("widgets"), custom=True)


def test_the_default_is_secrets_and_duplicates_collapse():
    assert prefixes([]) == [(ResourceRef("secrets"), "/registry/secrets/")]
    assert [p for _, p in prefixes(["secrets", "configmaps", "secrets"])] == ["/registry/secrets/",
                                                                              "/registry/configmaps/"]


def test_custom_is_decided_by_the_api_not_the_group_spelling():
    assert prefixes(["routes.route.openshift.io"], custom_groups={"route.openshift.io"})[0][1] == \
        "/registry/route.openshift.io/routes/"
    crd = {("gateway.networking.k8s.io", "gateways")}
    assert prefixes(["gateways.gateway.networking.k8s.io"], custom_resources=crd)[0][1] == \
        "/registry/gateway.networking.k8s.io/gateways/"
    assert prefixes(["gateways.gateway.networking.k8s.io"])[0][1] == "/registry/gateways/"  # unknown: built in


def test_two_names_for_one_prefix_are_refused():
    with pytest.raises(ValueError, match="same etcd prefix"):
        prefixes(["ingresses.extensions", "ingresses.networking.k8s.io"])


def test_split_key():
    assert split_key("/registry/configmaps/kube-system/coredns", "/registry/configmaps/") == ("kube-system", "coredns")
    assert split_key("/registry/example.com/clusterwidgets/w1", "/registry/example.com/clusterwidgets/",
                     namespaced=False) == (None, "w1")
    with pytest.raises(ValueError):
        split_key("/registry/secrets/a/b", "/registry/configmaps/")


def test_api_paths_for_rewrites():
    from azext_kmsverify.verdict.resources import api_path
    assert api_path(ResourceRef("configmaps"), "v1", "kube root/ca", "kube-system") == \
        "/api/v1/namespaces/kube-system/configmaps/kube%20root%2Fca"
    assert api_path(ResourceRef("widgets", "example.com"), "v1beta2", "w", "prod") == \
        "/apis/example.com/v1beta2/namespaces/prod/widgets/w"
    assert api_path(ResourceRef("clusterwidgets", "example.com"), "v1", "c") == "/apis/example.com/v1/clusterwidgets/c"


def test_the_crd_storage_version():
    from azext_kmsverify.verdict.resources import storage_version
    crd = {"spec": {"versions": [{"name": "v1", "served": True, "storage": False},
                                 {"name": "v2", "served": True, "storage": True}]}}
    assert storage_version(crd) == "v2"
    assert storage_version({"spec": {"versions": [{"name": "v1"}]}}) is None
    assert storage_version({}) is None and storage_version(None) is None
