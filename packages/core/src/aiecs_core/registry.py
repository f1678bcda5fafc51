"""Plugin discovery and the service registry.

Plugins are found through the ``aiecs`` entry-point group. Each entry point is loaded and
asked for its services *in isolation*: a plugin that fails to import, or whose hook raises,
is recorded with its reason and the others keep working. ``AIECS_PLUGINS`` (comma-separated
entry-point names) restricts which plugins load; unset or empty means all.

Services are keyed ``(mode, service)``. Only operations a service declares can be resolved.

Duplicates fail loudly and never depend on load order (as in datasette, where a duplicate
registration is a start-up error rather than a silent override):

- two distributions with the same entry-point name: neither is loaded, both are reported;
- two plugins registering the same ``(mode, service)``: that service is refused for both
  (their other services still work), each plugin is reported with the other's name, and
  asking for the service raises :class:`ServiceNotFoundError` saying why. Uninstall one of
  them, or leave one out with ``AIECS_PLUGINS``.

Every failure shows in :attr:`ServiceRegistry.failures`, in ``aiecs plugins`` (exit 1)
and in the worker's start-up log (:meth:`ServiceRegistry.report`).

**Test services.** Mode ``test`` is reserved for services that exist for tests
(``test/echo``, ``test/buggy``: told to, they fail, sleep, or SIGKILL their worker). They
are served only when ``AIECS_TEST_SERVICES=1`` (the test suite, the benchmark and ``aiecs
dev`` set it); without it a plugin's ``test`` services are left out, and a plugin that
registers nothing else is listed as *disabled* with the reason (not a failure). Asking
for one raises :class:`ServiceNotFoundError` saying how to enable it.
"""

from __future__ import annotations

import importlib.metadata
import os
import threading
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .errors import OperationNotFoundError, PluginError, ServiceNotFoundError
from .redaction import register_env_secrets
from .service import OperationSpec, Service

__all__ = [
    "ALLOW_ENV",
    "TEST_MODE",
    "TEST_SERVICES_ENV",
    "PluginFailure",
    "PluginInfo",
    "ServiceRegistry",
    "get_registry",
    "load_plugins",
    "reset_registry",
    "test_services_enabled",
]

#: Environment variable holding the plugin allow-list.
ALLOW_ENV = "AIECS_PLUGINS"
#: Environment variable that enables the services of mode TEST_MODE.
TEST_SERVICES_ENV = "AIECS_TEST_SERVICES"
#: The mode reserved for services that exist only for tests.
TEST_MODE = "test"
_TRUE = {"1", "true", "yes", "on", "t", "y"}  # what the worker's settings read as true


def test_services_enabled() -> bool:
    """Whether ``AIECS_TEST_SERVICES`` enables the services of mode ``test``."""
    return os.environ.get(TEST_SERVICES_ENV, "").strip().lower() in _TRUE


@dataclass
class PluginInfo:
    """A plugin that loaded."""

    name: str
    distribution: str | None
    version: str | None
    services: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class PluginFailure:
    """A plugin that did not load, and why."""

    name: str
    distribution: str | None
    reason: str


def _allow_list(allow: Iterable[str] | str | None) -> set[str] | None:
    if allow is None:
        allow = os.environ.get(ALLOW_ENV, "")
    if isinstance(allow, str):
        allow = [part.strip() for part in allow.split(",")]
    names = {name for name in allow if name}
    return names or None


class ServiceRegistry:
    """Plugins, the services they registered, and lazily created service instances."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: list[PluginInfo] = []
        self._failures: list[PluginFailure] = []
        #: plugins not loaded on purpose (only test services, not enabled): not failures
        self.disabled: list[PluginFailure] = []
        #: (mode, service) of test services left out, and the plugin that registered them
        self._test_only: dict[tuple[str, str], str] = {}
        #: every plugin's claim on a key, in registration order; a key with one claim is
        #: served, a key with several is refused for all of them
        self._claims: dict[tuple[str, str], list[tuple[str, str | None, type[Service]]]] = {}
        self._instances: dict[tuple[str, str], Service] = {}
        self._lock = threading.Lock()

    # -- loading ---------------------------------------------------------------------------
    def load_entry_points(
        self,
        allow: Iterable[str] | str | None = None,
        entry_points: Iterable[importlib.metadata.EntryPoint] | None = None,
    ) -> None:
        """Load every plugin of the ``aiecs`` group (restricted by the allow-list)."""
        allowed = _allow_list(allow)
        if entry_points is None:
            entry_points = importlib.metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP)
        by_name: dict[str, list[importlib.metadata.EntryPoint]] = {}
        found: set[str] = set()
        for ep in entry_points:
            found.add(ep.name)
            if allowed is not None and ep.name not in allowed:
                continue
            by_name.setdefault(ep.name, []).append(ep)
        for name, eps in by_name.items():
            if len(eps) > 1:
                # Which one Python would find first depends on sys.path order: load none.
                dists = [_dist_name(ep) for ep in eps]
                for dist in dists:
                    others = ", ".join(d or "another distribution" for d in dists if d != dist)
                    self._failures.append(
                        PluginFailure(
                            name,
                            dist,
                            f"duplicate plugin name {name!r}: also provided by "
                            f"{others or 'another distribution'}; neither is loaded "
                            f"(uninstall one)",
                        )
                    )
                continue
            (ep,) = eps
            dist = _dist_name(ep)
            try:
                plugin = ep.load()
            except BaseException as exc:  # noqa: BLE001 - isolate anything a plugin raises
                if isinstance(exc, KeyboardInterrupt):
                    raise
                self._failures.append(
                    PluginFailure(ep.name, dist, f"import failed: {_describe(exc)}")
                )
                continue
            version = ep.dist.version if ep.dist is not None else None
            self.register_plugin(plugin, ep.name, distribution=dist, version=version)
        for name in sorted((allowed or set()) - found):
            self._failures.append(
                PluginFailure(name, None, f"listed in {ALLOW_ENV} but not installed")
            )

    def register_plugin(
        self,
        plugin: Any,
        name: str,
        *,
        distribution: str | None = None,
        version: str | None = None,
    ) -> PluginInfo | None:
        """Register one plugin object and collect its services, isolated from the others."""
        if self.pm.has_plugin(name) or any(p.name == name for p in self.plugins):
            self._failures.append(
                PluginFailure(name, distribution, f"duplicate plugin name {name!r}; not loaded")
            )
            return None
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:  # noqa: BLE001
            self._failures.append(PluginFailure(name, distribution, _describe(exc)))
            return None
        unknown = [
            impl.function.__name__
            for hook_name in dir(self.pm.hook)
            if not hook_name.startswith("_")
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls()
            if impl.plugin_name == name and not getattr(self.pm.hook, hook_name).has_spec()
        ]
        if unknown:
            self.pm.unregister(name=name)
            self._failures.append(
                PluginFailure(name, distribution, f"implements unknown hooks: {unknown}")
            )
            return None
        info = PluginInfo(name, distribution, version)
        staged: list[type[Service]] = []
        try:
            for impl in self.pm.hook.register_services.get_hookimpls():
                if impl.plugin_name == name:
                    kwargs = {"register": staged.append}
                    impl.function(*[kwargs[arg] for arg in impl.argnames])
            for service_cls in staged:
                self._check_service(service_cls)
        except BaseException as exc:  # noqa: BLE001 - as for imports: SystemExit included
            if isinstance(exc, KeyboardInterrupt):
                raise
            self.pm.unregister(name=name)
            self._failures.append(PluginFailure(name, distribution, _describe(exc)))
            return None
        if not test_services_enabled():
            left_out = [cls for cls in staged if cls.mode == TEST_MODE]
            staged = [cls for cls in staged if cls.mode != TEST_MODE]
            for cls in left_out:
                self._test_only[(cls.mode, cls.name)] = name
            if left_out and not staged:
                self.pm.unregister(name=name)
                names = ", ".join(sorted(f"{c.mode}/{c.name}" for c in left_out))
                self.disabled.append(PluginFailure(
                    name, distribution, f"test services only ({names}): enabled by "
                    f"{TEST_SERVICES_ENV}=1"))
                return None
        for service_cls in staged:
            key = (service_cls.mode, service_cls.name)
            claims = self._claims.setdefault(key, [])
            if any(owner == name for owner, _, _ in claims):
                continue  # the same plugin registered the key twice: one claim
            claims.append((name, distribution, service_cls))
            if len(claims) > 1:  # now refused for every claimant
                self._instances.pop(key, None)
            register_env_secrets(service_cls.secret_env)
            info.services.append(key)
        self.plugins.append(info)
        return info

    def templates(self) -> tuple[list[tuple[PluginInfo, dict[str, Any]]], list[PluginFailure]]:
        """The templates every loaded plugin ships (``register_templates``), each with its
        plugin; a plugin whose hook raises is a failure (its templates are left out), the
        others' are kept."""
        out: list[tuple[PluginInfo, dict[str, Any]]] = []
        failures: list[PluginFailure] = []
        by_name = {p.name: p for p in self.plugins}
        for impl in self.pm.hook.register_templates.get_hookimpls():
            info = by_name.get(impl.plugin_name)
            if info is None:
                continue
            staged: list[dict[str, Any]] = []
            try:
                kwargs = {"register": lambda t, staged=staged: staged.append(dict(t))}
                impl.function(*[kwargs[arg] for arg in impl.argnames])
            except Exception as exc:  # noqa: BLE001 - isolate what a plugin raises
                failures.append(PluginFailure(info.name, info.distribution,
                                              f"register_templates: {_describe(exc)}"))
                continue
            out += [(info, t) for t in staged]
        return out, failures

    def unregister_plugin(self, name: str) -> None:
        """Remove a plugin and its services (tests use this to clean up)."""
        for key in list(self._claims):
            claims = [c for c in self._claims[key] if c[0] != name]
            if len(claims) != len(self._claims[key]):
                self._instances.pop(key, None)
            if claims:
                self._claims[key] = claims
            else:
                del self._claims[key]
        self.plugins = [p for p in self.plugins if p.name != name]
        self.disabled = [p for p in self.disabled if p.name != name]
        self._test_only = {k: o for k, o in self._test_only.items() if o != name}
        if self.pm.has_plugin(name):
            self.pm.unregister(name=name)

    def plugin_for(self, mode: str, service: str) -> PluginInfo | None:
        """The plugin serving ``(mode, service)`` (its distribution and version), or None
        when no one plugin serves it."""
        claims = self._claims.get((mode, service))
        if not claims or len(claims) != 1:
            return None
        name = claims[0][0]
        return next((p for p in self.plugins if p.name == name), None)

    # -- failures ---------------------------------------------------------------------------
    @property
    def _services(self) -> dict[tuple[str, str], type[Service]]:
        return {key: claims[0][2] for key, claims in self._claims.items() if len(claims) == 1}

    @property
    def _owners(self) -> dict[tuple[str, str], str]:
        return {key: claims[0][0] for key, claims in self._claims.items() if len(claims) == 1}

    def conflicts(self) -> dict[tuple[str, str], list[str]]:
        """``(mode, service)`` registered by more than one plugin -> those plugins' names."""
        return {
            key: sorted(owner for owner, _, _ in claims)
            for key, claims in sorted(self._claims.items())
            if len(claims) > 1
        }

    @property
    def failures(self) -> list[PluginFailure]:
        """Plugins that did not load, and each plugin of a refused duplicate service."""
        result = list(self._failures)
        for (mode, service), claims in sorted(self._claims.items()):
            if len(claims) < 2:
                continue
            claims = sorted(claims, key=lambda claim: claim[0])  # not load order
            for owner, dist, _ in claims:
                others = ", ".join(
                    _plugin_label(o, d) for o, d, _ in claims if o != owner
                )
                result.append(
                    PluginFailure(
                        owner,
                        dist,
                        f"service {mode}/{service} is also registered by {others}: refused "
                        f"for both (uninstall one, or leave one out with {ALLOW_ENV})",
                    )
                )
        return result

    @staticmethod
    def _check_service(service_cls: Any) -> None:
        if not (isinstance(service_cls, type) and issubclass(service_cls, Service)):
            raise PluginError(f"register() takes a Service subclass, got {service_cls!r}")
        for attr in ("mode", "name"):
            if not isinstance(getattr(service_cls, attr, None), str):
                raise PluginError(f"{service_cls.__qualname__} must set a string {attr!r}")
        if not service_cls.operations:
            raise PluginError(f"{service_cls.__qualname__} declares no operations")
        secret_env = service_cls.secret_env
        if isinstance(secret_env, str) or not all(isinstance(n, str) for n in secret_env):
            raise PluginError(
                f"{service_cls.__qualname__}.secret_env must be a tuple of variable names"
            )

    # -- lookup -----------------------------------------------------------------------------
    def keys(self) -> list[tuple[str, str]]:
        """Every ``(mode, service)`` registered, sorted."""
        return sorted(self._services)

    def service_class(self, mode: str, service: str) -> type[Service]:
        """The service class registered under ``(mode, service)``."""
        key = (mode, service)
        claims = self._claims.get(key, [])
        if len(claims) == 1:
            return claims[0][2]
        if claims:
            owners = ", ".join(_plugin_label(o, d) for o, d, _ in sorted(claims))
            message = (
                f"service {mode}/{service} is registered by more than one plugin ({owners}) "
                f"and was refused for all of them: uninstall one, or leave one out with "
                f"{ALLOW_ENV}"
            )
        elif key in self._test_only:
            message = (f"service {mode}/{service} is a test service, not enabled here (it "
                       f"loads only with {TEST_SERVICES_ENV}=1)")
        else:
            available = ", ".join(f"{m}/{s}" for m, s in self.keys()) or "none"
            message = f"no service {service!r} in mode {mode!r}; available: {available}"
            if self._failures:
                message += "; plugins that failed to load: " + "; ".join(
                    f"{f.name} ({f.reason})" for f in self._failures
                )
        raise ServiceNotFoundError(message, mode=mode, service=service)

    def operation(self, mode: str, service: str, name: str) -> OperationSpec:
        """The declared operation ``name`` of ``(mode, service)``, or a clear error."""
        service_cls = self.service_class(mode, service)
        spec = service_cls.operations.get(name)
        if spec is None:
            available = ", ".join(sorted(service_cls.operations)) or "none"
            raise OperationNotFoundError(
                f"service {mode}/{service} has no operation {name!r}; available: {available}",
                mode=mode,
                service=service,
                operation=name,
            )
        return spec

    def instance(self, mode: str, service: str) -> Service:
        """The per-process instance of a service, created on first use."""
        key = (mode, service)
        inst = self._instances.get(key)
        if inst is None:
            service_cls = self.service_class(mode, service)
            with self._lock:
                inst = self._instances.get(key)
                if inst is None:
                    register_env_secrets(service_cls.secret_env)
                    inst = service_cls()
                    self._instances[key] = inst
        return inst

    def instances(self) -> list[Service]:
        """The service instances made so far."""
        return list(self._instances.values())

    def drop_instances(self) -> list[Service]:
        """Forget all instances (after a fork, or at shutdown) and return them."""
        with self._lock:
            dropped = list(self._instances.values())
            self._instances.clear()
        return dropped

    # -- listing ----------------------------------------------------------------------------
    def listing(self) -> dict[str, Any]:
        """Loaded and failed plugins, services and their operations (JSON-ready).

        A plugin whose service was refused as a duplicate appears under ``plugins`` (its
        other services work) and under ``failures``; ``conflicts`` names the refused keys.
        """
        services = self._services
        owners = self._owners
        return {
            "plugins": self._plugin_entries(),
            "failures": [
                {"name": f.name, "distribution": f.distribution, "reason": f.reason}
                for f in self.failures
            ],
            "disabled": [
                {"name": f.name, "distribution": f.distribution, "reason": f.reason}
                for f in self.disabled
            ],
            "conflicts": [
                {"service": f"{m}/{s}", "plugins": names}
                for (m, s), names in self.conflicts().items()
            ],
            "services": [
                {**services[key].describe(), "plugin": owners[key]} for key in sorted(services)
            ],
        }

    def _plugin_entries(self) -> list[dict[str, Any]]:
        """The ``plugins`` part of :meth:`listing`."""
        owners = self._owners
        return [
            {
                "name": p.name,
                "distribution": p.distribution,
                "version": p.version,
                "services": [f"{m}/{s}" for m, s in p.services if owners.get((m, s)) == p.name],
            }
            for p in self.plugins
        ]

    def report(self) -> list[tuple[int, str]]:
        """What was loaded and what failed, as ``(logging level, line)`` pairs: the worker
        logs them at start-up."""
        import logging

        lines: list[tuple[int, str]] = []
        # The listing's parts that name things only: no JSON schema is built at start-up.
        owners = self._owners
        listing = {
            "plugins": self._plugin_entries(),
            "failures": [
                {"name": f.name, "distribution": f.distribution, "reason": f.reason}
                for f in self.failures
            ],
            "services": [
                {"mode": m, "service": s, "plugin": owners[(m, s)],
                 "operations": dict.fromkeys(cls.operations)}
                for (m, s), cls in sorted(self._services.items())
            ],
        }
        by_plugin: dict[str, list[dict[str, Any]]] = {}
        for entry in listing["services"]:
            by_plugin.setdefault(entry["plugin"], []).append(entry)
        lines.append(
            (
                logging.INFO,
                f"plugins: {len(listing['plugins'])} loaded, {len(listing['failures'])} "
                f"failed, {len(listing['services'])} services",
            )
        )
        for p in sorted(listing["plugins"], key=lambda p: p["name"]):
            where = " ".join(x for x in (p["distribution"], p["version"]) if x)
            where = f" ({where})" if where else ""
            served = "; ".join(
                f"{e['mode']}/{e['service']}: {', '.join(sorted(e['operations']))}"
                for e in by_plugin.get(p["name"], [])
            )
            lines.append((logging.INFO, f"plugin {p['name']}{where}: {served or 'no services'}"))
        for f in self.disabled:
            where = f" ({f.distribution})" if f.distribution else ""
            lines.append((logging.INFO, f"plugin {f.name}{where} disabled: {f.reason}"))
        for failed in listing["failures"]:
            where = f" ({failed['distribution']})" if failed["distribution"] else ""
            lines.append(
                (logging.ERROR, f"plugin {failed['name']}{where} FAILED: {failed['reason']}"))
        return lines


def _dist_name(ep: importlib.metadata.EntryPoint) -> str | None:
    return ep.dist.name if ep.dist is not None else None


def _plugin_label(name: str, distribution: str | None) -> str:
    return f"plugin {name!r} ({distribution})" if distribution else f"plugin {name!r}"


def _describe(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" ({last[0].filename}:{last[0].lineno})" if last else ""
    return f"{type(exc).__name__}: {exc}{where}"


_registry: ServiceRegistry | None = None
_registry_lock = threading.Lock()


def load_plugins(allow: Iterable[str] | str | None = None) -> ServiceRegistry:
    """The process-wide registry, loading plugins on the first call only."""
    global _registry
    if _registry is None:
        with _registry_lock:
            if _registry is None:
                registry = ServiceRegistry()
                registry.load_entry_points(allow)
                _registry = registry
    return _registry


get_registry = load_plugins


def reset_registry() -> None:
    """Forget the process-wide registry (tests; the next call reloads plugins)."""
    global _registry
    with _registry_lock:
        _registry = None
