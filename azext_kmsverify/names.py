# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""Kubernetes names, the one place their rules live (apimachinery's ``validation``). Light and pure."""

from __future__ import annotations

import re

# A DNS-1123 label (a namespace: at most 63 characters) and subdomain (a secret's name: at most 253).
LABEL = re.compile(r'[a-z0-9]([-a-z0-9]*[a-z0-9])?')
SUBDOMAIN = re.compile(r'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')


def is_namespace(value: str) -> bool:
    return len(value) <= 63 and bool(LABEL.fullmatch(value))


def is_secret_name(value: str) -> bool:
    return len(value) <= 253 and bool(SUBDOMAIN.fullmatch(value))
