"""Where the tests find the project and its fixtures (all inside the repository)."""

from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
FIXTURES = PROJECT / 'tests' / 'fixtures'
