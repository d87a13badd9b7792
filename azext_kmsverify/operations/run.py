# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""The frame of one command run, shared by every command: the step being run, the one handler that turns any
failure into one line, the deadline (``--timeout``), the cluster session, interrupts, the progress bar, the
reports and the exit code. A command is a body that takes the :class:`Run`::

    def main(cli_ctx, options):
        return Run(cli_ctx, options).execute(body)

    def body(run):
        with run.session(run.options.cluster, run.options.etcd) as session:   # signs in, builds the client once
            with run.step('reading /readyz'):                                  # names the step for a failure
                ...
            return result                                                      # a dict: what az prints

``execute`` writes every report asked for (:data:`REPORTS`), then sets the exit code from the result's
outcome (``errors.EXIT_CODES``) after az printed it; a failure is raised as az reports it, in one line.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from azure.cli.core.azclierror import AzCLIError, CLIInternalError, FileOperationError
from knack.log import get_logger

from azext_kmsverify.deadline import GRACE_SECONDS, Deadline
from azext_kmsverify.errors import (
    COULD_NOT_REPORT,
    COULD_NOT_VERIFY,
    FAILED,
    NOT_FOUND,
    NOT_VERIFIABLE,
    PASSED,
    exit_code,
    exit_with,
    make,
    own_exit_code,
)
from azext_kmsverify.kube.probe import leftover_hint
from azext_kmsverify.operations.session import ClusterSession
from azext_kmsverify.report.contract import envelope
from azext_kmsverify.report.junit import write_junit_xml
from azext_kmsverify.report.sarif import write_sarif
from azext_kmsverify.text import printable, sanitise, sanitise_log_handlers
from azext_kmsverify.verdict import checks as rules

logger = get_logger(__name__)


@dataclass(frozen=True)
class Report:
    """A report a run writes when its option names a file: ``write(path, result)``, the result being the dict az
    prints (or, when the run could not verify, a one-check result saying why)."""

    option: str  # the options field (and, with dashes, the argument) that names the file: junit_xml, --junit-xml
    write: Callable[[str, dict], None]
    what: str  # for messages: 'JUnit report'

    @property
    def hint(self) -> str:
        return f"Give --{self.option.replace('_', '-')} a path in a writable folder."


# Every report format. Adding one is one line here (and its option in _params.py, options.py, _validators.py).
REPORTS = (
    Report('junit_xml', write_junit_xml, 'JUnit report'),
    Report('sarif', write_sarif, 'SARIF report'),
)


class Run:  # pylint: disable=too-many-instance-attributes  # the state of one run, in one place
    """One command run. ``options`` is the command's frozen options (``options.py``); ``deadline`` is the run's
    one ``Deadline`` of ``--timeout``: every wait of the run (the session's, a fleet's clusters' through
    :meth:`child`) is bounded by it or by one of its children, and :meth:`cancel` ends them all."""

    def __init__(self, cli_ctx, options, *, progress: bool = True, deadline: Deadline | None = None):
        self.cli_ctx = cli_ctx
        self.options = options
        self.deadline = deadline or Deadline(options.timeout)
        self.started_at = datetime.now(timezone.utc)
        self._started = time.monotonic()
        self.show_progress = progress
        self._step = 'starting'
        self._failed_step = None
        self._children: list[Run] = []
        self._lock = threading.Lock()
        self._signals: list[int] = []  # the signals received, shared by nested interrupts() scopes
        self._incomplete = False

    # --- steps and failures -------------------------------------------------------------------------------

    @contextmanager
    def step(self, name: str):
        """``with run.step('reading /readyz'):``, the step a failure inside names."""
        previous, self._step = self._step, name
        try:
            yield
        except BaseException:
            self._failed_step = self._failed_step or name
            raise
        finally:
            self._step = previous

    @property
    def current_step(self) -> str:
        return self._failed_step or self._step

    def one_line(self, error: BaseException) -> str:
        """What went wrong, in one line: an azclierror's message, else the step and the exception's type only
        (an unknown exception's text may carry what it was handed: a token, a file's content)."""
        if isinstance(error, AzCLIError):
            return error.error_msg
        return f'failed unexpectedly while {self.current_step} ({type(error).__name__})'

    def as_error(self, error: BaseException) -> AzCLIError:
        if isinstance(error, AzCLIError):
            return error
        return make(CLIInternalError, f'kmsverify {self.one_line(error)}.',
                    'Retry with --debug for the step; please report it at '
                    'https://github.com/Azure/azure-cli-extensions/issues.')

    # --- what a body uses ---------------------------------------------------------------------------------

    def session(self, cluster, etcd, signed_in=None) -> ClusterSession:
        """The cluster session of this run (a context manager): signs in, builds the API client, the etcd exec and
        the etcd reader once, each under its step, all bounded by this run's deadline."""
        return ClusterSession(self.cli_ctx, cluster, etcd, self.deadline, step=self.step, signed_in=signed_in)

    def child(self, options) -> Run:
        """A run inside this one (a fleet's cluster): its own deadline of ``options.timeout``, no progress bar,
        no reports; cancelled with this run."""
        child = Run(self.cli_ctx, options, progress=False)
        with self._lock:
            self._children.append(child)
        return child

    def cancel(self) -> None:
        """End every wait of this run and of its children now (Ctrl-C, SIGTERM)."""
        with self._lock:
            children = list(self._children)
        self.deadline.cancel()
        for child in children:
            child.cancel()

    @contextmanager
    def interrupts(self, cancel: bool = True):
        """The one signal hook of a run (main thread only; nested scopes share it). The first SIGINT or SIGTERM
        ends every wait of the run (:meth:`cancel`, unless ``cancel`` is False: reencrypt finishes the rewrites in
        flight and proves them) and is raised as a ``KeyboardInterrupt``: the run ends within
        ``deadline.GRACE_SECONDS`` (a probe's delete on the way out holds it, bounded by its own grace). A second
        ends the process at once, saying that a probe may be left and how to find it."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def _signal(signum, _frame):
            self._signals.append(signum)
            if len(self._signals) > 1:
                sys.stderr.write(f'Stopped at once: {leftover_hint()}\n')
                sys.stderr.flush()
                os._exit(128 + signum)  # pylint: disable=protected-access  # at once: nothing may wait any more
            logger.warning('Interrupted: ending the run (at most %s s); interrupt again to stop now.', GRACE_SECONDS)
            if cancel:
                self.cancel()
            raise KeyboardInterrupt

        previous = {sig: signal.signal(sig, _signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def incomplete(self) -> None:
        """The result will be printed but the run could not finish (a server failure mid-way): exit 1."""
        self._incomplete = True

    @contextmanager
    def progress(self, message: str):
        """az's progress bar, only for a person watching (stderr a terminal, not --only-show-errors, not a
        fleet's cluster): ``with run.progress('Reading') as bar: bar(value, total, message)``."""
        if not self.show_progress or not sys.stderr.isatty() or self.cli_ctx.only_show_errors:
            yield _no_progress
            return
        controller = self.cli_ctx.get_progress_controller(det=True)
        controller.begin(message=message)
        try:
            yield lambda value, total, text: controller.add(message=text, value=value, total_val=total)
        finally:
            controller.end()

    # --- the way out --------------------------------------------------------------------------------------

    def execute(self, body) -> dict:
        """``body(self)``'s result, reported; or its failure, as az reports it (with a report saying why)."""
        sanitise_log_handlers(logging.getLogger())  # stderr, --debug and az's command log pass the sanitiser
        try:
            with self.interrupts():
                result = body(self)
        except Exception as ex:  # pylint: disable=broad-except  # every failure leaves in one line
            self.fail(self.as_error(ex))
        return self.finish(result)

    @property
    def command(self) -> str:
        """The command's name, from its options' class (``VerifyOptions``: verify)."""
        return type(self.options).__name__.removesuffix('Options').lower()

    def contract(self, result: dict) -> dict:
        """``result`` with the contract's fields (``contract.py``): what every command's JSON carries."""
        return envelope(result, command=self.command, started=self.started_at, finished=datetime.now(timezone.utc),
                        seconds=time.monotonic() - self._started)

    def finish(self, result: dict) -> dict:
        """Write the reports (one that cannot be written is an error line, and the run exits 1), then exit with
        the code of the result's outcome once az printed it. The result passes the sanitiser here, once, before
        az formats it and before the report writers (JSON then holds escape text, never a raw control)."""
        result = sanitise(self.contract(result))
        ends = [outcome_of(result)] + ([COULD_NOT_VERIFY] if self._incomplete else [])
        for report, path in self.reports():
            try:
                _write(report, path, result)
            except AzCLIError as error:
                logger.error('%s %s', error.error_msg, report.hint)
                ends.append(COULD_NOT_REPORT)
        exit_after_output(self.cli_ctx, exit_code(*ends))
        return result

    def reports(self) -> list[tuple[Report, str]]:
        """The reports this run's options ask for, with their paths."""
        return [(r, getattr(self.options, r.option)) for r in REPORTS if getattr(self.options, r.option, None)]

    def fail(self, error: AzCLIError):
        """Raise ``error`` as az reports it; a pipeline asking for reports still gets them, saying why."""
        failure = self.contract(rules.build_result(None, [rules.check('Verification', rules.FAILED,
                                                                      'could not verify: ' + error.error_msg)], []))
        for report, path in self.reports():
            try:
                report.write(path, failure)
            except Exception:  # pylint: disable=broad-except
                logger.warning('Could not write the %s to %s.', report.what, printable(path))
        if own_exit_code(error):
            exit_with(error)
        raise error from None


def outcome_of(result: dict) -> str:
    """The outcome of a result: a fleet's worst cluster outcome (not found when it has no cluster: nothing was
    verified), else passed or failed."""
    clusters = result.get('clusters')
    if isinstance(clusters, list):
        if not clusters:
            return NOT_FOUND
        outcomes = {c.get('outcome') for c in clusters}
        return next((worst for worst in (COULD_NOT_VERIFY, NOT_VERIFIABLE, FAILED) if worst in outcomes), PASSED)
    if any(c.get('name') == rules.SECRET_FOUND and c.get('status') == rules.FAILED
           for c in result.get('checks') or () if isinstance(c, dict)):
        return NOT_FOUND  # a named secret is missing: exit 3, the result (with what was verified) printed
    return PASSED if result.get('passed') else FAILED


def _no_progress(_value, _total, _text):
    return None


def _write(report: Report, path: str, result: dict) -> None:
    try:
        report.write(path, result)
    except OSError as ex:
        raise make(FileOperationError, f"Could not write the {report.what} '{printable(path)}': "
                                       f'{ex.strerror or type(ex).__name__}.') from None


def exit_after_output(cli_ctx, code: int) -> None:
    """Exit with ``code`` (if not 0) once az has printed the result.

    A command's return value cannot set the exit code; knack prints the result (honouring -o and --query)
    and then raises EVENT_CLI_SUCCESSFUL_EXECUTE, so a one-shot handler of that event exits.
    """
    if not code:
        return
    from knack.events import EVENT_CLI_SUCCESSFUL_EXECUTE

    def _exit(_cli_ctx, **_kwargs):
        cli_ctx.unregister_event(EVENT_CLI_SUCCESSFUL_EXECUTE, _exit)
        raise SystemExit(code)

    cli_ctx.register_event(EVENT_CLI_SUCCESSFUL_EXECUTE, _exit)
