"""Benchmark ``az aksarc kms verify --all-secrets`` against a sandbox seeded with many secrets.

    .venv/bin/python bench/bench_scan.py                 # N = 20,000 (and the 2,000 memory baseline)
    .venv/bin/python bench/bench_scan.py --n 100000
    make bench BENCH_ARGS="--n 5000 --runs 1"

For each size (``--small`` and ``--n``) a fresh KMS v2 sandbox is seeded straight into etcd (the sandbox's
``ctl seed``: batched etcd transactions, values encrypted exactly as its API server stores them) with a
realistic mix: data from 100 B to 8 KiB, 10 % written before a KMS key rotation (old key id), 1 % plaintext
(written before encryption). Then, per size:

* **scan**: the installed extension, ``az aksarc kms verify --all-secrets --kubeconfig ... -o json``, as a
  subprocess: wall time and peak RSS (``os.wait4`` rusage of that process), median of ``--runs``;
* **az start-up**: ``az aksarc kms verify --help`` (az and the extension's command table, no cluster work);
* **floor**: ``etcdctl get /registry/secrets/ --prefix -w protobuf`` run host-side against the sandbox's etcd
  (the same etcdctl 3.5 the etcd pod runs), output discarded: the least any reader of the raw values pays;
  and the same etcdctl paged host-side exactly as the scan pages (what paging costs without exec);
* **per-secret procedure**: the documented manual check, one ``kubectl exec <etcd pod> -- etcdctl get <key>``
  per secret, timed on ``--per-secret`` secrets and extrapolated to N.

Prints a table; ``--json FILE`` also writes the figures. The machine is shared: figures are noisy, so the
load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from tests.sandbox.control import Sandbox  # noqa: E402
from tests.sandbox.processes.etcdproc import find_etcd, find_etcdctl  # noqa: E402

AZ = PROJECT / '.venv' / 'bin' / 'az'
PREFIX = '/registry/secrets/'
# (data bytes, share of the secrets): opaque tokens and passwords dominate, some certificates and
# dockerconfigjson, a few bundles near the 8 KiB end.
SIZE_MIX = ((100, 0.30), (400, 0.25), (1024, 0.20), (2048, 0.12), (4096, 0.08), (8192, 0.05))
OLD_KEY_SHARE = 0.10
PLAINTEXT_SHARE = 0.01
ETCD_POD_ARGS = ['--endpoints=https://127.0.0.1:2379', '--cacert=/etc/kubernetes/pki/etcd/ca.crt',
                 '--cert=/etc/kubernetes/pki/etcd/server.crt', '--key=/etc/kubernetes/pki/etcd/server.key']


def _split(total: int, shares) -> list[int]:
    """Integer counts with these shares summing exactly to ``total``."""
    counts = [int(total * share) for _, share in shares]
    counts[0] += total - sum(counts)
    return counts


def seed_plan(n: int, old_share: float = OLD_KEY_SHARE, plaintext_share: float = PLAINTEXT_SHARE) -> list[dict]:
    """The ``ctl seed`` calls for ``n`` secrets, in the order they must run (old-key ones before the rotation):
    each ``{"phase": "old"|"current"|"plaintext", "namespace", "prefix", "count", "size"}``."""
    old = int(n * old_share)
    plain = max(1, int(n * plaintext_share)) if n >= 10 and plaintext_share > 0 else 0
    current = n - old - plain
    plan = []
    for phase, count in (('old', old), ('current', current), ('plaintext', plain)):
        for i, part in enumerate(_split(count, SIZE_MIX)):
            if part:
                plan.append({'phase': phase, 'namespace': f'bench-{i}', 'prefix': f'{phase}-', 'count': part,
                             'size': SIZE_MIX[i][0]})
    return plan


def seed(box: Sandbox, n: int, old_share: float = OLD_KEY_SHARE, plaintext_share: float = PLAINTEXT_SHARE) -> dict:
    """Seed ``n`` secrets (plus the sandbox's own few); returns what was written and how long it took."""
    started = time.monotonic()
    written = {'old': 0, 'current': 0, 'plaintext': 0}
    rotated = False
    for call in seed_plan(n, old_share, plaintext_share):
        if call['phase'] != 'old' and not rotated:
            box.kms('rotate')
            rotated = True
        spec = {'namespace': call['namespace'], 'prefix': call['prefix'], 'count': call['count'],
                'size': call['size'], 'with': 'identity' if call['phase'] == 'plaintext' else 'current'}
        answer = box.ctl({'seed': spec}, timeout=1800)
        if not answer.get('ok'):
            raise RuntimeError(f'seed failed: {answer}')
        written[call['phase']] += call['count']
    if not rotated:
        box.kms('rotate')
    return {'written': written, 'seconds': time.monotonic() - started}


def _az_env(config_dir: Path) -> dict:
    env = dict(os.environ)
    env.update({'AZURE_CONFIG_DIR': str(config_dir), 'AZURE_CORE_COLLECT_TELEMETRY': 'false',
                'AZURE_CORE_NO_COLOR': 'true', 'AZURE_CORE_SURVEY_MESSAGE': 'false',
                'AZURE_CORE_ONLY_SHOW_ERRORS': 'true', 'KUBECONFIG': str(config_dir / 'no-kubeconfig'),
                # `python -m azure.cli` puts the working directory first on sys.path: without this, az run from
                # the project would import ./azext_kmsverify instead of the installed extension.
                'PYTHONSAFEPATH': '1'})
    env.setdefault('AZURE_EXTENSION_DIR', str(PROJECT / '.az' / 'extensions'))
    return env


# Started by run_measured: forks and execs the command, waits for it, writes its exit status, wall time and
# peak RSS to the file named first. Linux gives a child the peak RSS of the process it was spawned from
# (vfork/fork shares or copies that memory until exec; the kernel keeps its high-water mark), so measuring
# az straight from this script would report this script's peak whenever that is higher (it is, after reading
# 100 MB of etcd output for the floor). This small process is what az is spawned from instead.
_MEASURE = """
import json, os, sys, time
out, argv = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execv(argv[0], argv)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(out, "w") as f:
    json.dump({"status": status, "wall": time.perf_counter() - started, "maxrss_kib": usage.ru_maxrss}, f)
"""


def run_measured(argv: list[str], env: dict | None = None, stdout=subprocess.DEVNULL) -> tuple[int, float, int]:
    """(exit code, wall seconds, peak RSS in bytes) of one process: its own, measured by a small parent."""
    with tempfile.NamedTemporaryFile(suffix='.json') as report:
        proc = subprocess.run([sys.executable, '-c', _MEASURE, report.name, *argv], env=env, stdin=subprocess.DEVNULL,
                              stdout=stdout, stderr=subprocess.PIPE)
        if proc.returncode != 0:
            raise RuntimeError(f"measuring {argv[:4]} failed: {proc.stderr.decode(errors='replace')[-2000:]}")
        measured = json.loads(Path(report.name).read_text())
    code = os.waitstatus_to_exitcode(measured['status'])
    if code not in (0, 4):
        raise RuntimeError(f"{argv[:4]} exited {code}: {proc.stderr.decode(errors='replace')[-2000:]}")
    return code, measured['wall'], measured['maxrss_kib'] * 1024  # Linux: KiB


def az_startup(env: dict, runs: int) -> float:
    return statistics.median(run_measured([str(AZ), 'aksarc', 'kms', 'verify', '--help'], env)[1]
                             for _ in range(runs))


def scan(box: Sandbox, env: dict, runs: int, page_size: int | None, workdir: Path) -> dict:
    argv = [str(AZ), 'aksarc', 'kms', 'verify', '--kubeconfig', box.kubeconfig, '--all-secrets', '-o', 'json']
    if page_size:
        argv += ['--page-size', str(page_size)]
    walls, peaks, result = [], [], None
    for i in range(runs):
        out = workdir / f'scan-{i}.json'
        with open(out, 'wb') as handle:
            code, wall, peak = run_measured(argv, env, stdout=handle)
        walls.append(wall)
        peaks.append(peak)
        result = json.loads(out.read_text())
        result['exitCode'] = code
    return {'wall': statistics.median(walls), 'walls': walls, 'peak_rss': max(peaks), 'peaks': peaks,
            'result': result}


def floor(box: Sandbox, runs: int) -> dict:
    """Host-side etcdctl of every raw value, output discarded (median wall, and the bytes it moves)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith('ETCDCTL_')}
    for line in Path(box.info['etcd_env']).read_text().splitlines():
        key, _, value = line.partition('=')
        env[key] = value
    argv = [find_etcdctl('3.5'), 'get', PREFIX, '--prefix', '-w', 'protobuf']
    walls = [run_measured(argv, env)[1] for _ in range(runs)]
    with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE) as proc:  # counted, never held whole
        size = sum(len(chunk) for chunk in iter(lambda: proc.stdout.read(1 << 20), b''))
    return {'wall': statistics.median(walls), 'walls': walls, 'bytes': size}


def paged_floor(box: Sandbox, runs: int, page_size: int | None) -> dict:
    """Host-side etcdctl paged exactly as the scan pages (same reader, one etcdctl process per page, values
    parsed, not classified): what paging costs before any exec, WebSocket or API server is involved."""
    from azext_kmsverify import defaults
    from azext_kmsverify.etcd.reader import EtcdReader
    from azext_kmsverify.kube.execstream import ExecResult
    env = {k: v for k, v in os.environ.items() if not k.startswith('ETCDCTL_')}
    for line in Path(box.info['etcd_env']).read_text().splitlines():
        key, _, value = line.partition('=')
        env[key] = value
    etcdctl = find_etcdctl('3.5')
    calls = []

    def run(argv):
        calls.append(1)
        got = subprocess.run([etcdctl, *argv[argv.index('get'):]], env=env, capture_output=True, timeout=300)
        return ExecResult(got.returncode, got.stdout, got.stderr)
    walls = []
    for _ in range(runs):
        calls.clear()
        reader = EtcdReader(run, page_size=page_size or defaults.PAGE_SIZE, page_bytes=defaults.PAGE_BYTES)
        started = time.perf_counter()
        count = sum(1 for _ in reader.iter_prefix(PREFIX))
        walls.append(time.perf_counter() - started)
    return {'wall': statistics.median(walls), 'walls': walls, 'pages': len(calls), 'keys': count}


def per_secret(box: Sandbox, sample: int) -> dict:
    """The documented procedure: one ``kubectl exec ... etcdctl get <key>`` per secret, ``sample`` of them."""
    kubectl = shutil.which('kubectl')
    if not kubectl or sample < 1:
        return {'seconds': None, 'sample': 0, 'per_secret': None}
    keys = box.etcdctl('get', PREFIX, '--prefix', '--keys-only', '--limit', str(sample), timeout=120)
    names = [k for k in keys.stdout.decode().splitlines() if k][:sample]
    pod = box.info['etcd_pods'][0]
    started = time.perf_counter()
    for key in names:
        subprocess.run([kubectl, '--kubeconfig', box.kubeconfig, 'exec', '-n', 'kube-system', pod, '-c', 'etcd',
                        '--', 'etcdctl', *ETCD_POD_ARGS, 'get', key], check=True, capture_output=True, timeout=60)
    seconds = time.perf_counter() - started
    return {'seconds': seconds, 'sample': len(names), 'per_secret': seconds / len(names)}


def bench_size(n: int, args, env: dict, workdir: Path) -> dict:
    box = Sandbox(str(workdir / f'sandbox-{n}'))
    box.up(provider='kms-v2', timeout=120)
    try:
        seeded = seed(box, n, args.old_share, args.plaintext_share)
        keys = box.etcdctl('get', PREFIX, '--prefix', '--keys-only', timeout=600).stdout.decode().splitlines()
        stored = sum(1 for k in keys if k)
        measured = scan(box, env, args.runs, args.page_size, workdir)
        low = floor(box, args.runs)
        paged = paged_floor(box, args.runs, args.page_size)
        procedure = per_secret(box, args.per_secret)
    finally:
        box.down()
    scan_result = measured.pop('result')
    summary = scan_result.get('scan') or {}
    return {'n': n, 'stored': stored, 'seed': seeded, 'scan': measured, 'floor': low, 'paged_floor': paged,
            'per_secret': procedure,
            'exit_code': scan_result['exitCode'], 'total': summary.get('total'),
            'failing': len(summary.get('failing') or []), 'stale': len(summary.get('stale') or []),
            'byStorage': summary.get('byStorage'), 'byKeyId': summary.get('byKeyId')}


def machine() -> dict:
    cpu = next((line.split(':', 1)[1].strip() for line in Path('/proc/cpuinfo').read_text().splitlines()
                if line.startswith('model name')), platform.processor())
    mem_kib = next((int(line.split()[1]) for line in Path('/proc/meminfo').read_text().splitlines()
                    if line.startswith('MemTotal:')), 0)

    def version(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return None
    return {'nproc': os.cpu_count(), 'cpu': cpu, 'ram_gib': round(mem_kib / 1024 / 1024, 1),
            'python': platform.python_version(), 'etcd': version([find_etcd(), '--version']),
            'etcdctl': version([find_etcdctl('3.5'), 'version']),
            'kubectl': version(['kubectl', 'version', '--client']), 'load_before': os.getloadavg()}


def _mb(value):
    return '{:.1f} MB'.format(value / 1e6) if value is not None else '-'


def _s(value):
    return '{:.2f} s'.format(value) if value is not None else '-'


def table(report: dict) -> str:
    rows = [('secrets seeded (N)', lambda r: '{:,}'.format(r['n'])),
            ('keys under /registry/secrets/', lambda r: '{:,}'.format(r['stored'])),
            ('seed time', lambda r: _s(r['seed']['seconds'])),
            ('raw values (protobuf)', lambda r: _mb(r['floor']['bytes'])),
            ('scan wall (az --all-secrets)', lambda r: _s(r['scan']['wall'])),
            ('  minus az start-up', lambda r: _s(r['scan']['wall'] - report['az_startup'])),
            ('floor (host etcdctl get --prefix)', lambda r: _s(r['floor']['wall'])),
            ('host etcdctl paged as the scan', lambda r: '{} ({} pages)'.format(
                _s(r['paged_floor']['wall']), r['paged_floor']['pages'])),
            ('ratio scan / floor', lambda r: '{:.1f}x'.format(r['scan']['wall'] / r['floor']['wall'])),
            ('ratio (scan - start-up) / floor',
             lambda r: '{:.1f}x'.format((r['scan']['wall'] - report['az_startup']) / r['floor']['wall'])),
            ('peak RSS of az', lambda r: _mb(r['scan']['peak_rss'])),
            ('per-secret procedure, measured', lambda r: '{} for {}'.format(
                _s(r['per_secret']['seconds']), r['per_secret']['sample'])),
            ('per-secret procedure, for N', lambda r: _s(r['per_secret']['per_secret'] * r['stored'])
             if r['per_secret']['per_secret'] else '-'),
            ('speed-up over per-secret', lambda r: '{:.0f}x'.format(
                r['per_secret']['per_secret'] * r['stored'] / r['scan']['wall']) if r['per_secret']['per_secret']
             else '-'),
            ('found: failing / stale', lambda r: '{} / {}'.format(r['failing'], r['stale']))]
    sizes = report['sizes']
    header = ['', *('N = {:,}'.format(r['n']) for r in sizes)]
    body = [[label, *(fmt(r) for r in sizes)] for label, fmt in rows]
    widths = [max(len(str(row[i])) for row in [header] + body) for i in range(len(header))]
    lines = ['  '.join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in [header] + body]
    lines.insert(1, '  '.join('-' * w for w in widths))
    extra = ['az start-up (az aksarc kms verify --help): {}'.format(_s(report['az_startup']))]
    if len(sizes) > 1:
        small, big = sizes[0], sizes[-1]
        extra.append('peak RSS growth N={:,} -> N={:,}: {:+.1f} MB'.format(
            small['n'], big['n'], (big['scan']['peak_rss'] - small['scan']['peak_rss']) / 1e6))
    return '\n'.join(lines + [''] + extra)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--n', type=int, default=20000, help='secrets to seed (default 20000)')
    parser.add_argument('--small', type=int, default=2000,
                        help='the smaller size whose peak memory is the baseline (default 2000; 0 to skip)')
    parser.add_argument('--runs', type=int, default=3, help='scans and floors per size; medians (default 3)')
    parser.add_argument('--per-secret', type=int, default=50,
                        help='secrets checked one kubectl exec at a time (default 50; 0 to skip)')
    parser.add_argument('--page-size', type=int, default=None, help="--page-size for the scan (default: the "
                                                                     "command's default)")
    parser.add_argument('--old-share', type=float, default=OLD_KEY_SHARE,
                        help='share of secrets written before the key rotation (default 0.10)')
    parser.add_argument('--plaintext-share', type=float, default=PLAINTEXT_SHARE,
                        help='share of plaintext secrets (default 0.01; 0 for none)')
    parser.add_argument('--dir', help='working folder (default: a temporary one, removed afterwards)')
    parser.add_argument('--json', help='also write the figures to this file')
    args = parser.parse_args(argv)
    if not AZ.exists():
        parser.error(f'{AZ} not found: run `make install` first')
    workdir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix='bench-scan-'))
    workdir.mkdir(parents=True, exist_ok=True)
    env = _az_env(workdir / 'azure-config')
    try:
        report = {'date': time.strftime('%Y-%m-%d %H:%M:%S %Z'), 'machine': machine(), 'runs': args.runs,
                  'page_size': args.page_size, 'sizes': []}
        report['az_startup'] = az_startup(env, max(3, args.runs))
        for n in sorted({n for n in (args.small, args.n) if n > 0}):
            print('N = {:,}: seeding and measuring ...'.format(n), file=sys.stderr, flush=True)
            report['sizes'].append(bench_size(n, args, env, workdir))
        report['machine']['load_after'] = os.getloadavg()
    finally:
        if not args.dir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(table(report))
    print('load average before {:.2f}, after {:.2f}'.format(report['machine']['load_before'][0],
                                                            report['machine']['load_after'][0]))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
