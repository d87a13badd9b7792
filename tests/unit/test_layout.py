"""The layout is the data's path: each subpackage one step, imports running one way, pure steps without I/O.

Read from the sources (no import), so the rule holds for every module, including ones no test imports.
"""

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / 'azext_kmsverify'
# A module may import modules of its own layer and of the layers before it, never after.
LAYERS = [
    {'defaults', 'errors', 'names', 'text', 'deadline', 'options'},
    {'etcd'},
    {'verdict'},
    {'report'},
    {'auth'},
    {'discovery'},
    {'kube'},
    {'operations'},
    {'custom'},
]
WIRING = {'__init__', 'commands', '_params', '_help', '_validators', 'custom'}
# operations/: the frame (run: steps, failures, interrupts, progress, reports, exit code; session: sign-in and the
# connection stack) and one module per command, which may use the frame but never another command's module.
FRAME = {'run', 'session'}
# Steps that must stay pure: no network, no subprocess, no az runtime beyond error classes.
# (report/junit writes its file and names the host: it is the one report module with I/O.)
PURE = {'etcd', 'verdict', 'report/table', 'names', 'text', 'defaults', 'options', 'deadline'}
IO_MODULES = {'socket', 'ssl', 'subprocess', 'urllib3', 'requests', 'websocket', 'kubernetes', 'http', 'select'}


def _modules():
    for path in sorted(PACKAGE.rglob('*.py')):
        yield path, path.relative_to(PACKAGE).with_suffix('').parts


def _imports(path):
    tree = ast.parse(path.read_text(encoding='utf-8'))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f'{path}: relative import; use azext_kmsverify.<module>'
            yield node.module


def _layer(top):
    return next((i for i, layer in enumerate(LAYERS) if top in layer), None)


@pytest.mark.parametrize('path,parts', list(_modules()), ids=lambda v: '/'.join(v) if isinstance(v, tuple) else '')
def test_imports_run_one_way(path, parts):
    own = _layer(parts[0])
    for name in _imports(path):
        if not name.startswith('azext_kmsverify.'):
            continue
        target = name.split('.')[1]
        if parts[0] in WIRING - {'custom'} or target in WIRING - {'custom'}:
            continue  # wiring may import wiring helpers and light modules (checked by test_startup)
        theirs = _layer(target)
        assert theirs is not None, f'{name} is in no layer of {LAYERS}'
        assert own is None or theirs <= own, f'{"/".join(parts)} (layer {own}) imports {name} (layer {theirs})'


@pytest.mark.parametrize('path,parts', [(p, m) for p, m in _modules() if m[0] in PURE or '/'.join(m) in PURE],
                         ids=lambda v: '/'.join(v) if isinstance(v, tuple) else '')
def test_pure_steps_do_no_io(path, parts):
    for name in _imports(path):
        top = name.split('.')[0]
        assert top not in IO_MODULES, f'{"/".join(parts)} imports {name}'
        assert top in sys.stdlib_module_names or top in ('azext_kmsverify', 'azure', 'knack', '__future__'), name


def test_wiring_stays_flat_and_thin():
    flat = {p.stem for p in PACKAGE.glob('*.py')}
    assert WIRING <= flat
    assert flat - WIRING <= {'defaults', 'errors', 'names', 'text', 'deadline', 'options'}, flat - WIRING
    custom = (PACKAGE / 'custom.py').read_text()
    assert len(custom.splitlines()) < 60, 'custom.py only wires'


def test_no_machine_paths_in_the_package():
    for path, _ in _modules():
        text = path.read_text(encoding='utf-8')
        for marker in ('/work/', '/home/', '/root/', '/tmp/', 'C:\\\\'):
            assert marker not in text, f'{path} mentions {marker}'


def test_the_repository_stands_on_its_own():
    """Nothing the tests, benchmarks, scripts or Makefile run reads a folder beside the repository."""
    project = PACKAGE.parent
    outside = ['/'.join(('..', 'shared')), '/'.join(('', 'work', '')), "parent / 'shared'", 'parent / "shared"']
    files = [p for top in ('tests', 'bench', 'scripts') for p in (project / top).rglob('*')
             if p.is_file() and p.suffix in ('.py', '.sh', '') and p != Path(__file__).resolve()]
    files += [project / 'Makefile', project / '.ci' / 'run']
    for path in files:
        text = path.read_text(encoding='utf-8', errors='replace')
        for marker in outside:
            assert marker not in text, f'{path.relative_to(project)} mentions {marker!r}'


def _operations_imported(path):
    """The operations modules ``path`` imports, also as ``from azext_kmsverify.operations import verify``."""
    for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f'{node.module}.{alias.name}' for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split('.')
            if parts[:2] == ['azext_kmsverify', 'operations'] and len(parts) > 2:
                yield parts[2]


def test_no_command_module_imports_another():
    operations = PACKAGE / 'operations'
    commands = {p.stem for p in operations.glob('*.py')} - FRAME - {'__init__'}
    assert {'verify', 'reencrypt', 'fleet'} <= commands
    for path in sorted(operations.glob('*.py')):
        for module in _operations_imported(path):
            assert module in FRAME, f'operations/{path.name} imports operations.{module}: only the frame is shared'


def test_the_frame_imports_no_command():
    for stem in FRAME:
        for module in _operations_imported(PACKAGE / 'operations' / f'{stem}.py'):
            assert module in FRAME, f'operations/{stem}.py imports operations.{module}'


def test_the_command_table_loads_without_azure_cli_past_the_loader():
    """The wiring (commands, _params, _help, _validators and what they import) needs nothing of azure.cli but the
    loader class: az loads it for every command, and azclierror and the rest are imported when a command runs."""
    import subprocess
    import sys
    import textwrap
    script = textwrap.dedent("""
        import importlib, importlib.abc, sys, types
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == 'azure.cli' or name.startswith('azure.cli.'):
                    raise ModuleNotFoundError(name)
        sys.meta_path.insert(0, Block())
        core = types.ModuleType('azure.cli.core')
        core.AzCommandsLoader = type('AzCommandsLoader', (), {})
        sys.modules['azure.cli.core'] = core
        for name in ('commands', '_params', '_help', '_validators'):
            importlib.import_module('azext_kmsverify.' + name)
    """)
    done = subprocess.run([sys.executable, '-c', script], cwd=PACKAGE.parent, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
