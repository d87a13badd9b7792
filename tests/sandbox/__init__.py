"""A local AKS-Arc-like control plane for tests, the bench and the demo (see README.md here).

Real etcd and etcdctl, a KMS plugin process, and emulators of the Kubernetes API server and of Azure Resource
Manager. Start one with :class:`tests.sandbox.control.Sandbox` or ``python -m tests.sandbox up --dir DIR``.
"""
