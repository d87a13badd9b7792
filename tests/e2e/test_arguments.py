"""Bad input: the right azclierror, one line saying what is wrong, a recommendation, exit code 2, no traceback."""

import pytest


def _assert_clean_error(result, code, message, recommendation):
    assert result.code == code, result
    assert 'Traceback' not in result.output, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith('ERROR: ')]
    assert len(errors) == 1, result
    assert message in errors[0], result
    following = lines[lines.index(errors[0]) + 1:]
    assert following and recommendation in following[0], result


@pytest.mark.parametrize('args, message, recommendation', [
    ([], 'No cluster given.', '--resource-group and --name'),
    (['-g', 'rg'], '--name is required with --resource-group.', 'Give both'),
    (['-n', 'c'], '--resource-group is required with --name.', 'Give both'),
    (['-g', 'rg', '-n', 'c', '--kubeconfig', '/etc/hostname'], '--kubeconfig cannot be used with',
     'Either fetch credentials'),
    (['-g', 'rg', '-n', 'c', '--context', 'x'], '--context applies only to --kubeconfig', 'Drop --context'),
    (['--kubeconfig', '/etc/hostname', '--admin'], '--admin applies only to', 'Drop --admin'),
    (['-g', 'rg', '-n', 'c', '--secret', 'justaname'], "--secret 'justaname' is not NAMESPACE/NAME.",
     'NAMESPACE/NAME'),
    (['-g', 'rg', '-n', 'c', '--secret', 'a/b/c'], 'is not NAMESPACE/NAME', 'NAMESPACE/NAME'),
    (['-g', 'rg', '-n', 'c', '--secret', 'Bad_NS/x'], "'Bad_NS' is not a valid namespace name", 'Namespace names'),
    (['-g', 'rg', '-n', 'c', '--secret', 'ns/UPPER'], "'UPPER' is not a valid secret name", 'Secret names'),
    (['-g', 'rg', '-n', 'c', '--timeout', '0'], '--timeout must be between 1 and 86400, not 0', '--timeout'),
    (['-g', 'rg', '-n', 'c', '--page-size', '0'], '--page-size must be between', '--page-size'),
    (['-g', 'rg', '-n', 'c', '--etcd-cacert', 'relative/ca.crt'], '--etcd-cacert must be an absolute path',
     '/etc/kubernetes/pki/etcd/'),
    (['--kubeconfig', '/nonexistent/kubeconfig'], "--kubeconfig file '/nonexistent/kubeconfig' does not exist",
     'Check the path'),
    (['-g', 'rg', '-n', 'c', '--junit-xml', '/nonexistent/dir/r.xml'], '--junit-xml: folder', 'writable folder'),
    (['-g', 'rg', '-n', 'c', '--probe-namespace', 'Not_Valid'], "--probe-namespace 'Not_Valid'", 'existing namespace'),
])
def test_bad_arguments_exit_2_with_one_line_and_a_recommendation(az, args, message, recommendation):
    _assert_clean_error(az('aksarc', 'kms', 'verify', *args), 2, message, recommendation)


def test_a_file_that_is_not_a_kubeconfig_is_a_bad_argument(az, tmp_path):
    path = tmp_path / 'not-a-kubeconfig'
    path.write_text('just: [some, yaml]\nsecret-looking: c2VjcmV0LWNhbmFyeS1kYXRh\n')
    result = az('aksarc', 'kms', 'verify', '--kubeconfig', path)
    _assert_clean_error(result, 2, 'is not a kubeconfig file', 'Give a kubeconfig')
    assert 'c2VjcmV0LWNhbmFyeS1kYXRh' not in result.output


def test_unreadable_kubeconfig_is_a_bad_argument(az, tmp_path):
    import os
    if os.geteuid() == 0:
        # root reads every file: make it a directory instead, which no one can read as a file
        path = tmp_path / 'kubeconfig-dir'
        path.mkdir()
        result = az('aksarc', 'kms', 'verify', '--kubeconfig', path)
        _assert_clean_error(result, 2, 'is a folder, not a kubeconfig file', 'Give the path of a kubeconfig file')
        return
    path = tmp_path / 'kubeconfig'
    path.write_text('apiVersion: v1\n')
    path.chmod(0)
    _assert_clean_error(az('aksarc', 'kms', 'verify', '--kubeconfig', path), 2, 'is not readable', 'permissions')


def test_unknown_argument_is_rejected_by_az_with_exit_2(az):
    result = az('aksarc', 'kms', 'verify', '--no-such-option')
    assert result.code == 2, result
    assert 'Traceback' not in result.output


@pytest.mark.parametrize('shard', ['١/٢', '１/２', '1/２'])
def test_shard_numbers_are_ascii_digits_only(az, shard):
    _assert_clean_error(az('aksarc', 'kms', 'verify', '--all-clusters', '--shard', shard), 2,
                        f"--shard '{shard}' is not I/N", 'Give the slice as I/N')
