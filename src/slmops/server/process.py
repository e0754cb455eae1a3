"""A server in a child process: :mod:`slmops.serverprocess`, under the name the server's modules and tests use."""

from slmops.serverprocess import LOOPBACK, Outcome, ServerProcess, free_port, health, wait_ready

__all__ = ["LOOPBACK", "Outcome", "ServerProcess", "free_port", "health", "wait_ready"]
