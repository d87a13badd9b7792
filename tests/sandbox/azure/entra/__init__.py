"""The Entra ID emulator (server.py)."""
