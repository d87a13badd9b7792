# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""Error helpers shared by every step. Light: imported at start-up by the validators.

The exit codes users rely on (README.md): 0 passed, 4 verified and found a problem, 1 could not verify,
2 bad arguments, 3 not found (az maps ``ResourceNotFoundError`` to 3 itself).
"""

from __future__ import annotations

EXIT_PASSED = 0
EXIT_COULD_NOT_VERIFY = 1
EXIT_BAD_ARGUMENTS = 2
EXIT_NOT_FOUND = 3
EXIT_VERIFICATION_FAILED = 4


def argument_error(error):
    """Mark an azclierror as a bad-argument error, which exits with code 2 like az's parser errors."""
    error.kmsverify_exit_code = EXIT_BAD_ARGUMENTS
    return error


def make(error_cls, message, recommendation=None):
    """Build an azclierror with a one-line message and a recommendation.

    By keyword: ``AuthenticationError``'s second positional parameter is ``msal_error``, not the recommendation.
    Both pass through the sanitiser (text.printable): a message may quote a peer (an API server's Status, ARM's or
    Entra's error, etcdctl's stderr), and no control or format character reaches the terminal.
    """
    from azext_kmsverify.text import printable
    if isinstance(recommendation, str):  # its own line breaks kept, anything else escaped
        recommendation = '\n'.join(printable(line) for line in recommendation.split('\n'))
    return error_cls(printable(' '.join(str(message).split())), recommendation=recommendation)


def exit_with(error):
    """Print ``error`` the way az does and exit with its own code (used for code 2, which az cannot set)."""
    error.print_error()
    error.send_telemetry()
    raise SystemExit(getattr(error, 'kmsverify_exit_code', EXIT_COULD_NOT_VERIFY))
