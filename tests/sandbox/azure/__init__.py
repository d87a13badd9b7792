"""The Azure emulators (no Azure is reachable here): Azure Resource Manager (arm, with Resource Graph in
resourcegraph), Entra ID (the entra package) and a real ``az login`` to them (azlogin)."""
