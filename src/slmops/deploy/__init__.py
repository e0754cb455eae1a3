"""`slmops deploy`: convert, evaluate, validate and register a model in one command."""

from slmops.deploy.pipeline import DeployFailed, DeployResult, deploy

__all__ = ["DeployFailed", "DeployResult", "deploy"]
