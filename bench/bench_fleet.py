"""Fleet benchmark: `az aksarc kms verify --all-clusters --max-parallel 8` against 1, 10 and 20 sandbox clusters.

For each N: a fleet sandbox (`up --clusters N`: one ARM, Resource Graph and Entra emulator, one etcd, KMS
plugin and real kube-apiserver per cluster), a real `az login` against its Entra emulator, then the fleet run
through the installed extension: wall time and peak RSS of the az process (measured by a small parent, as
bench_scan does), and both relative to one cluster. Targets: 20 clusters in at most 3x the time of one; memory
that does not grow with the number of clusters beyond the results themselves. A real cluster takes about 400 MB
(tests/sandbox/README.md, A fleet): 20 are about 8 GB.

    .venv/bin/python bench/bench_fleet.py [--clusters 1,10,20] [--runs 2] [--max-parallel 8] [--all-secrets]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from bench.bench_scan import AZ, run_measured  # noqa: E402
from tests.sandbox.azure.azlogin import az_env, az_login  # noqa: E402
from tests.sandbox.fleet import Fleet  # noqa: E402


def fleet_run(box: Fleet, config_dir: Path, args, workdir: Path, n: int) -> dict:
    env = az_env(box.info['entra'])
    env.update({'AZURE_CONFIG_DIR': str(config_dir), 'AZURE_CORE_ONLY_SHOW_ERRORS': 'true',
                'AZURE_EXTENSION_DIR': os.environ.get('AZURE_EXTENSION_DIR', str(PROJECT / '.az' / 'extensions'))})
    subscription = box.info['clusters'][0]['subscription']
    argv = [str(AZ), 'aksarc', 'kms', 'verify', '--all-clusters', '--subscriptions', subscription,
            '--max-parallel', str(args.max_parallel), '-o', 'json'] + (['--all-secrets'] if args.all_secrets else [])
    walls, peaks, result = [], [], None
    for i in range(args.runs):
        out = workdir / f'fleet-{n}-{i}.json'
        with open(out, 'wb') as handle:
            code, wall, peak = run_measured(argv, env, stdout=handle)
        walls.append(wall)
        peaks.append(peak)
        result = json.loads(out.read_text())
        result['exitCode'] = code
    return {'wall': statistics.median(walls), 'walls': walls, 'peak': max(peaks), 'result': result,
            'result_bytes': len(json.dumps(result))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--clusters', default='1,10,20')
    p.add_argument('--runs', type=int, default=2)
    p.add_argument('--max-parallel', type=int, default=8)
    p.add_argument('--all-secrets', action='store_true')
    p.add_argument('--dir', help="keep the sandboxes' folders here (default: a temporary folder)")
    args = p.parse_args(argv)
    sizes = [int(n) for n in args.clusters.split(',')]
    rows = {}
    with tempfile.TemporaryDirectory(prefix='bench-fleet-') as tmp:
        root = Path(args.dir or tmp)
        for n in sizes:
            box = Fleet(str(root / f'fleet-{n}'))
            box.up(clusters=n, providers='kms-v2,kms-v1')
            try:
                config_dir = root / f'azure-{n}'
                config_dir.mkdir(parents=True, exist_ok=True)
                os.environ['AZURE_CONFIG_DIR'] = str(config_dir)  # az_login signs in the current config dir
                try:
                    az_login(box.dir, az=AZ)
                finally:
                    os.environ.pop('AZURE_CONFIG_DIR', None)
                rows[n] = fleet_run(box, config_dir, args, root, n)
                outcomes = rows[n]['result'].get('summary')
                print(f"N={n}: {rows[n]['wall']:.2f} s, peak RSS {rows[n]['peak'] / 1e6:.1f} MB, {outcomes}",
                      flush=True)
            finally:
                box.down()
    base = rows[sizes[0]]
    print(f'\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, '
          f'Python {platform.python_version()}; --max-parallel {args.max_parallel}, runs {args.runs} (medians)')
    print(f"{'clusters':>8}  {'wall s':>7}  {'x one':>6}  {'peak RSS MB':>11}  {'+MB vs one':>10}  {'result KB':>9}")
    for n in sizes:
        row = rows[n]
        print(f"{n:>8}  {row['wall']:>7.2f}  {row['wall'] / base['wall']:>6.2f}  {row['peak'] / 1e6:>11.1f}  "
              f"{(row['peak'] - base['peak']) / 1e6:>10.1f}  {row['result_bytes'] / 1e3:>9.1f}")
    last = rows[sizes[-1]]
    print(f"\ntarget: {sizes[-1]} clusters in <= 3x one: {last['wall'] / base['wall']:.2f}x "
          f"({'met' if last['wall'] <= 3 * base['wall'] else 'missed'})")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
