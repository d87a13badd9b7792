# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""The exit code of a run that printed its result: 4 when it found a problem, 1 when its report could not be
written (README "Exit codes"), after az printed the result."""

from __future__ import annotations

from azext_kmsverify.errors import EXIT_COULD_NOT_VERIFY, EXIT_VERIFICATION_FAILED


def exit_code(result, could_not_report=False):
    if not result.get('passed'):
        return EXIT_VERIFICATION_FAILED
    return EXIT_COULD_NOT_VERIFY if could_not_report else 0


def exit_nonzero_after_output(cli_ctx, result, could_not_report=False):
    """Make az exit non-zero after printing the result.

    A command's return value cannot set the exit code; knack prints the result (honouring -o and --query)
    and then raises EVENT_CLI_SUCCESSFUL_EXECUTE, so a one-shot handler of that event exits.
    """
    exit_after_output(cli_ctx, exit_code(result, could_not_report))


def exit_after_output(cli_ctx, code: int) -> None:
    """Exit with ``code`` (if not 0) once az has printed the result."""
    if not code:
        return
    from knack.events import EVENT_CLI_SUCCESSFUL_EXECUTE

    def _exit(_cli_ctx, **_kwargs):
        cli_ctx.unregister_event(EVENT_CLI_SUCCESSFUL_EXECUTE, _exit)
        raise SystemExit(code)

    cli_ctx.register_event(EVENT_CLI_SUCCESSFUL_EXECUTE, _exit)
