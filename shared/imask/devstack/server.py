"""The one shape every server of the stack has, so ``up``/``down``/``status`` drive them all alike.

A server with one process (Redis, MLflow, and the next ones) subclasses :class:`OneProcessServer` and says only
what is its own: name, port, folder, command and health check.  Kafka, with its N brokers, implements
:class:`Server` itself.
"""

from __future__ import annotations

import shutil
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar, Protocol

from imask.devstack import supervisor
from imask.devstack.settings import StackSettings
from imask.devstack.supervisor import Daemon


class Server(Protocol):
    """A server of the stack: its processes, how to start the missing ones, its status, its data."""

    @property
    def name(self) -> str:
        """Its key in ``imask stack status``."""
        ...

    def enabled(self, s: StackSettings) -> bool:
        """Whether ``up`` starts it and ``status`` lists it (``down`` stops it in any case)."""
        ...

    def daemons(self, s: StackSettings) -> list[Daemon]:
        """Its processes under these settings."""
        ...

    def leftovers(self, s: StackSettings) -> list[Daemon]:
        """What ``down`` stops: its processes, plus any started earlier under other settings."""
        ...

    def start(self, s: StackSettings, missing: Sequence[Daemon]) -> list[subprocess.Popen[bytes]]:
        """Start these of its processes (none of them runs), in that order; the supervisor waits for them."""
        ...

    def status(self, s: StackSettings) -> dict[str, object]:
        """Its entry in ``imask stack status``."""
        ...

    def endpoint(self, s: StackSettings) -> str:
        """Where clients reach it."""
        ...

    def wipe(self, s: StackSettings) -> None:
        """Delete its data (it is stopped); downloads are kept."""
        ...


class OneProcessServer(ABC):
    """A server that is one process with its own folder: ``<folder>/<name>.pid`` and ``<folder>/<name>.log``."""

    name: ClassVar[str]
    marker: ClassVar[str]
    """Part of its command line (see :attr:`Daemon.marker`)."""
    port_env: ClassVar[str]
    """The setting that moves it to another port, named in the error when its port is taken."""
    start_timeout_s: ClassVar[float]
    env: ClassVar[Mapping[str, str]] = {}

    @abstractmethod
    def port(self, s: StackSettings) -> int: ...

    @abstractmethod
    def folder(self, s: StackSettings) -> Path: ...

    @abstractmethod
    def endpoint(self, s: StackSettings) -> str: ...

    @abstractmethod
    def command(self, s: StackSettings) -> list[str]: ...

    @abstractmethod
    def answering(self, s: StackSettings) -> bool: ...

    def enabled(self, s: StackSettings) -> bool:
        return True

    def environment(self, s: StackSettings) -> Mapping[str, str]:
        """What its process gets on top of the caller's environment (`env`, unless the settings shape it)."""
        return self.env

    def daemon(self, s: StackSettings) -> Daemon:
        folder = self.folder(s)
        return Daemon(self.name, self.marker, folder / f"{self.name}.pid", folder / f"{self.name}.log", self.port(s),
                      lambda: self.answering(s), self.start_timeout_s)

    def daemons(self, s: StackSettings) -> list[Daemon]:
        return [self.daemon(s)]

    def leftovers(self, s: StackSettings) -> list[Daemon]:
        return self.daemons(s)

    def start(self, s: StackSettings, missing: Sequence[Daemon]) -> list[subprocess.Popen[bytes]]:
        [daemon] = missing
        supervisor.check_port_free(daemon.port, self.name, self.port_env)
        cmd = self.command(s)
        self.folder(s).mkdir(parents=True, exist_ok=True)
        return [supervisor.spawn(daemon, cmd, cwd=self.folder(s), env=self.environment(s))]

    def status(self, s: StackSettings) -> dict[str, object]:
        daemon = self.daemon(s)
        pid = supervisor.live_pid(daemon)
        return {"running": pid is not None, "pid": pid, "port": daemon.port,
                "answering": supervisor.answering(daemon), "endpoint": self.endpoint(s)}

    def wipe(self, s: StackSettings) -> None:
        shutil.rmtree(self.folder(s), ignore_errors=True)
