"""Install benchmark: what ``az extension add`` of the wheel costs a user (size, time, native files).

    .venv/bin/python bench/bench_install.py                                  # the wheel setup.py declares now
    .venv/bin/python bench/bench_install.py --wheel dist/kmsverify-0.2.0-py3-none-any.whl
    .venv/bin/python bench/bench_install.py --requirement 'kubernetes>=30.1.0'   # a variant wheel: the old range

Each run installs the wheel with ``.venv-az/bin/az extension add --source WHEEL --yes`` (azure-cli alone, as users
have it) into a new, empty AZURE_EXTENSION_DIR with a new AZURE_CONFIG_DIR, after an untimed ``az extension list``
in that config dir (so az's command index is built, as on a user's machine, and the files are in the OS cache).
One untimed warm-up install comes first. az runs pip with ``--no-cache-dir``, so pip's own cache is never used:
every add fetches the dependencies from the index again.
"""

import argparse
import csv
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
AZ = PROJECT / '.venv-az' / 'bin' / 'az'
NATIVE = re.compile(r'\.(so|pyd|dylib)(\.[0-9.]+)?$')
TARGETS = {'size_mb': 50.0, 'seconds': 10.0, 'native_files': 0}


def _version() -> str:
    text = (PROJECT / 'setup.py').read_text()
    return re.search(r"^VERSION = '(.*)'", text, re.M).group(1)


def build_wheel(out_dir: Path, requirements=None) -> Path:
    """Build the wheel of the working tree into ``out_dir``; with ``requirements``, a variant declaring those."""
    src = out_dir / 'src'
    shutil.copytree(PROJECT, src, ignore=shutil.ignore_patterns(
        '.git', '.venv*', '.az', '.sandbox', '.tools', 'build', 'dist', '*.egg-info', 'tests', 'bench',
        '__pycache__', '.pytest_cache', '.ruff_cache'))
    if requirements:
        setup = src / 'setup.py'
        text = setup.read_text()
        deps = 'DEPENDENCIES = [\n' + ''.join('    {!r},\n'.format(r) for r in requirements) + ']'
        new, count = re.subn(r'^DEPENDENCIES = \[.*?^\]', deps, text, count=1, flags=re.M | re.S)
        if count != 1:
            raise SystemExit('setup.py has no DEPENDENCIES = [...] list to replace')
        setup.write_text(new)
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '--no-build-isolation', '-w',
                    str(out_dir), str(src)], check=True, capture_output=True, text=True, cwd=src)
    [wheel] = out_dir.glob('kmsverify-*.whl')
    return wheel


def _az_env(config_dir: Path, ext_dir: Path) -> dict:
    env = dict(os.environ)
    env.update({'AZURE_CONFIG_DIR': str(config_dir), 'AZURE_EXTENSION_DIR': str(ext_dir),
                'AZURE_CORE_COLLECT_TELEMETRY': 'false', 'AZURE_CORE_NO_COLOR': 'true',
                'AZURE_CORE_SURVEY_MESSAGE': 'false', 'PYTHONSAFEPATH': '1'})
    env.pop('PYTHONPATH', None)
    return env


def install_once(wheel: Path, work: Path) -> dict:
    """One ``az extension add`` into a new extension folder; returns its wall time and the folder."""
    work.mkdir(parents=True)
    config_dir, ext_dir = work / 'config', work / 'extensions'
    env = _az_env(config_dir, ext_dir)
    start = time.perf_counter()
    subprocess.run([str(AZ), 'extension', 'list', '-o', 'none'], env=env, cwd=work, check=True,
                   capture_output=True, stdin=subprocess.DEVNULL)
    az_startup = time.perf_counter() - start
    start = time.perf_counter()
    proc = subprocess.run([str(AZ), 'extension', 'add', '--source', str(wheel), '--yes', '--only-show-errors'],
                          env=env, cwd=work, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit('az extension add failed (exit {}):\n{}'.format(proc.returncode, proc.stderr[-3000:]))
    return {'seconds': seconds, 'az_startup': az_startup, 'dir': ext_dir / 'kmsverify', 'stderr': proc.stderr}


def _files(root: Path):
    for dirpath, _, names in os.walk(root):
        for name in names:
            yield Path(dirpath) / name


def analyse(ext: Path) -> dict:
    """Size (files' bytes and disk blocks), native files and size by distribution (from the RECORD files)."""
    sizes = {}
    disk = 0
    for path in _files(ext):
        st = path.lstat()
        sizes[path] = st.st_size
        disk += st.st_blocks * 512
    owner = {}
    dists = {}
    for record in ext.glob('*.dist-info/RECORD'):
        meta = (record.parent / 'METADATA').read_text(encoding='utf-8', errors='replace')
        name = re.search(r'^Name: (.*)$', meta, re.M).group(1).strip()
        version = re.search(r'^Version: (.*)$', meta, re.M).group(1).strip()
        dists[name] = {'name': name, 'version': version, 'bytes': 0, 'files': 0, 'native': []}
        with open(record, newline='', encoding='utf-8') as f:
            for row in csv.reader(f):
                if row and row[0]:
                    owner.setdefault(os.path.normpath(ext / row[0]), name)
    other = {'name': '(in no RECORD)', 'version': '', 'bytes': 0, 'files': 0, 'native': []}
    for path, size in sizes.items():
        dist = dists.get(owner.get(os.path.normpath(path)), other)
        dist['bytes'] += size
        dist['files'] += 1
        if NATIVE.search(path.name):
            dist['native'].append(str(path.relative_to(ext)))
    packages = sorted(list(dists.values()) + ([other] if other['files'] else []), key=lambda d: -d['bytes'])
    native = sorted(n for d in packages for n in d['native'])
    return {'bytes': sum(sizes.values()), 'disk_bytes': disk, 'files': len(sizes), 'native': native,
            'packages': packages}


def _run(args, cwd=None) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, cwd=cwd, timeout=60).stdout.strip()
    except OSError:
        return ''


def machine() -> dict:
    cpu = ''
    try:
        cpu = next((line.split(':', 1)[1].strip() for line in Path('/proc/cpuinfo').read_text().splitlines()
                    if line.startswith('model name')), '')
    except OSError:
        pass
    az_python = AZ.parent / 'python'
    return {'cpu': cpu or platform.processor(), 'nproc': os.cpu_count(),
            'python': _run([str(az_python), '-c', 'import platform; print(platform.python_version())']),
            'pip': _run([str(az_python), '-m', 'pip', '--version']).split(' from ')[0],
            'azure_cli': _run([str(az_python), '-c', 'from azure.cli.core import __version__; print(__version__)']),
            'load_before': round(os.getloadavg()[0], 2),
            'commit': _run(['git', 'rev-parse', '--short', 'HEAD'], PROJECT)}


def _mb(n: int) -> float:
    return n / 1e6


def report(result: dict, top: int) -> str:
    m, a = result['machine'], result['analysis']
    runs = result['runs']
    seconds = statistics.median(runs)
    lines = [
        'az extension add --source {} --yes   (declares: {})'.format(result['wheel'], '; '.join(result['requires'])),
        "machine: {cpu}, {nproc} cores, Python {python}, {pip} (az's), azure-cli {azure_cli}, "
        "load {load_before} -> {load_after}".format(**m),
        'runs: {} after 1 warm-up: {} s (az start-up, `az extension list`: {:.2f} s)'.format(
            len(runs), ' / '.join('{:.2f}'.format(r) for r in runs), result['az_startup']),
        '',
        '{:<28} {:>12} {:>10} {:>7}'.format('', 'measured', 'target', 'ratio'),
        '{:<28} {:>9.1f} MB {:>7} MB {:>6.2f}x  {}'.format(
            'installed size (bytes)', _mb(a['bytes']), '<= 50', _mb(a['bytes']) / TARGETS['size_mb'],
            'met' if _mb(a['bytes']) <= TARGETS['size_mb'] else 'MISSED'),
        '{:<28} {:>8.1f} MiB'.format('  on disk (du, blocks)', a['disk_bytes'] / 2 ** 20),
        '{:<28} {:>10.2f} s {:>8} s {:>6.2f}x  {}'.format(
            'az extension add (median)', seconds, '<= 10', seconds / TARGETS['seconds'],
            'met' if seconds <= TARGETS['seconds'] else 'MISSED'),
        '{:<28} {:>12} {:>10} {:>7}  {}'.format('native files (.so)', len(a['native']), 0, '-',
                                                'met' if not a['native'] else 'MISSED'),
        '{:<28} {:>12}'.format('files', a['files']),
        '',
        'top packages by size:',
    ]
    for d in a['packages'][:top]:
        lines.append('  {:<34} {:>8.1f} MB {:>5.1f} %{}'.format(
            (d['name'] + ' ' + d['version']).strip(), _mb(d['bytes']), 100 * d['bytes'] / a['bytes'],
            '  ({} native)'.format(len(d['native'])) if d['native'] else ''))
    rest = a['packages'][top:]
    if rest:
        lines.append('  {:<34} {:>8.1f} MB  ({} packages)'.format('the rest', _mb(sum(d['bytes'] for d in rest)),
                                                                len(rest)))
    if a['native']:
        lines += ['', 'native files:'] + ['  ' + n for n in a['native']]
    return '\n'.join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--wheel', type=Path, help='the wheel to install (default: build one from the working tree)')
    parser.add_argument('--requirement', action='append',
                        help="build a variant wheel declaring this instead of setup.py's DEPENDENCIES (repeatable)")
    parser.add_argument('--runs', type=int, default=3, help='timed installs (default 3), after one warm-up')
    parser.add_argument('--top', type=int, default=8, help='packages listed by size (default 8)')
    parser.add_argument('--json', type=Path, help='also write every figure to this file')
    args = parser.parse_args(argv)
    if not AZ.exists():
        raise SystemExit('{} not found: `make install` (or any make target that needs az) sets up .venv-az'.format(AZ))
    if args.wheel and args.requirement:
        parser.error('--wheel and --requirement exclude each other')

    with tempfile.TemporaryDirectory(prefix='bench-install-') as tmp:
        tmp = Path(tmp)
        if args.wheel:
            wheel = args.wheel.resolve()
        else:
            (tmp / 'wheel').mkdir()
            wheel = build_wheel(tmp / 'wheel', args.requirement)
        info = machine()
        install_once(wheel, tmp / 'warm-up')
        runs, startups, last = [], [], None
        for i in range(args.runs):
            last = install_once(wheel, tmp / 'run-{}'.format(i))
            runs.append(last['seconds'])
            startups.append(last['az_startup'])
        analysis = analyse(last['dir'])
        requires = []
        for meta in last['dir'].glob('kmsverify-*.dist-info/METADATA'):
            requires = re.findall(r'^Requires-Dist: (.*)$', meta.read_text(), re.M)
        result = {'wheel': wheel.name, 'requires': requires, 'runs': runs, 'seconds': statistics.median(runs),
                  'az_startup': statistics.median(startups), 'analysis': analysis,
                  'machine': dict(info, load_after=round(os.getloadavg()[0], 2)),
                  'targets': TARGETS}
        print(report(result, args.top))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == '__main__':
    sys.exit(main())
