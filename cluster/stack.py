"""The local stack as one object: which services exist, in which order they start and stop.

Start order follows dependencies (the broker and stores before Ray, whose jobs use them); stop order
is the reverse; the region Serve applications (``settings.with_serving``) come last, once the
head is healthy, and stop with it. ``up`` is idempotent: a healthy service is left alone, a dead
one is restarted.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cluster.secrets import load_or_create_secrets, read_secrets
from cluster.services.base import Service, ServiceStatus
from cluster.services.dynamodb import DynamoDBService
from cluster.services.haproxy import FrontDoorService
from cluster.services.kafka import kafka_services
from cluster.services.offline import OfflineStoreService
from cluster.services.ray_head import RayHeadService, head_process
from cluster.services.ray_worker import worker_services
from cluster.services.redis import redis_services
from cluster.serving import ServingService
from cluster.settings import Secrets, StackSettings


@dataclass(frozen=True)
class Stack:
    settings: StackSettings
    secrets: Secrets
    services: tuple[Service, ...]

    @classmethod
    def build(
        cls,
        settings: StackSettings,
        environ: Mapping[str, str] | None = None,
        *,
        create_secrets: bool = True,
    ) -> Stack:
        """The stack of ``settings.state_dir``. Without ``create_secrets`` (status, logs, down)
        the passwords are only read, never generated or written: a command that does not start
        Redis leaves no secrets file behind."""
        env = os.environ if environ is None else environ
        load = load_or_create_secrets if create_secrets else read_secrets
        secrets = load(settings.secrets_file, env)
        services: list[Service] = [*kafka_services(settings)]
        for region in settings.topology:
            services += redis_services(settings, region, secrets)
            services.append(DynamoDBService(settings, region))
        services.append(OfflineStoreService(settings))
        if settings.with_ray:
            services.append(RayHeadService(settings))
            services += worker_services(settings)  # they join the head, and stop before it
        if settings.with_serving:
            services.append(ServingService(settings, head_process(settings)))
        if settings.with_ray:
            # After Serve: each region's front door forwards to Serve's ingress on the head.
            services += [FrontDoorService(settings, name) for name in settings.topology.names]
        return cls(settings, secrets, tuple(services))

    def service(self, name: str) -> Service:
        for service in self.services:
            if service.name == name:
                return service
        raise KeyError(f"no service {name!r}; services: {', '.join(s.name for s in self.services)}")

    def up(self, on_started: Callable[[ServiceStatus], None] | None = None) -> list[ServiceStatus]:
        """Start every service that is not healthy, in dependency order; return their statuses."""
        self.settings.log_dir.mkdir(parents=True, exist_ok=True)
        statuses = []
        for service in self.services:
            service.start()
            status = service.status()
            statuses.append(status)
            if on_started is not None:
                on_started(status)
        return statuses

    def down(self, *, purge: bool = False) -> list[str]:
        """Stop what the stack started (by pid file), in reverse order; return the stopped names.

        With ``purge`` the services are killed rather than shut down: their data is deleted next,
        so a graceful stop (Ray's drain of up to 30 s, Kafka's controlled shutdown, Redis's final
        save) would only delay the purge."""
        stopped = [s.name for s in reversed(self.services) if s.stop(graceful=not purge)]
        if purge:
            for service in self.services:
                service.purge()
            shutil.rmtree(self.settings.run_dir, ignore_errors=True)
        return stopped

    def status(self) -> list[ServiceStatus]:
        """Each service's state as seen from this state dir (see ``cluster.services.base``);
        writes nothing."""
        return [service.status() for service in self.services]
