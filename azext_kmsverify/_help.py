# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
# pylint: disable=line-too-long
# ruff: noqa: E501
"""Help text for ``az aksarc kms``."""

from knack.help_files import helps  # pylint: disable=unused-import

helps['aksarc kms'] = """
type: group
short-summary: Inspect KMS encryption at rest of an AKS on Azure Local (AKS Arc) cluster.
"""

helps['aksarc kms verify'] = """
type: command
short-summary: Prove that Kubernetes Secrets are encrypted at rest in etcd by the cluster's KMS plugin.
long-summary: >
    Gets credentials like `az aksarc get-credentials` (Entra ID token from your az login, no kubelogin needed;
    --admin for the certificate kubeconfig; or --kubeconfig), checks the KMS health checks of the API server
    (/readyz), then reads the raw values of the secrets from etcd by exec-ing etcdctl in the etcd pod (no shell,
    no TTY) and classifies each one: KMS v1/v2 with provider and key id, local-key providers, or plaintext.
    Nothing is decrypted and no secret value is ever printed or logged.

    Without --secret or --all-secrets a probe secret with a random name and value is created in
    --probe-namespace, verified and deleted again on every path out. --all-secrets alone is read-only.

    Exit codes: 0 every check passed; 4 the verification ran and found a problem (the full result is still
    printed); 1 could not verify (authentication, network, permission, etcdctl failure); 2 bad arguments;
    3 cluster, secret or etcd pod not found.

    Permissions: "Azure Kubernetes Service Arc Cluster User Role" (or "... Admin Role" with --admin) on the
    cluster, and Kubernetes RBAC for get and create on pods/exec in kube-system, list pods in kube-system, get secrets
    (and create/delete secrets in the probe namespace for the probe).
examples:
  - name: Verify a cluster with a probe secret, signed in with az (Entra ID).
    text: az aksarc kms verify --resource-group myResourceGroup --name myCluster -o table
  - name: Verify named secrets with the admin (certificate) kubeconfig.
    text: az aksarc kms verify -g myResourceGroup -n myCluster --admin --secret default/db-user-pass --secret prod/api-key
  - name: Scan every secret in etcd, fail on secrets under an old key, and write a JUnit report (pipelines).
    text: az aksarc kms verify -g myResourceGroup -n myCluster --all-secrets --fail-on-stale --junit-xml kms-results.xml -o json
  - name: Use an existing kubeconfig and context.
    text: az aksarc kms verify --kubeconfig ~/.kube/config --context my-cluster-admin --secret default/db-user-pass
  - name: Only print whether verification passed.
    text: az aksarc kms verify -g myResourceGroup -n myCluster --query passed
"""
