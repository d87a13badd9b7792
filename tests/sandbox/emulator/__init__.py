"""What only the Python API server emulator (``up --apiserver emulator``, and every fleet) uses: its HTTP routes
(handlers), its health probes (health) and its ``/metrics`` page (metrics; the secret store records into it).
The emulator's state, :class:`tests.sandbox.apiserver.APIServer`, and the modules it shares with the real
kube-apiserver's sandbox (store, objects, seed, pods, execws, auth, kube) stay in tests/sandbox."""
