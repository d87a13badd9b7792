"""The run frame (operations/run.py) and the exit-code table (errors.py): steps, one-line failures, outcomes,
report writers, the run's deadline and its children."""

import time

import pytest
from azure.cli.core.azclierror import (
    AzureConnectionError,
    CLIInternalError,
    InvalidArgumentValueError,
    ResourceNotFoundError,
    ValidationError,
)

from azext_kmsverify import errors
from azext_kmsverify.errors import argument_error, exit_code, own_exit_code
from azext_kmsverify.operations import run as frame
from azext_kmsverify.options import VerifyOptions


class _Ctx:
    only_show_errors = False

    def __init__(self):
        self.events = []

    def register_event(self, name, handler):
        self.events.append((name, handler))

    def unregister_event(self, name, handler):
        self.events.remove((name, handler))


def _run(**options):
    return frame.Run(_Ctx(), VerifyOptions(**options))


@pytest.mark.parametrize('ends, code', [
    (['passed'], 0), (['failed'], 4), (['couldNotVerify'], 1), (['notVerifiable'], 1),
    (['passed', 'couldNotReport'], 1), (['failed', 'couldNotReport'], 1), (['failed', 'passed'], 4), ([], 0)])
def test_the_worst_outcome_wins(ends, code):
    assert exit_code(*ends) == code


def test_error_classes_map_to_codes_in_one_table():
    assert exit_code(ResourceNotFoundError('x')) == 3
    assert exit_code(AzureConnectionError('x')) == 1
    assert exit_code(ValueError('x')) == 1
    bad = argument_error(InvalidArgumentValueError('wrong', recommendation='fix it'))
    assert exit_code(bad) == 2 and own_exit_code(bad)
    assert not own_exit_code(ResourceNotFoundError('x')) and not own_exit_code(AzureConnectionError('x'))
    # the same class for az and its telemetry, the message and recommendation kept, no attribute added
    assert isinstance(bad, InvalidArgumentValueError) and type(bad).__name__ == 'InvalidArgumentValueError'
    assert bad.error_msg == 'wrong' and bad.recommendations == ['fix it']
    assert not hasattr(bad, 'kmsverify_exit_code')
    assert type(argument_error(ValidationError('a'))) is type(argument_error(ValidationError('b')))


def test_a_failure_names_the_innermost_step_and_never_the_exceptions_text():
    run = _run()
    with pytest.raises(KeyError):
        with run.step('signing in'):
            with run.step('loading the kubeconfig'):
                raise KeyError('a-token-value')
    error = run.as_error(KeyError('a-token-value'))
    assert isinstance(error, CLIInternalError)
    assert error.error_msg == 'kmsverify failed unexpectedly while loading the kubeconfig (KeyError).'
    assert 'a-token-value' not in error.error_msg
    assert run.one_line(AzureConnectionError('Could not reach it.')) == 'Could not reach it.'


def test_steps_nest_and_unwind():
    run = _run()
    with run.step('a'):
        with run.step('b'):
            assert run.current_step == 'b'
        assert run.current_step == 'a'
    assert run.current_step == 'starting'


def test_the_run_owns_one_deadline_and_cancels_its_children():
    run = _run(timeout=30)
    child = run.child(VerifyOptions(timeout=30))
    assert child.deadline is not run.deadline and not child.show_progress
    assert run.session(run.options.cluster, run.options.etcd).deadline is run.deadline
    run.cancel()
    assert run.deadline.expired() and child.deadline.expired()


def test_outcome_of_results():
    assert frame.outcome_of({'passed': True}) == 'passed'
    assert frame.outcome_of({'passed': False}) == 'failed'
    assert frame.outcome_of({'passed': False, 'clusters': []}) == 'notFound'  # nothing verified: exit 3
    assert exit_code('notFound') == 3 and exit_code('notFound', 'failed') == 3
    missing = {'passed': False, 'checks': [{'name': 'SecretEncryptedWithKms', 'status': 'Passed'},
                                           {'name': 'SecretFound', 'status': 'Failed'}]}
    assert frame.outcome_of(missing) == 'notFound'
    assert frame.outcome_of({'clusters': [{'outcome': 'failed'}, {'outcome': 'notVerifiable'}]}) == 'notVerifiable'


def test_every_report_writer_gets_the_result_and_a_failure_to_write_exits_1(monkeypatch, tmp_path):
    written = []
    monkeypatch.setattr(frame, 'REPORTS', frame.REPORTS + (frame.Report('report_x', lambda p, r: written.append((p, r)),
                                                                         'X report'),))
    ctx = _Ctx()

    class Options(VerifyOptions):
        report_x = 'out.x'
    run = frame.Run(ctx, Options(junit_xml=str(tmp_path / 'no-such-dir' / 'r.xml')))
    result = run.finish({'passed': True, 'checks': []})
    assert written == [('out.x', result)]
    assert len(ctx.events) == 1  # exit 1 after output: the JUnit report could not be written
    with pytest.raises(SystemExit) as ended:
        ctx.events[0][1](ctx)
    assert ended.value.code == 1


def test_a_passed_run_exits_0_without_a_handler():
    ctx = _Ctx()
    frame.Run(ctx, VerifyOptions()).finish({'passed': True})
    assert ctx.events == []


def test_the_table_is_the_only_policy():
    assert [code for _, code in errors.EXIT_CODES].count(4) == 1


def test_the_result_passes_the_sanitiser_once_at_the_edge_before_az_and_the_reports(monkeypatch):
    written = []
    monkeypatch.setattr(frame, 'REPORTS', (frame.Report('junit_xml', lambda p, r: written.append(r), 'JUnit'),))
    run = frame.Run(_Ctx(), VerifyOptions(junit_xml='r.xml'))
    result = run.finish({'passed': True, 'keyId': 'k\x1b[2J\u2028\x9b', 'checks': [{'name': 'n\u202e'}]})
    assert result['keyId'] == 'k\\x1b[2J\\u2028\\x9b' and result['checks'][0]['name'] == 'n\\u202e'
    assert written == [result]


def test_the_first_signal_cancels_the_run_and_is_raised_as_an_interrupt():
    import os
    import signal
    run = _run(timeout=60)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with run.interrupts():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100):
                time.sleep(0.01)
    assert run.deadline.fired and run.deadline.expired()
    assert signal.getsignal(signal.SIGTERM) is before


def test_reencrypt_keeps_its_deadline_on_the_first_signal():
    import os
    import signal
    run = _run(timeout=60)
    with pytest.raises(KeyboardInterrupt):
        with run.interrupts(cancel=False):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(100):
                time.sleep(0.01)
    assert not run.deadline.fired and not run.deadline.expired()
