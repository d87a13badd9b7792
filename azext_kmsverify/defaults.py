# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""Defaults shared by arguments, validation and the command (no imports: loaded at start-up)."""

# AKS Entra server application: the audience of kubelogin tokens for AKS and AKS Arc clusters.
AKS_ENTRA_SERVER_ID = '6dae42f8-4368-4678-94ff-3960e28e3630'
HYBRIDAKS_API_VERSION = '2024-01-01'

# kubeadm-style etcd static pod, as on AKS on Azure Local nodes.
ETCD_NAMESPACE = 'kube-system'
ETCD_LABEL_SELECTOR = 'component=etcd'
ETCD_POD_PREFIX = 'etcd-'
ETCD_CONTAINER = 'etcd'
ETCD_ENDPOINT = 'https://127.0.0.1:2379'
ETCD_CACERT = '/etc/kubernetes/pki/etcd/ca.crt'
ETCD_CERT = '/etc/kubernetes/pki/etcd/server.crt'
ETCD_KEY = '/etc/kubernetes/pki/etcd/server.key'
ETCD_SECRETS_PREFIX = '/registry/secrets/'

PROBE_NAMESPACE = 'default'
ROTATION_DAYS = 30  # AKS Arc rotates the KMS key encryption key every 30 days.
PAGE_SIZE = 5000  # keys per etcdctl call at most; PAGE_BYTES sizes the pages (see etcd.EtcdReader)
PAGE_BYTES = 4 * 1024 * 1024
TIMEOUT_SECONDS = 300
