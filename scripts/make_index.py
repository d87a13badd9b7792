#!/usr/bin/env python3
"""Write an extension index (``index.json``) for built wheels, in the azure-cli-extensions format.

``az extension add --name kmsverify`` and ``az extension update --name kmsverify`` read an index: the config setting
``extension.index_url`` (or ``AZURE_EXTENSION_INDEX_URL``) names it. Each entry is what azure-cli-extensions'
``src/index.json`` holds: ``downloadUrl``, ``filename``, ``sha256Digest`` and ``metadata``, the wheel's own metadata
plus ``azext_metadata.json``, read here by azure-cli's own reader (``WheelExtension.get_metadata``) from the unpacked
wheel, so the index says exactly what az will see once the wheel is installed.

Run with the Python of an az (``.venv-az/bin/python``):

    make_index.py --base-url https://example.org/kmsverify/ --out dist/index.json dist/*.whl [--merge OLD_INDEX]

``--merge`` keeps the entries of an index already published (older versions stay installable by ``--version``).
"""

import argparse
import hashlib
import json
import sys
import tempfile
import zipfile
from pathlib import Path


def wheel_entry(wheel: Path, base_url: str) -> tuple[str, dict]:
    from azure.cli.core.extension import WheelExtension  # the reader az itself uses for installed extensions

    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(tmp)
        name = wheel.name.split('-')[0].replace('_', '-')
        metadata = WheelExtension(name, tmp).get_metadata()
    if not metadata or not metadata.get('version'):
        raise SystemExit(f'{wheel}: no wheel metadata (is it an az extension wheel?)')
    metadata.pop('description', None)  # the README: az never reads it from an index, and it would double the file
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    return metadata['name'], {
        'downloadUrl': base_url.rstrip('/') + '/' + wheel.name,
        'filename': wheel.name,
        'sha256Digest': digest,
        'metadata': metadata,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n', 1)[0])
    parser.add_argument('wheels', nargs='+', type=Path)
    parser.add_argument('--base-url', required=True, help='where the wheels will be served from')
    parser.add_argument('--out', required=True, type=Path)
    parser.add_argument('--merge', type=Path, help='an index already published, whose entries are kept')
    args = parser.parse_args(argv)
    index = {'extensions': {}, 'formatVersion': '1'}
    if args.merge and args.merge.is_file():
        index = json.loads(args.merge.read_text(encoding='utf-8'))
    for wheel in args.wheels:
        name, entry = wheel_entry(wheel, args.base_url)
        entries = [e for e in index['extensions'].get(name, []) if e['filename'] != entry['filename']]
        index['extensions'][name] = entries + [entry]
    args.out.write_text(json.dumps(index, indent=4, sort_keys=True) + '\n', encoding='utf-8')
    print(f'{args.out}: ' + ', '.join(f'{n} {[e["metadata"]["version"] for e in es]}'
                                      for n, es in index['extensions'].items()), file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
