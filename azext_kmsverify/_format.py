# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""Step 6, presentation: the ``-o table`` view and the exit code. Light: loaded with the command table."""

from collections import OrderedDict

from azext_kmsverify.errors import EXIT_VERIFICATION_FAILED


def verify_table_format(result):
    """One readable row per check (az does not apply this with --query)."""
    rows = []
    for item in result.get('checks') or []:
        rows.append(OrderedDict([('Check', item.get('name')), ('Target', item.get('target') or ''),
                                 ('Status', item.get('status')), ('Detail', item.get('detail') or '')]))
    scan = result.get('scan')
    if scan:
        rows.append(OrderedDict([('Check', 'Scan'), ('Target', '/registry/secrets/'),
                                 ('Status', 'Info'), ('Detail', scan_summary(scan))]))
    return rows


def scan_summary(scan):
    parts = ['{} secrets'.format(scan.get('total', 0))]
    for label, counts in (('storage', scan.get('byStorage')), ('KMS', scan.get('byKmsVersion'))):
        if counts:
            parts.append('{}: {}'.format(label, ', '.join('{} {}'.format(v, k) for k, v in sorted(counts.items()))))
    failing = scan.get('failing') or []
    parts.append('{} not KMS-encrypted'.format(len(failing)))
    return '; '.join(parts)


def exit_nonzero_after_output(cli_ctx, result):
    """Make az exit 4 after printing a failed result.

    A command's return value cannot set the exit code; knack prints the result (honouring -o and --query)
    and then raises EVENT_CLI_SUCCESSFUL_EXECUTE, so a one-shot handler of that event exits 4.
    """
    if result.get('passed'):
        return
    from knack.events import EVENT_CLI_SUCCESSFUL_EXECUTE

    def _exit(_cli_ctx, **_kwargs):
        cli_ctx.unregister_event(EVENT_CLI_SUCCESSFUL_EXECUTE, _exit)
        raise SystemExit(EXIT_VERIFICATION_FAILED)

    cli_ctx.register_event(EVENT_CLI_SUCCESSFUL_EXECUTE, _exit)
