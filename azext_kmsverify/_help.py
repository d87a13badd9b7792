# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
# pylint: disable=line-too-long  # help text is YAML prose: its lines are not wrapped
# ruff: noqa: E501
"""Help text for ``az aksarc kms``."""

from __future__ import annotations

from knack.help_files import helps

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
    --probe-namespace, verified and deleted again on every path out (Ctrl-C and SIGTERM included). Only SIGKILL
    can leave one behind; find leftovers with `kubectl get secrets -A -l app.kubernetes.io/managed-by=kmsverify`
    and delete them with `kubectl delete secrets -n NAMESPACE -l app.kubernetes.io/managed-by=kmsverify`.
    --all-secrets alone is read-only.

    Several clusters: --ids or --all-clusters (Azure Resource Graph), each verified as one -g/-n run,
    --max-parallel at a time; exit code from the worst outcome (1 before 4 before 0); --shard I/N for parallel
    pipeline jobs.

    Exit codes: 0 every check passed; 4 the verification ran and found a problem (the full result is still
    printed); 1 could not verify (authentication, network, permission, etcdctl failure); 2 bad arguments;
    3 cluster, secret or etcd pod not found.

    Permissions: "Azure Kubernetes Service Arc Cluster User Role" (or "... Admin Role" with --admin) on the
    cluster, and Kubernetes RBAC for get and create on pods/exec in kube-system, list pods in kube-system, get secrets
    (and create/delete secrets in the probe namespace for the probe). They are asked first (SelfSubjectAccessReview):
    a missing one stops the run before anything is written or exec'd, naming verb, resource and namespace;
    `az aksarc kms status` prints the Role/ClusterRole that grants them.

    --all-secrets on KMS v2 also dates the current key from etcd (the earliest secret written once under it) and
    warns (KmsKeyRotation; a failure with --fail-on-stale) when it is older than --rotation-days plus 7 days.
    KMS v1 in use is a KmsV1Deprecated warning; a failure with --fail-on-kms-v1.
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

helps['aksarc kms status'] = """
type: command
short-summary: Show what the API server says of its KMS encryption, and what this identity may run. Reads only.
long-summary: >
    Signs in as verify does, then reads /readyz (the KMS health checks, with each failing check's reason),
    /metrics (providers and KMS versions, the current KMS v2 key id hash and when it was last used and reported,
    automatic reload), who this identity is (SelfSubjectReview) and what it may do (SelfSubjectAccessReview) for
    verify, verify --all-secrets, reencrypt and status. Each fact says where it came from, or why it is unknown
    (forbidden, not served, not published). It never execs into a pod and never writes: an identity that can read
    only /readyz gets the health and an answer for everything else.

    For each command the identity cannot run, the result names each missing permission (verb, resource,
    namespace) and leastPrivilegeGrant holds the Role/ClusterRole and bindings that would grant exactly those
    (-o json, or --query leastPrivilegeGrant -o tsv | kubectl apply -f -, reviewed first).

    KmsKeyRotation from /metrics alone can only bound the current key's age by the API server's uptime: it is a
    warning when that bound exceeds --rotation-days plus 7 days of grace (a failure with --fail-on-stale), else
    Skipped with why; verify --all-secrets dates the key from etcd. KMS v1 in use is a KmsV1Deprecated warning
    (a failure with --fail-on-kms-v1).

    Several clusters: --ids or --all-clusters, one row per cluster (health, KMS version, key age, missing
    permissions). Exit codes as verify's: 0 passed, 4 a check failed, 1 could not read the cluster, 2 bad
    arguments, 3 not found.
examples:
  - name: Status of a cluster, as a table.
    text: az aksarc kms status -g myResourceGroup -n myCluster -o table
  - name: Print the least-privilege RBAC this identity lacks.
    text: az aksarc kms status -g myResourceGroup -n myCluster --query leastPrivilegeGrant -o tsv
  - name: KMS posture of every cluster, failing on KMS v1 and on a stalled key rotation.
    text: az aksarc kms status --all-clusters --fail-on-kms-v1 --fail-on-stale --junit-xml kms-status.xml -o table
"""

helps['aksarc kms reencrypt'] = """
type: command
short-summary: Rewrite the secrets that are not stored with KMS under the current key, and prove it from etcd.
long-summary: >
    Plans from etcd exactly as `verify --all-secrets` scans: the targets are secrets in plaintext, under a local
    key, under an older KMS v2 key id, or (KMS v1) last written before the last key rotation. The current KMS v2
    key is read from the API server's /metrics (key id hashes), else taken from the latest write.
    Each target is read through the API and written back unchanged with its resourceVersion as precondition, so
    nothing is lost: a concurrent change gives 409 and the secret is read again. KMS v1 values are not stale after a
    key rotation, so kube-apiserver would skip an unchanged write: for them the annotation
    kmsverify.aksarc/reencrypted-at (the time of the rewrite) is added, and nothing else changes. Finally every
    rewritten key is read again from etcd and must be stored with KMS under the current key.

    --dry-run shows the plan and writes nothing. Otherwise a person at a terminal confirms first; without a
    terminal, pass --yes. 429 answers (API Priority and Fairness) are honoured. Ctrl-C or SIGTERM stops after
    the writes in flight. A re-run picks only what is still not current.

    Exit codes: 0 every target is verified current (or there was none); 4 some remain, or --dry-run found
    targets (listed); 1 could not run; 2 bad arguments.

    Permissions: get, list and update secrets in all namespaces; get on the non-resource URL /metrics (optional);
    get and create on pods/exec in kube-system and list pods there (to read etcd).
examples:
  - name: Show what would be rewritten.
    text: az aksarc kms reencrypt -g myResourceGroup -n myCluster --dry-run -o table
  - name: Rewrite everything verify --all-secrets flags, without a prompt (pipelines), then verify.
    text: az aksarc kms reencrypt -g myResourceGroup -n myCluster --yes --junit-xml reencrypt.xml && az aksarc kms verify -g myResourceGroup -n myCluster --all-secrets --fail-on-stale
  - name: Only plaintext leftovers in two namespaces, at most 50 writes a second.
    text: az aksarc kms reencrypt --kubeconfig ~/.kube/config --only plaintext --namespace legacy --namespace apps --max-per-second 50 --yes
"""
