"""The sandbox's child processes and their helpers: spawning and stopping (proc), real etcd (etcdproc), the KMS
plugin process and its gRPC client (kms_plugin, kms_client, protos)."""
