"""The scan benchmark runs end to end at a small size and its figures are sane (no timing thresholds: speed is
measured by `make bench`, on a quiet machine, not asserted here)."""

import json
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]


def test_bench_scan_small_run(installed, tmp_path):
    out = tmp_path / 'bench.json'
    proc = subprocess.run([sys.executable, str(PROJECT / 'bench' / 'bench_scan.py'), '--n', '200', '--small', '40',
                           '--runs', '1', '--per-secret', '3', '--json', str(out)],
                          capture_output=True, text=True, timeout=600, cwd=PROJECT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report['az_startup'] > 0 and report['machine']['nproc'] >= 1 and report['machine']['etcdctl']
    small, big = report['sizes']
    assert (small['n'], big['n']) == (40, 200)
    for size in (small, big):
        n = size['n']
        # the sandbox's own 3 secrets besides the seeded ones; the scan saw exactly what etcd holds
        assert size['stored'] == n + 3 == size['total']
        assert size['paged_floor']['keys'] == size['stored']
        plain = max(1, n // 100)  # at least one plaintext secret
        assert size['seed']['written'] == {'old': n // 10, 'current': n - n // 10 - plain, 'plaintext': plain}
        # plaintext secrets fail; old-key ones (and the sandbox's 3, written before the rotation) are stale
        assert size['exit_code'] == 4
        assert size['failing'] == plain and size['stale'] == n // 10 + 3
        assert sum(size['byStorage'].values()) == size['stored']
        assert size['scan']['wall'] > size['floor']['wall'] > 0
        assert 20e6 < size['scan']['peak_rss'] < 500e6
        assert size['per_secret']['sample'] == 3 and size['per_secret']['per_secret'] > 0
    assert big['floor']['bytes'] > small['floor']['bytes']
    table = proc.stdout
    for label in ('scan wall (az --all-secrets)', 'floor (host etcdctl get --prefix)', 'ratio scan / floor',
                  'peak RSS of az', 'per-secret procedure, for N', 'az start-up', 'peak RSS growth'):
        assert label in table, table
