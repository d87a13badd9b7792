"""The hostile-server harness: a small server that stands in for the Kubernetes API, ARM, Entra and Resource Graph
and misbehaves at a chosen phase (tests/sandbox/README.md, "Hostile harness"). Apart from the sandbox's normal path.
"""

from tests.sandbox.apiserver.hostile.server import BEHAVIOURS, HOSTILE_TEXT, PHASES, HostileServer, Recorder

__all__ = ['BEHAVIOURS', 'HOSTILE_TEXT', 'PHASES', 'HostileServer', 'Recorder']
