# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""Every default and limit, in one place so help, validation and code agree (no imports: loaded at start-up)."""

from __future__ import annotations

# AKS Entra server application: the audience of kubelogin tokens when a kubeconfig names none.
AKS_ENTRA_SERVER_ID = '6dae42f8-4368-4678-94ff-3960e28e3630'
HYBRIDAKS_API_VERSION = '2024-01-01'
USER_AGENT = 'az-aksarc-kms-verify'

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
PROBE_PREFIX = 'kmsverify-probe-'
PROBE_LABEL = 'app.kubernetes.io/managed-by'
PROBE_LABEL_VALUE = 'kmsverify'
PROBE_DELETE_GRACE = 10  # seconds the probe's delete may take beyond --timeout (it runs on every way out)

ROTATION_DAYS = 30  # AKS Arc rotates the KMS key encryption key every 30 days.
PAGE_SIZE = 5000  # keys per etcdctl call at most; PAGE_BYTES sizes the pages (see etcd.reader.EtcdReader)
PAGE_BYTES = 4 * 1024 * 1024
METADATA_PAGE_SIZE = 500  # secrets per API list page when only metadata is read
TIMEOUT_SECONDS = 300
FAILING_SHOWN = 10  # failing secrets named in -o table before "and N more"

# Caps on what is read from the cluster: a broken or hostile server cannot exhaust the run.
BODY_MAX_BYTES = 64 * 1024 * 1024  # any API answer (pod lists, metadata pages, Status)
READYZ_MAX_BYTES = 1024 * 1024
EXEC_OUTPUT_MAX_BYTES = 256 * 1024 * 1024  # one etcdctl page (pages are kept near PAGE_BYTES)
ARM_POLL_SECONDS = 2  # between polls of an ARM long-running operation when it sends no Retry-After
METRICS_MAX_BYTES = 32 * 1024 * 1024

# Re-encryption (az aksarc kms reencrypt).
REENCRYPT_TIMEOUT_SECONDS = 3600
REENCRYPTED_ANNOTATION = 'kmsverify.aksarc/reencrypted-at'  # makes an unchanged KMS v1 write real
REENCRYPT_ONLY = ('all', 'plaintext', 'local-key', 'stale')
REENCRYPT_PARALLEL = 16  # rewrites in flight at once (bench: 184/s at 16, 147/s at 8, no more at 32)
REWRITE_ATTEMPTS = 5  # GET+PUT rounds per secret through 429s and conflicts
RETRY_AFTER_SECONDS = 1.0  # when a 429 names no Retry-After
# kube-apiserver's APF doubles its Retry-After (1, 2, 4, ... s) while it keeps rejecting, up to 32 s
# (maxRetryAfter, k8s.io/apiserver pkg/util/flowcontrol/dropped_requests_tracker.go); a longer one is cut to this.
RETRY_AFTER_MAX_SECONDS = 32.0
# A 429 (API Priority and Fairness rejected the request before doing anything) is retried this many times by
# every request but the rewrites, which honour and count their own (client-go's rest client retries 10 times).
THROTTLED_RETRIES = 10
METADATA_ONLY_ACCEPT = 'application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json'

# Fleets (verify --ids / --all-clusters).
RESOURCE_GRAPH_API_VERSION = '2022-10-01'
RESOURCE_GRAPH_PAGE = 1000
# Bounds on what Resource Graph may send, whatever it sends: rows (clusters) kept and pages read. Far above any
# fleet (a subscription holds at most a few thousand connected clusters), so reaching one is an error.
RESOURCE_GRAPH_MAX_ROWS = 50000
RESOURCE_GRAPH_MAX_PAGES = 100
MAX_PARALLEL = 8  # clusters verified at once
