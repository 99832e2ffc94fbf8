"""The feature registry on Kafka: a user's feature repository, planned and applied as versions.

``freshline plan PATH`` reads a feature repository (a folder of YAML documents, see
``features.registry``), validates every catalog rule and prints what it changes against the
latest applied version; ``freshline apply PATH`` publishes it as the next version.

Storage: the registry topic (``actors.config.REGISTRY_TOPIC``, one partition, compacted), one
record per version, key ``<tenant>/v<number>``, value ``RegistryVersion.encode()``. Keys are unique
per version, so compaction keeps the whole history (a rollback needs it) while a rewritten record
of the same version would replace the old one.

Applying is a compare-and-set on the latest number. Every apply of a tenant uses the same
transactional id, so starting one (``init_transactions``) fences any apply still in flight, whose
commit then fails; and it reads the topic only after fencing, so it sees every version committed
before it. Two concurrent applies therefore never both publish the same number: the loser raises
:class:`RegistryConflict` and nothing of it is visible.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import yaml

from actors.config import REGISTRY_TOPIC
from actors.registry_feed import RegistryUnavailable, latest
from features.catalog import Catalog
from features.errors import CatalogError, ConfigError
from features.registry import (
    Change,
    RegistryVersion,
    RepositoryError,
    catalog_from_documents,
    digest,
    plan,
)
from features.rollout import merge_repository

_SUFFIXES = (".yaml", ".yml")


class RegistryConflict(ConfigError):
    """The registry changed between reading its latest version and publishing the next."""


def load_repository(path: Path) -> Catalog:
    """The catalog of the repository at ``path``: every ``*.yaml``/``*.yml`` below it."""
    if not path.is_dir():
        raise RepositoryError(f"{path} is not a folder of feature definitions")
    files = sorted(p for p in path.rglob("*") if p.suffix in _SUFFIXES and p.is_file())
    if not files:
        raise RepositoryError(f"{path} holds no .yaml or .yml definitions")
    documents = {}
    for file in files:
        name = str(file.relative_to(path))
        try:
            documents[name] = yaml.safe_load(file.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise RepositoryError(f"not valid YAML{where}", document=name) from None
    return catalog_from_documents(documents)


def _key(tenant: str, number: int) -> bytes:
    return f"{tenant}/v{number}".encode()


@dataclass(frozen=True)
class Plan:
    """What applying a repository would do: ``changes`` against ``current`` (None: empty)."""

    current: RegistryVersion | None
    catalog: Catalog
    changes: list[Change]

    @property
    def next_number(self) -> int:
        return (self.current.number if self.current else 0) + 1

    def lines(self) -> list[str]:
        base = f"v{self.current.number}" if self.current else "an empty registry"
        if not self.changes:
            return [f"no changes against {base}"]
        head = f"against {base} (digest {digest(self.catalog)[:12]}), v{self.next_number} would:"
        return [head, *(f"  {change}" for change in self.changes)]


def make_plan(bootstrap: str, tenant: str, path: Path) -> Plan:
    """The plan of applying the repository at ``path``: a view whose version changed starts a
    rollout (``features.rollout.merge_repository``) instead of replacing the served version."""
    proposed = load_repository(path)  # an invalid repository is refused before Kafka is asked
    current = latest(bootstrap, tenant)
    before = current.catalog if current else None
    catalog = merge_repository(before, proposed)
    return Plan(current, catalog, plan(before, catalog))


def plan_change(bootstrap: str, tenant: str, change: Callable[[Catalog], Catalog]) -> Plan:
    """The plan of publishing ``change(latest catalog)`` (a rollout step), against the latest
    version; :class:`RegistryError` when nothing was applied yet."""
    current = latest(bootstrap, tenant)
    if current is None:
        raise CatalogError("nothing is applied yet: apply a repository first")
    catalog = change(current.catalog)
    return Plan(current, catalog, plan(current.catalog, catalog))


# A transactional call of an apply waits at most this long; the broker aborts the transaction
# after the same time, so a call given up on cannot commit later.
TRANSACTION_WAIT_S = 30.0


def within(seconds: float, what: str, call: Callable[[], object]) -> None:
    """``call()`` on a daemon thread, waited for at most ``seconds``. kafka-python 3.0's
    transactional calls wait without a timeout for a request its sender may drop after a broker
    restart (docs/pipeline.md, the commit protocol); an apply must fail with a
    clear error instead of hanging. An exception of ``call`` is raised here."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as exc:  # handed to the caller below
            outcome.append(exc)

    worker = threading.Thread(target=run, name="registry-transaction", daemon=True)
    worker.start()
    worker.join(seconds)
    if not outcome:
        raise RegistryUnavailable(
            f"{REGISTRY_TOPIC}: {what} did not finish within {seconds:.0f} s (the broker aborts "
            "it); apply again"
        )
    if outcome[0] is not None:
        raise outcome[0]


class Publisher:
    """One apply's transactional producer. :meth:`fence` first (it fences every other apply of
    the tenant still in flight), then :meth:`publish`."""

    def __init__(self, bootstrap: str, tenant: str) -> None:
        from kafka import KafkaProducer

        self._bootstrap, self._tenant = bootstrap, tenant
        _ensure_topic(bootstrap)
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            transactional_id=f"freshline-registry-{tenant}",
            acks="all",
            enable_idempotence=True,
            transaction_timeout_ms=int(TRANSACTION_WAIT_S * 1000),
        )

    def fence(self) -> None:
        within(TRANSACTION_WAIT_S, "fencing other applies", self._producer.init_transactions)

    def publish(self, planned: Plan, now: Callable[[], datetime]) -> RegistryVersion:
        """Read the registry (after :meth:`fence`), check it is still at ``planned.current``
        and publish the next version in one transaction."""
        from kafka.errors import KafkaError, ProducerFencedError

        then = planned.current.number if planned.current else 0
        seen = latest(self._bootstrap, self._tenant)
        if (seen.number if seen else 0) != then:
            raise RegistryConflict(
                f"the registry moved from v{then} to v{seen.number if seen else 0} since the "
                "plan; plan again"
            )
        version = RegistryVersion(then + 1, then, planned.catalog, now())
        try:
            self._producer.begin_transaction()
            self._producer.send(
                REGISTRY_TOPIC, key=_key(self._tenant, version.number), value=version.encode()
            )
            within(TRANSACTION_WAIT_S, "the commit", self._producer.commit_transaction)
        except ProducerFencedError:
            raise RegistryConflict("another apply of this registry started meanwhile") from None
        except KafkaError as exc:
            raise RegistryUnavailable(f"{REGISTRY_TOPIC}: {type(exc).__name__}") from exc
        return version

    def close(self) -> None:
        self._producer.close(timeout=5)


def apply(
    bootstrap: str,
    tenant: str,
    planned: Plan,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> RegistryVersion | None:
    """Publish ``planned`` as the next version if the registry is still at ``planned.current``
    (else :class:`RegistryConflict`). Returns the new version, or None when nothing changed."""
    if not planned.changes:
        return None
    publisher = Publisher(bootstrap, tenant)
    try:
        publisher.fence()
        return publisher.publish(planned, now)
    finally:
        publisher.close()


def _ensure_topic(bootstrap: str) -> None:
    """Create the registry topic when a cluster lacks it (the local stack creates it)."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="freshline-registry")
    try:
        if REGISTRY_TOPIC in set(admin.list_topics()):
            return
        brokers = len(admin.describe_cluster()["brokers"])
        topic = NewTopic(
            REGISTRY_TOPIC, 1, min(3, brokers), topic_configs={"cleanup.policy": "compact"}
        )
        with contextlib.suppress(TopicAlreadyExistsError):  # another apply created it meanwhile
            admin.create_topics([topic], timeout_ms=30_000, wait_for_metadata=True)
    finally:
        admin.close()
