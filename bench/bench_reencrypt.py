"""Benchmark ``az aksarc kms reencrypt`` against ``kubectl get secrets -A -o json | kubectl replace -f -``.

    .venv/bin/python bench/bench_reencrypt.py                            # N = 20,000 and 2,000, KMS v2 and v1
    .venv/bin/python bench/bench_reencrypt.py --n 5000 --small 0 --providers kms-v2 --no-kubectl
    .venv/bin/python bench/bench_reencrypt.py --sweep 4,8,16,32 --sweep-n 4000   # also the best --parallel

For each provider (``--providers``, KMS v2 and KMS v1) and size (``--small`` and ``--n``), one run against one
fresh sandbox seeded with N secrets: data of 100 B to 8 KiB (the mix of ``bench_scan.py``), 10 % under an old key,
1 % plaintext (written before encryption). An old key is, for KMS v2, the key id before a rotation (``ctl seed``,
then ``kms rotate``); for KMS v1, whose values carry no key id, secrets last written 40 days ago (``ctl
write_secret`` with ``written_at``) under the KEK before the rotation, which is how both ``verify --all-secrets``
and ``reencrypt`` find them. After the rotation one unchanged PUT of another secret makes the sandbox's API server
record its plugin's new Status key id (a real one polls it every minute), and one untimed LIST warms its value
cache (a real API server lists from its watch cache; the sandbox decrypts every value the first time). Then:

* **reencrypt**: ``az aksarc kms reencrypt --kubeconfig ... --yes -o json`` (``--parallel`` as given, else its
  default; ``--max-per-second`` off) as a subprocess: wall time, peak RSS of the az process (``os.wait4``
  rusage, through ``bench_scan.run_measured``), the writes it made; the rewrite window, from the first to the last
  change of etcd's revision while it runs (polled through etcd's JSON gateway every 20 ms), gives writes/s of the
  rewriting itself, beside the command's own ``writesPerSecond`` (writes over its whole run: sign-in, plan from
  etcd, rewrites, proof from etcd);
* then ``verify --all-secrets --fail-on-stale``: its exit code and how many secrets it still reports failing or
  stale; and, host-side from etcdctl, how many values are not KMS under the current key (KMS v2 key id, KMS v1 KEK
  id inside the encrypted DEK);
* **kubectl** (unless ``--no-kubectl``), on a second sandbox seeded the same way: the pipeline with the machine's
  kubectl and the sandbox's admin kubeconfig, its wall time, and the same two stale counts afterwards.

Then the peak RSS ratio N / small per provider (it should be flat), writes/s against the 200 writes/s target and
the ~5 secrets/s of k3s ``secrets-encrypt reencrypt``, and reencrypt against kubectl. ``--sweep P1,P2,...``
rewrites every secret of one more KMS v2 sandbox (``--sweep-n``, rotated before each run) with each --parallel.
``--json FILE`` writes every figure. The machine is shared: the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))
sys.path.insert(0, str(PROJECT / 'bench'))

from bench_scan import SIZE_MIX, _az_env, _split, machine, run_measured  # noqa: E402

from tests.sandbox import codec  # noqa: E402
from tests.sandbox.control import Sandbox  # noqa: E402
from tests.sandbox.processes.kms_plugin import MAGIC  # noqa: E402
from tests.sandbox.transformers import split_v1  # noqa: E402

AZ = Path(os.environ.get('KMSVERIFY_BENCH_AZ') or PROJECT / '.venv' / 'bin' / 'az')
PREFIX = '/registry/secrets/'
OLD_KEY_SHARE = 0.10
PLAINTEXT_SHARE = 0.01
TARGET_WRITES_PER_SECOND = 200.0
K3S_WRITES_PER_SECOND = 5.0  # k3s `secrets-encrypt reencrypt`, about 5 secrets a second


# --- seeding ------------------------------------------------------------------------------------------------------


def seed(box: Sandbox, provider: str, n: int, workdir: Path) -> dict:
    """N secrets: 10 % under the old key (KMS v1: also last written 40 days ago), 89 % current, 1 % plaintext;
    then the rotation that makes the old key old, and one write that makes the API server report the new key."""
    started = time.monotonic()
    old, plain = int(n * OLD_KEY_SHARE), max(1, int(n * PLAINTEXT_SHARE))
    current = n - old - plain
    if provider == 'kms-v2':
        _bulk(box, 'old-', old)
    else:
        _backdated(box, 'old-', old)
    rotated_to = box.kms('rotate')
    _bulk(box, 'cur-', current)
    _bulk(box, 'plain-', plain, with_='identity')
    _touch(box)
    return {'old': old, 'current': current, 'plaintext': plain, 'rotated_to': rotated_to,
            'seconds': round(time.monotonic() - started, 2)}


def _bulk(box: Sandbox, prefix: str, count: int, with_: str = 'current') -> None:
    for i, part in enumerate(_split(count, SIZE_MIX)):
        if part:
            answer = box.ctl({'seed': {'namespace': f'bench-{i}', 'prefix': prefix, 'count': part,
                                       'size': SIZE_MIX[i][0], 'with': with_}}, timeout=1800)
            if not answer.get('ok'):
                raise RuntimeError(f'seed failed: {answer}')


def _backdated(box: Sandbox, prefix: str, count: int) -> None:
    """KMS v1 secrets last written 40 days ago (``write_secret`` with ``written_at``), four at a time."""
    when = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(time.time() - 40 * 86400))
    jobs = []
    for i, part in enumerate(_split(count, SIZE_MIX)):
        jobs += [(f'bench-{i}', f'{prefix}{j}', SIZE_MIX[i][0]) for j in range(part)]

    def write(job):
        namespace, name, size = job
        value = base64.b64encode(os.urandom(size * 3 // 4 or 1)).decode()[:size]
        answer = box.ctl({'write_secret': {'namespace': namespace, 'name': name, 'data': {'value': value},
                                           'written_at': when}})
        if not answer.get('ok'):
            raise RuntimeError(f'write_secret failed: {answer}')
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write, jobs))


def warm(box: Sandbox) -> None:
    """One full LIST, untimed: the sandbox's API server decrypts every value the first time it lists them (a KMS
    plugin call per DEK), where a real one answers from its watch cache; both procedures then meet a warm one."""
    token = ''
    while True:
        status, page = box.api('GET', '/api/v1/secrets?limit=1000' + (f'&continue={token}' if token else ''),
                               timeout=600)
        if status != 200:
            raise RuntimeError(f'warm-up list failed: HTTP {status}')
        token = (page.get('metadata') or {}).get('continue')
        if not token:
            return


def _touch(box: Sandbox) -> None:
    """One unchanged PUT: the sandbox's API server records its plugin's Status key id as a real one does on its
    minute poll, so /metrics names the key the rewrites will use."""
    status, obj = box.api('GET', '/api/v1/namespaces/default/secrets/db-user-pass')
    if status != 200 or box.api('PUT', '/api/v1/namespaces/default/secrets/db-user-pass', obj)[0] != 200:
        raise RuntimeError('could not touch default/db-user-pass')


# --- host-side oracles --------------------------------------------------------------------------------------------


def _plugin_key_id(cipher: bytes) -> str:
    n = cipher[len(MAGIC)]
    return cipher[len(MAGIC) + 1:len(MAGIC) + 1 + n].decode()


def stored(value: bytes) -> tuple:
    """(storage, key id) of a raw value: KMS v2 its key id, KMS v1 the KEK id in its encrypted DEK."""
    if value.startswith(b'k8s:enc:kms:v2:'):
        return 'kms', codec.decode_encrypted_object(value[len(b'k8s:enc:kms:v2:'):].split(b':', 1)[1])['keyID']
    if value.startswith(b'k8s:enc:kms:v1:'):
        return 'kms', _plugin_key_id(split_v1(value[len(b'k8s:enc:kms:v1:'):].split(b':', 1)[1])[0])
    if value.startswith(b'k8s:enc:'):
        return value.split(b':')[2].decode(), None
    return 'identity', None


def not_current(box: Sandbox, current: str) -> dict:
    """How many stored values are not KMS under ``current``, by storage/key, read host-side in one range."""
    result = box.etcdctl('get', PREFIX, '--prefix', '-w', 'json', version='3.5', timeout=600)
    if result.returncode != 0:
        raise RuntimeError(result.stderr.decode(errors='replace'))
    counts: dict = {}
    for kv in json.loads(result.stdout).get('kvs') or []:
        where = stored(base64.b64decode(kv.get('value', '')))
        if where != ('kms', current):
            label = f'{where[0]}:{where[1]}' if where[1] else where[0]
            counts[label] = counts.get(label, 0) + 1
    return counts


class RevisionWatch:
    """Polls etcd's revision (JSON gateway, one kept-alive TLS connection) every ``interval`` seconds while the
    command runs: the first and last moments it changed bound the rewrites."""

    def __init__(self, box: Sandbox, interval: float = 0.02):
        env = dict(line.split('=', 1) for line in Path(box.info['etcd_env']).read_text().split())
        self.host, self.port = env['ETCDCTL_ENDPOINTS'].split(',')[0].rsplit('//', 1)[1].split(':')
        self.context = ssl.create_default_context(cafile=env['ETCDCTL_CACERT'])
        self.context.load_cert_chain(env['ETCDCTL_CERT'], env['ETCDCTL_KEY'])
        self.interval = interval
        self.body = json.dumps({'key': base64.b64encode(PREFIX.encode()).decode(), 'limit': 1,
                                'keys_only': True}).encode()
        self.changes: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def revision(self, conn) -> int:
        conn.request('POST', '/v3/kv/range', body=self.body, headers={'Content-Type': 'application/json'})
        return int(json.loads(conn.getresponse().read())['header']['revision'])

    def _run(self) -> None:
        conn = http.client.HTTPSConnection(self.host, int(self.port), context=self.context, timeout=10)
        last = self.revision(conn)
        self.changes.append((time.perf_counter(), last))
        while not self.stop.wait(self.interval):
            rev = self.revision(conn)
            if rev != last:
                self.changes.append((time.perf_counter(), rev))
                last = rev
        conn.close()

    def __enter__(self):
        self.thread.start()
        while not self.changes:
            time.sleep(0.005)
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    def window(self) -> float | None:
        """Seconds from the first to the last revision change (None without one)."""
        if len(self.changes) < 2:
            return None
        return self.changes[-1][0] - self.changes[1][0] + self.interval


# --- the two procedures -------------------------------------------------------------------------------------------


def reencrypt(box: Sandbox, env: dict, workdir: Path, parallel: int | None, tag: str) -> dict:
    argv = [str(AZ), 'aksarc', 'kms', 'reencrypt', '--kubeconfig', box.kubeconfig, '--yes', '-o', 'json']
    if parallel:
        argv += ['--parallel', str(parallel)]
    out = workdir / f'reencrypt-{tag}.json'
    with RevisionWatch(box) as watch, open(out, 'wb') as handle:
        code, wall, peak = run_measured(argv, env, stdout=handle)
    result = json.loads(out.read_text())
    written = sum(1 for t in result.get('targets') or [] if t.get('outcome') == 'reencrypted')
    window = watch.window()
    return {'exit_code': code, 'wall': wall, 'peak_rss': peak, 'targets': result['plan']['targets'],
            'written': written, 'summary': result.get('summary'), 'duration': result.get('durationSeconds'),
            'command_writes_per_second': result.get('writesPerSecond'), 'rewrite_window': window,
            'writes_per_second': written / window if window else None,
            'throttled': sum(t.get('throttled') or 0 for t in result.get('targets') or [])}


def kubectl_replace(box: Sandbox) -> dict:
    kubectl = shutil.which('kubectl')
    if not kubectl:
        return {'skipped': 'no kubectl on PATH'}
    kubeconfig = box.kubeconfig
    script = f"set -o pipefail; '{kubectl}' --kubeconfig '{kubeconfig}' get secrets -A -o json | " \
             f"'{kubectl}' --kubeconfig '{kubeconfig}' replace -f - > /dev/null"
    env = {k: v for k, v in os.environ.items() if k != 'KUBECONFIG'}
    started = time.perf_counter()
    proc = subprocess.run(['bash', '-c', script], env=env, capture_output=True, timeout=3600)
    wall = time.perf_counter() - started
    return {'exit_code': proc.returncode, 'wall': wall, 'stderr': proc.stderr.decode(errors='replace')[-500:]}


def verify_after(box: Sandbox, env: dict) -> dict:
    argv = [str(AZ), 'aksarc', 'kms', 'verify', '--kubeconfig', box.kubeconfig, '--all-secrets', '--fail-on-stale',
            '-o', 'json']
    proc = subprocess.run(argv, env=env, capture_output=True, timeout=1800, stdin=subprocess.DEVNULL)
    scan = json.loads(proc.stdout)['scan']
    return {'exit_code': proc.returncode, 'failing': len(scan['failing']), 'stale': len(scan['stale']),
            'current_key': scan.get('currentKeyId')}


def bench_one(provider: str, n: int, args, env: dict, workdir: Path) -> dict:
    entry = {'provider': provider, 'n': n}
    box = Sandbox(str(workdir / f'{provider}-{n}-reencrypt'))
    box.up(provider=provider, timeout=120)
    try:
        entry['seed'] = seed(box, provider, n, workdir)
        current = entry['seed']['rotated_to']
        entry['before'] = not_current(box, current)
        warm(box)
        entry['reencrypt'] = reencrypt(box, env, workdir, args.parallel, f'{provider}-{n}')
        entry['reencrypt']['verify'] = verify_after(box, env)
        entry['reencrypt']['not_current'] = not_current(box, current)
    finally:
        box.down()
        shutil.rmtree(workdir / f'{provider}-{n}-reencrypt', ignore_errors=True)
    if not args.no_kubectl:
        box = Sandbox(str(workdir / f'{provider}-{n}-kubectl'))
        box.up(provider=provider, timeout=120)
        try:
            current = seed(box, provider, n, workdir)['rotated_to']
            warm(box)
            entry['kubectl'] = kubectl_replace(box)
            entry['kubectl']['verify'] = verify_after(box, env)
            entry['kubectl']['not_current'] = not_current(box, current)
        finally:
            box.down()
            shutil.rmtree(workdir / f'{provider}-{n}-kubectl', ignore_errors=True)
    return entry


def sweep(values: list[int], n: int, env: dict, workdir: Path) -> list[dict]:
    """Every secret of one KMS v2 sandbox rewritten with each --parallel (a rotation before each run)."""
    box = Sandbox(str(workdir / 'sweep'))
    box.up(provider='kms-v2', timeout=120)
    rows = []
    try:
        _bulk(box, 's-', n)
        warm(box)
        for parallel in values:
            box.kms('rotate')
            _touch(box)
            run = reencrypt(box, env, workdir, parallel, f'sweep-{parallel}')
            rows.append({'parallel': parallel, 'load': os.getloadavg()[0], **run})
            print(f"  --parallel {parallel}: {run['written']} writes, "
                  f"{run['writes_per_second'] or 0:.0f} writes/s", file=sys.stderr, flush=True)
    finally:
        box.down()
        shutil.rmtree(workdir / 'sweep', ignore_errors=True)
    return rows


# --- report -------------------------------------------------------------------------------------------------------


def _mb(v):
    return f'{v / 1e6:.1f} MB' if v is not None else '-'


def _s(v):
    return f'{v:.2f} s' if v is not None else '-'


def _rate(v):
    return f'{v:.0f}/s' if v else '-'


def _left(counts: dict) -> str:
    total = sum(counts.values())
    if not total:
        return '0'
    return f'{total} (' + ', '.join(f'{n} {k}' for k, n in sorted(counts.items(), key=lambda kv: -kv[1])) + ')'


def table(report: dict) -> str:
    rows = [
        ('secrets seeded (N)', lambda e: f"{e['n']:,}"),
        ('  old key / plaintext', lambda e: f"{e['seed']['old']:,} / {e['seed']['plaintext']:,}"),
        ('not KMS under current key, before', lambda e: _left(e['before'])),
        ('reencrypt wall', lambda e: _s(e['reencrypt']['wall'])),
        ('  targets / written', lambda e: f"{e['reencrypt']['targets']:,} / {e['reencrypt']['written']:,}"),
        ('  rewrite window (etcd)', lambda e: _s(e['reencrypt']['rewrite_window'])),
        ('  writes/s, rewriting', lambda e: _rate(e['reencrypt']['writes_per_second'])),
        ('  writes/s, whole command', lambda e: _rate(e['reencrypt']['command_writes_per_second'])),
        ('  vs target 200/s',
         lambda e: f"{(e['reencrypt']['writes_per_second'] or 0) / TARGET_WRITES_PER_SECOND:.2f}x"),
        ('  vs k3s ~5/s', lambda e: f"{(e['reencrypt']['writes_per_second'] or 0) / K3S_WRITES_PER_SECOND:.0f}x"),
        ('  peak RSS of az', lambda e: _mb(e['reencrypt']['peak_rss'])),
        ('  verify --fail-on-stale after', lambda e: 'exit {exit_code}: {failing} failing, {stale} stale'.format(
            **e['reencrypt']['verify'])),
        ('  etcd: not under current key', lambda e: _left(e['reencrypt']['not_current'])),
        ('kubectl get | replace wall', lambda e: _s(e.get('kubectl', {}).get('wall'))),
        ('  verify --fail-on-stale after', lambda e: 'exit {exit_code}: {failing} failing, {stale} stale'.format(
            **e['kubectl']['verify']) if 'verify' in e.get('kubectl', {}) else '-'),
        ('  etcd: not under current key', lambda e: _left(e['kubectl']['not_current'])
         if 'not_current' in e.get('kubectl', {}) else '-'),
        ('kubectl wall / reencrypt wall', lambda e: f"{e['kubectl']['wall'] / e['reencrypt']['wall']:.1f}x"
         if 'wall' in e.get('kubectl', {}) else '-'),
    ]
    entries = report['runs']
    header = ['', *(f"{e['provider']} N={e['n']:,}" for e in entries)]
    body = [[label, *(fmt(e) for e in entries)] for label, fmt in rows]
    widths = [max(len(str(row[i])) for row in [header] + body) for i in range(len(header))]
    lines = ['  '.join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in [header] + body]
    lines.insert(1, '  '.join('-' * w for w in widths))
    extra = []
    for provider in report['providers']:
        sizes = sorted((e for e in entries if e['provider'] == provider), key=lambda e: e['n'])
        if len(sizes) > 1:
            small, big = sizes[0], sizes[-1]
            extra.append(f"{provider}: peak RSS N={big['n']:,} / N={small['n']:,} = "
                         f"{big['reencrypt']['peak_rss'] / small['reencrypt']['peak_rss']:.2f} "
                         f"({_mb(small['reencrypt']['peak_rss'])} -> {_mb(big['reencrypt']['peak_rss'])})")
    for row in report.get('sweep') or []:
        extra.append(f"sweep, N={report['sweep_n']:,} KMS v2 targets: --parallel {row['parallel']:>2}: "
                     f"{_rate(row['writes_per_second'])} rewriting ({_rate(row['command_writes_per_second'])} whole "
                     f"command, wall {_s(row['wall'])}, peak RSS {_mb(row['peak_rss'])}, load {row['load']:.1f})")
    if report.get('sweep'):
        best = max(report['sweep'], key=lambda r: r['writes_per_second'] or 0)
        extra.append(f"best --parallel: {best['parallel']} ({_rate(best['writes_per_second'])})")
    return '\n'.join(lines + [''] + extra)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--n', type=int, default=20000, help='secrets to seed (default 20000)')
    parser.add_argument('--small', type=int, default=2000, help='the smaller size for the memory ratio '
                                                                 '(default 2000; 0 to skip)')
    parser.add_argument('--providers', default='kms-v2,kms-v1', help='comma-separated (default kms-v2,kms-v1)')
    parser.add_argument('--parallel', type=int, default=None, help='--parallel for reencrypt (default: its own)')
    parser.add_argument('--no-kubectl', action='store_true', help='skip the kubectl pipeline')
    parser.add_argument('--sweep', default='', help='also rewrite --sweep-n KMS v2 secrets with each of these '
                                                    '--parallel values, e.g. 4,8,16,32')
    parser.add_argument('--sweep-n', type=int, default=4000, help='secrets of the --sweep sandbox (default 4000)')
    parser.add_argument('--dir', help='working folder (default: a temporary one, removed afterwards)')
    parser.add_argument('--json', help='also write the figures to this file')
    args = parser.parse_args(argv)
    if not AZ.exists():
        parser.error(f'{AZ} not found: run `make install` first (or set KMSVERIFY_BENCH_AZ)')
    workdir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix='bench-reencrypt-'))
    workdir.mkdir(parents=True, exist_ok=True)
    env = _az_env(workdir / 'azure-config')
    providers = [p for p in args.providers.split(',') if p]
    report = {'date': time.strftime('%Y-%m-%d %H:%M:%S %Z'), 'machine': machine(), 'providers': providers,
              'parallel': args.parallel, 'runs': []}
    try:
        for provider in providers:
            for n in sorted({n for n in (args.small, args.n) if n > 0}):
                print(f'{provider} N = {n:,}: seeding and measuring ...', file=sys.stderr, flush=True)
                report['runs'].append(bench_one(provider, n, args, env, workdir))
                print(f'  load average {os.getloadavg()[0]:.2f}', file=sys.stderr, flush=True)
        if args.sweep:
            print(f'sweep of --parallel at N = {args.sweep_n:,} ...', file=sys.stderr, flush=True)
            report['sweep_n'] = args.sweep_n
            report['sweep'] = sweep([int(v) for v in args.sweep.split(',')], args.sweep_n, env, workdir)
        report['machine']['load_after'] = os.getloadavg()
    finally:
        if not args.dir:
            shutil.rmtree(workdir, ignore_errors=True)
    m = report['machine']
    print(f"machine: {m['cpu']}, {m['nproc']} cores, {m['ram_gib']} GiB; load average before "
          f"{m['load_before'][0]:.2f}, after {m['load_after'][0]:.2f}")
    print(table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
