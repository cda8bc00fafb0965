"""One MQTT connection per node: URL parsing, TLS, last will, TCP_NODELAY, reconnect with backoff.

Every node (device, fusion, source, dashboard) talks to the broker through :class:`Connection`,
so the fiddly parts live in one place: paho 2.x callbacks (``CallbackAPIVersion.VERSION2``),
``TCP_NODELAY`` on every socket (Nagle + delayed ACK otherwise add 40-88 ms per hop),
subscriptions renewed on every reconnect, a retained ``online``/``offline`` status with the
``offline`` doubling as MQTT last will, and MQTT 5 with a fall-back to 3.1.1 for brokers such
as amqtt that only speak 3.1.1.
"""

from __future__ import annotations

import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from nonn_tflite.errors import NonnError, UsageError

log = logging.getLogger(__name__)

DEFAULT_URL = "mqtt://127.0.0.1:1883"
PROTOCOLS = ("auto", "5", "3.1.1")
AUTO_PROBE_S = 2.0
_VERSION_TROUBLE = {"Unsupported protocol version", "closed before CONNACK"}
_AUTH_FAILURES = {"Bad user name or password", "Not authorized", "Bad authentication method"}


class BrokerError(NonnError):
    """The broker could not be reached or refused us (exit code 1)."""


class BrokerAuthError(BrokerError):
    """The broker refused our credentials."""


@dataclass(frozen=True)
class BrokerConfig:
    """Where and how to connect; built from a ``mqtt://`` or ``mqtts://`` URL."""

    host: str = "127.0.0.1"
    port: int = 1883
    tls: bool = False
    username: str | None = None
    password: str | None = None
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    insecure: bool = False      # TLS without hostname/certificate checks (lab use only)
    protocol: str = "auto"      # "auto" (MQTT 5, falling back to 3.1.1), "5" or "3.1.1"
    keepalive: int = 10

    @classmethod
    def from_url(cls, url: str, *, cafile: str | None = None, certfile: str | None = None,
                 keyfile: str | None = None, insecure: bool = False,
                 protocol: str = "auto") -> BrokerConfig:
        """Parse ``mqtt[s]://[user[:password]@]host[:port]``; raises UsageError when malformed."""
        parts = urlsplit(url.strip())
        if parts.scheme not in ("mqtt", "mqtts"):
            raise UsageError(f"broker URL {url!r} must start with mqtt:// or mqtts:// "
                             "(e.g. mqtt://127.0.0.1:1883 or mqtts://user:pw@gw.local:8883)")
        try:
            port = parts.port
        except ValueError:
            raise UsageError(f"broker URL {url!r} has an invalid port") from None
        if not parts.hostname:
            raise UsageError(f"broker URL {url!r} has no host")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise UsageError(f"broker URL {url!r} must not have a path or query")
        if protocol not in PROTOCOLS:
            raise UsageError(f"MQTT protocol must be one of {', '.join(PROTOCOLS)}")
        for name, path in (("cafile", cafile), ("certfile", certfile), ("keyfile", keyfile)):
            if path is not None and not Path(path).is_file():
                raise UsageError(f"--{name} {path} does not exist")
        if keyfile and not certfile:
            raise UsageError("--keyfile needs --certfile")
        tls = parts.scheme == "mqtts" or bool(cafile or certfile)
        return cls(host=parts.hostname, port=port or (8883 if tls else 1883), tls=tls,
                   username=unquote(parts.username) if parts.username else None,
                   password=unquote(parts.password) if parts.password else None,
                   cafile=cafile, certfile=certfile, keyfile=keyfile, insecure=insecure,
                   protocol=protocol)

    @property
    def url(self) -> str:
        """The URL with the password hidden, for messages and logs."""
        return self.to_url(redact=True)

    def to_url(self, redact: bool = True) -> str:
        """Back to a URL; ``redact=False`` keeps the password (to hand to child processes)."""
        user = ""
        if self.username is not None:
            user = quote(self.username, safe="")
            if self.password is not None:
                user += ":" + ("***" if redact else quote(self.password, safe=""))
            user += "@"
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"


def make_client_id(node: str) -> str:
    """Unique per process: two nodes with one client id would keep kicking each other off."""
    return f"nonn-{node}-{secrets.token_hex(3)}"


MessageHandler = Callable[[str, bytes, float], None]  # topic, payload, receive time (monotonic)


@dataclass(frozen=True)
class ConnectionConfig:
    """Per-node connection settings."""

    client_id: str
    subscriptions: tuple[str, ...] = ()
    status_topic: str | None = None   # retained online/offline + last will
    connect_timeout_s: float = 10.0
    reconnect_min_s: float = 0.1      # backoff doubles from here ...
    reconnect_max_s: float = 2.0      # ... up to here while the broker is away
    max_queued: int = 64              # paho's own outgoing queue (QoS > 0), bounded
    qos: int = 0                      # of the subscriptions and of publish() unless given


class Connection:
    """A started paho client that keeps itself connected until :meth:`stop`."""

    def __init__(self, broker: BrokerConfig, config: ConnectionConfig,
                 on_message: MessageHandler | None = None) -> None:
        self.broker = broker
        self.config = config
        self._on_message_cb = on_message
        self.connected = threading.Event()
        self.connects = 0
        self.disconnects = 0
        self.protocol: str | None = None
        self._first = threading.Event()
        self._refusal: str | None = None
        self._client = None
        self._stopping = False
        self._halting = False
        self.unsolicited = 0
        # "$share/<group>/<filter>" delivers messages of <filter>
        self._filters = [t.split("/", 2)[2] if t.startswith("$share/") else t
                         for t in config.subscriptions]

    # ---- life cycle -------------------------------------------------------------------
    def start(self) -> Connection:
        """Connect (waiting for the first CONNACK); raises BrokerError/BrokerAuthError."""
        protocols = ["5", "3.1.1"] if self.broker.protocol == "auto" else [self.broker.protocol]
        deadline = time.monotonic() + self.config.connect_timeout_s
        for i, proto in enumerate(protocols):
            self._client = self._make_client(proto)
            self._first.clear()
            self._refusal = None
            self._client.connect_async(self.broker.host, self.broker.port, self.broker.keepalive)
            self._client.loop_start()
            remaining = max(0.0, deadline - time.monotonic())
            last = i + 1 == len(protocols)
            # Some 3.1.1-only brokers never answer an MQTT 5 CONNECT: do not wait for ever.
            self._first.wait(remaining if last else min(remaining, AUTO_PROBE_S))
            if self.connected.is_set():
                self.protocol = proto
                return self
            self._halt()
            if not last and (self._refusal is None or self._refusal in _VERSION_TROUBLE):
                log.debug("broker %s refused MQTT %s; trying 3.1.1", self.broker.url, proto)
                continue
            break
        raise self._start_error()

    def stop(self) -> None:
        """Publish ``offline`` (retained), disconnect cleanly and stop the network thread."""
        self._stopping = True
        client = self._client
        if client is None:
            return
        if self.connected.is_set() and self.config.status_topic:
            try:
                info = client.publish(self.config.status_topic, b"offline", qos=1, retain=True)
                info.wait_for_publish(timeout=1.0)
            except (RuntimeError, ValueError, OSError) as exc:  # shutting down anyway
                log.debug("offline status not delivered: %s", exc)
        self._halt()

    def publish(self, topic: str, payload: bytes, qos: int | None = None,
                retain: bool = False) -> bool:
        """Publish (QoS ``config.qos`` unless given); returns False (message dropped) while
        disconnected or when paho's bounded queue is full: nothing piles up."""
        client = self._client
        if client is None or not self.connected.is_set():
            return False
        qos = self.config.qos if qos is None else qos
        info = client.publish(topic, bytes(payload), qos=qos, retain=retain)
        return info.rc == 0

    @property
    def reconnects(self) -> int:
        return max(0, self.connects - 1)

    # ---- internals --------------------------------------------------------------------
    def _make_client(self, proto: str):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        version = mqtt.MQTTv5 if proto == "5" else mqtt.MQTTv311
        kwargs = {} if proto == "5" else {"clean_session": True}
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.config.client_id,
                             protocol=version, **kwargs)
        if self.broker.username is not None:
            client.username_pw_set(self.broker.username, self.broker.password)
        if self.broker.tls:
            self._set_tls(client)
        if self.config.status_topic:
            client.will_set(self.config.status_topic, b"offline", qos=1, retain=True)
        client.reconnect_delay_set(self.config.reconnect_min_s, self.config.reconnect_max_s)
        client.max_queued_messages_set(self.config.max_queued)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _set_tls(self, client) -> None:
        import ssl

        b = self.broker
        try:
            client.tls_set(ca_certs=b.cafile, certfile=b.certfile, keyfile=b.keyfile,
                           cert_reqs=ssl.CERT_NONE if b.insecure else ssl.CERT_REQUIRED)
            client.tls_insecure_set(b.insecure)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise UsageError(f"TLS set-up for {b.url} failed (check --cafile/--certfile/"
                             f"--keyfile): {exc}") from None

    def _halt(self) -> None:
        client = self._client
        if client is None:
            return
        self._halting = True
        try:
            client.disconnect()
        except (RuntimeError, ValueError, OSError) as exc:
            log.debug("disconnect: %s", exc)
        client.loop_stop()
        self.connected.clear()
        self._halting = False

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refusal = reason_code.getName()
            if not self.connected.is_set() and self.connects == 0:
                # at start-up the refusal becomes start()'s one-line error: no second line
                log.debug("broker %s refused connection: %s", self.broker.url, self._refusal)
                client.disconnect()  # do not hammer a broker that refuses us at start-up
            else:
                log.warning("broker %s refused connection: %s", self.broker.url, self._refusal)
            self._first.set()
            return
        _set_nodelay(client)
        self.connects += 1
        if self.connects > 1:
            log.info("reconnected to %s", self.broker.url)
        for topic in self.config.subscriptions:
            client.subscribe(topic, qos=self.config.qos)
        if self.config.status_topic:
            client.publish(self.config.status_topic, b"online", qos=1, retain=True)
        self.connected.set()
        self._first.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self.connects == 0 and not self._first.is_set() and not self._halting:
            # closed before any CONNACK: e.g. amqtt drops an MQTT 5 CONNECT carrying a will
            self._refusal = self._refusal or "closed before CONNACK"
            self._first.set()
        was = self.connected.is_set()
        self.connected.clear()
        if was:
            self.disconnects += 1
            if not self._stopping:
                log.warning("lost broker %s (%s); reconnecting", self.broker.url, reason_code)

    def _on_message(self, client, userdata, message) -> None:
        if not self._subscribed_to(message.topic):
            self.unsolicited += 1  # amqtt 0.12 leaks other topics' retained messages
            return
        if self._on_message_cb is not None:
            _guard(self._on_message_cb, message.topic, bytes(message.payload), time.monotonic())

    def _subscribed_to(self, topic: str) -> bool:
        from paho.mqtt.client import topic_matches_sub

        return any(topic_matches_sub(f, topic) for f in self._filters)

    def _start_error(self) -> BrokerError:
        url = self.broker.url
        if self._refusal in _AUTH_FAILURES:
            hint = ("give user:password in the --broker URL, or --credentials"
                    if self.broker.username is None
                    else "check the user name and password (--broker URL or --credentials)")
            return BrokerAuthError(f"broker {url} refused the connection: "
                                   f"{self._refusal.lower()} ({hint})")
        if self._refusal is not None:
            return BrokerError(f"broker {url} refused the connection: {self._refusal}")
        reason = _probe(self.broker)
        return BrokerError(f"cannot connect to broker {url} within "
                           f"{self.config.connect_timeout_s:g} s: {reason}")


def _set_nodelay(client) -> None:
    sock = client.socket()
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:  # e.g. a websocket transport
        log.debug("TCP_NODELAY not set: %s", exc)


def _guard(func: Callable, *args) -> None:
    """Run a callback; an exception must not kill paho's network thread (and so the node)."""
    try:
        func(*args)
    except Exception:
        log.exception("error in MQTT callback %s", getattr(func, "__qualname__", func))


def _probe(broker: BrokerConfig) -> str:
    """Why the connection fails, in words, for the error message (TLS errors included)."""
    import ssl

    try:
        with socket.create_connection((broker.host, broker.port), timeout=2.0) as sock:
            if broker.tls:
                ctx = ssl.create_default_context(cafile=broker.cafile)
                if broker.insecure:
                    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
                with ctx.wrap_socket(sock, server_hostname=broker.host):
                    pass
            return "TCP connects, but no MQTT answer (wrong port, or TLS/plain mismatch?)"
    except ssl.SSLError as exc:
        why = getattr(exc, "verify_message", None) or exc.reason or str(exc)
        return f"TLS failed: {why} (give the broker's CA with --cafile)"
    except OSError as exc:
        return exc.strerror or str(exc)


def tcp_nodelay_enabled(conn: Connection) -> bool:
    """For tests and diagnostics: is Nagle off on the live socket?"""
    client = conn._client
    sock = client.socket() if client is not None else None
    return bool(sock and sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

