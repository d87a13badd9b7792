# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""Command table. Kept free of heavy imports: ``az`` loads it on every relevant call."""

from __future__ import annotations

from azext_kmsverify._validators import validate_reencrypt, validate_status, validate_verify
from azext_kmsverify.report.table import reencrypt_table_format, status_table_format, verify_table_format


def load_command_table(self, _):
    # The ``aksarc`` group belongs to the aksarc extension; command tables merge, so only the
    # ``kms`` subgroup is ours.
    # Not marked is_preview: that prints a warning on stderr on every run, which pipelines with
    # failOnStandardError treat as failure. The extension itself is marked preview (azext_metadata.json).
    with self.command_group('aksarc kms') as g:
        g.custom_command('verify', 'verify_kms', validator=validate_verify, table_transformer=verify_table_format)
        g.custom_command('reencrypt', 'reencrypt_kms', validator=validate_reencrypt,
                         table_transformer=reencrypt_table_format)
        g.custom_command('status', 'status_kms', validator=validate_status, table_transformer=status_table_format)
