# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""Exit code 4 for a verification that ran and found a problem, after az printed the result."""

from azext_kmsverify.errors import EXIT_VERIFICATION_FAILED


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
