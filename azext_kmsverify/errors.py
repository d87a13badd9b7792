# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""One-line errors and the exit-code policy, in one table (as etcdctl's). Light: imported at start-up by the
validators.

The exit codes users rely on (README.md "Exit codes"): 0 passed, 4 verified and found a problem, 1 could not
verify, 2 bad arguments, 3 not found. A run's outcome and an error's class both map to a code through
:data:`EXIT_CODES`; when several apply (a fleet's clusters, a report that could not be written), the worst wins:
1 before 4 before 0 (:data:`WORST_FIRST`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the validators import this module while az loads the command table: azure.cli stays out
    from azure.cli.core.azclierror import AzCLIError

EXIT_PASSED = 0
EXIT_COULD_NOT_VERIFY = 1
EXIT_BAD_ARGUMENTS = 2
EXIT_NOT_FOUND = 3
EXIT_VERIFICATION_FAILED = 4

# A run's outcome (and a fleet cluster's).
PASSED, FAILED, COULD_NOT_VERIFY, NOT_VERIFIABLE = 'passed', 'failed', 'couldNotVerify', 'notVerifiable'
COULD_NOT_REPORT = 'couldNotReport'  # the result was printed, a report (--junit-xml) could not be written
NOT_FOUND = 'notFound'  # the result was printed, but something it was asked about was not found (nothing verified)


class BadArguments:  # pylint: disable=too-few-public-methods  # a marker: the class says "exit 2"
    """Mixed into an azclierror class (by :func:`argument_error`): the arguments are wrong, exit 2."""


class AzError:  # pylint: disable=too-few-public-methods  # a table key
    """An azclierror class named in :data:`EXIT_CODES`, imported when a run ends, not when az loads the command
    table."""

    def __init__(self, name: str):
        self.name = name

    def matches(self, end) -> bool:
        from azure.cli.core import azclierror
        return isinstance(end, getattr(azclierror, self.name))


# Every exit code, and what earns it: outcomes first, then error classes (the first that matches wins).
EXIT_CODES = (
    (PASSED, EXIT_PASSED),
    (FAILED, EXIT_VERIFICATION_FAILED),
    (COULD_NOT_VERIFY, EXIT_COULD_NOT_VERIFY),
    (NOT_VERIFIABLE, EXIT_COULD_NOT_VERIFY),
    (COULD_NOT_REPORT, EXIT_COULD_NOT_VERIFY),
    (NOT_FOUND, EXIT_NOT_FOUND),
    (BadArguments, EXIT_BAD_ARGUMENTS),
    (AzError('ResourceNotFoundError'), EXIT_NOT_FOUND),
    (BaseException, EXIT_COULD_NOT_VERIFY),
)
WORST_FIRST = (EXIT_COULD_NOT_VERIFY, EXIT_VERIFICATION_FAILED, EXIT_PASSED)


def exit_code(*ends) -> int:
    """The exit code of a run that ended in ``ends`` (outcomes and/or exceptions): the worst one's."""
    codes = set()
    for end in ends:
        for key, code in EXIT_CODES:
            if (end == key if isinstance(key, str) else
                    key.matches(end) if isinstance(key, AzError) else isinstance(end, key)):
                codes.add(code)
                break
    for code in (EXIT_BAD_ARGUMENTS, EXIT_NOT_FOUND) + WORST_FIRST:
        if code in codes:
            return code
    return EXIT_PASSED


def own_exit_code(error: AzCLIError) -> bool:
    """Whether ``error`` exits with a code az would not give it (az gives 3 to ResourceNotFoundError, else 1)."""
    from azure.cli.core.azclierror import ResourceNotFoundError
    return exit_code(error) != (EXIT_NOT_FOUND if isinstance(error, ResourceNotFoundError) else EXIT_COULD_NOT_VERIFY)


_ARGUMENT_CLASSES: dict = {}


def argument_error(error: AzCLIError) -> AzCLIError:
    """``error`` as a bad-argument error (exit 2, like az's parser errors): the same azclierror class, with the
    :class:`BadArguments` marker mixed in (its name unchanged, so az's telemetry sees the same error type)."""
    cls = type(error)
    if not issubclass(cls, BadArguments):
        cls = _ARGUMENT_CLASSES.setdefault(cls, type(cls.__name__, (cls, BadArguments), {}))
    return cls(error.error_msg, recommendation=list(error.recommendations))


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
    """Print ``error`` the way az does and exit with its code from :data:`EXIT_CODES` (az cannot set 2)."""
    error.print_error()
    error.send_telemetry()
    raise SystemExit(exit_code(error))
