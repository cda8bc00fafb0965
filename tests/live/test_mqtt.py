"""Broker URLs, connection errors, authentication and socket options, against real brokers."""

from __future__ import annotations

import subprocess
import time

import pytest

from nonn_tflite.errors import NonnError, UsageError
from nonn_tflite.live.broker import free_port, mosquitto_broker
from nonn_tflite.live.mqtt import (
    BrokerAuthError,
    BrokerConfig,
    BrokerError,
    Connection,
    ConnectionConfig,
    tcp_nodelay_enabled,
)

pytestmark = pytest.mark.timeout(60)


def _connect(url: str, **kw) -> Connection:
    broker = BrokerConfig.from_url(url, protocol=kw.pop("protocol", "auto"))
    return Connection(broker, ConnectionConfig("nonn-test-" + str(time.monotonic_ns() % 10**6),
                                               connect_timeout_s=kw.pop("timeout", 5.0), **kw))


# ---- URLs -------------------------------------------------------------------------------------

def test_url_parsing() -> None:
    b = BrokerConfig.from_url("mqtts://us%40er:p%3Aw@gw.local:8884")
    assert (b.host, b.port, b.tls, b.username, b.password) == ("gw.local", 8884, True, "us@er",
                                                               "p:w")
    assert b.url == "mqtts://us%40er:***@gw.local:8884"  # the password never reaches a log
    assert BrokerConfig.from_url(b.to_url(redact=False)) == b
    assert BrokerConfig.from_url("mqtt://h").port == 1883
    assert BrokerConfig.from_url("mqtts://h").port == 8883


@pytest.mark.parametrize("url", ["http://h:1883", "h:1883", "mqtt://:1883", "mqtt://h:99999",
                                 "mqtt://h:1883/path", "mqtt://h:x"])
def test_bad_urls_are_usage_errors(url: str) -> None:
    with pytest.raises(UsageError, match="broker URL"):
        BrokerConfig.from_url(url)


def test_missing_tls_files_are_usage_errors(tmp_path) -> None:
    with pytest.raises(UsageError, match="cafile"):
        BrokerConfig.from_url("mqtts://h", cafile=str(tmp_path / "nope.pem"))


# ---- connections ----------------------------------------------------------------------------

def test_unreachable_broker_is_one_line_error() -> None:
    conn = _connect(f"mqtt://127.0.0.1:{free_port()}", timeout=1.0)
    with pytest.raises(BrokerError) as exc:
        conn.start()
    assert "cannot connect" in str(exc.value) and "refused" in str(exc.value).lower()
    assert "\n" not in str(exc.value)
    assert isinstance(exc.value, NonnError)


def test_mosquitto_connection_uses_mqtt5_and_nodelay(mosquitto) -> None:
    conn = _connect(mosquitto.url).start()
    try:
        assert conn.protocol == "5"
        assert tcp_nodelay_enabled(conn)
    finally:
        conn.stop()


def test_amqtt_falls_back_to_311_with_nodelay(amqtt_broker) -> None:
    # status_topic sets a will: amqtt never answers such an MQTT 5 CONNECT
    conn = _connect(amqtt_broker.url, status_topic="nonn/t/status/x").start()
    try:
        assert conn.protocol == "3.1.1"
        assert tcp_nodelay_enabled(conn)
    finally:
        conn.stop()


def test_status_is_retained_and_last_will_says_offline(mosquitto) -> None:
    seen: list[tuple[str, bytes]] = []
    watcher = _connect(mosquitto.url, subscriptions=("nonn/t/status/+",))
    watcher._on_message_cb = lambda topic, payload, t: seen.append((topic, payload))
    node = _connect(mosquitto.url, status_topic="nonn/t/status/dev").start()
    watcher.start()  # subscribes after the fact: gets the retained "online"
    try:
        _wait(lambda: (("nonn/t/status/dev", b"online") in seen))
        node._client.socket().close()  # die without DISCONNECT: the broker sends the will
        node._client.loop_stop()
        _wait(lambda: seen[-1] == ("nonn/t/status/dev", b"offline"))
    finally:
        node._halt()
        watcher.stop()


def _wait(cond, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.02)


# ---- authentication -------------------------------------------------------------------------

@pytest.fixture
def secure_mosquitto(tmp_path):
    pw = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pw), "alice", "s3cret"], check=True,
                   capture_output=True)
    pw.chmod(0o644)
    broker = mosquitto_broker(tmp_path / "mq", password_file=pw).start()
    yield broker
    broker.stop()


@pytest.mark.parametrize("user", ["", "alice:wrong@"])
def test_auth_refused_with_clear_error(secure_mosquitto, user: str) -> None:
    url = f"mqtt://{user}127.0.0.1:{secure_mosquitto.port}"
    with pytest.raises(BrokerAuthError) as exc:
        _connect(url).start()
    msg = str(exc.value)
    assert "refused" in msg and "not authorized" in msg and "--broker URL" in msg
    assert "\n" not in msg and "wrong" not in msg  # one line, password not shown


def test_auth_accepted_with_password(secure_mosquitto) -> None:
    conn = _connect(f"mqtt://alice:s3cret@127.0.0.1:{secure_mosquitto.port}").start()
    assert conn.connected.is_set()
    conn.stop()


def test_cli_reports_auth_failure_in_one_line(secure_mosquitto, tiny_run, cli) -> None:
    done = subprocess.run(cli("device", str(tiny_run), "--student", "0", "--broker",
                              f"mqtt://127.0.0.1:{secure_mosquitto.port}"),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: broker") and "not authorized" in lines[-1]
    assert "Traceback" not in done.stderr


def test_cli_bad_broker_url_is_usage_error(tiny_run, cli) -> None:
    done = subprocess.run(cli("fusion", str(tiny_run), "--broker", "tcp://x"),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "mqtt://" in done.stderr and "Traceback" not in done.stderr


# ---- TLS ------------------------------------------------------------------------------------

@pytest.fixture
def tls_mosquitto(tmp_path):
    """mqtts on loopback with a self-signed certificate for 127.0.0.1 (made with openssl)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    key.chmod(0o644)
    broker = mosquitto_broker(tmp_path / "mq", tls=(cert, key)).start()
    yield broker, cert
    broker.stop()


def test_mqtts_with_cafile(tls_mosquitto) -> None:
    broker, cert = tls_mosquitto
    assert broker.url.startswith("mqtts://")
    conn = Connection(BrokerConfig.from_url(broker.url, cafile=str(cert)),
                      ConnectionConfig("nonn-test-tls")).start()
    try:
        assert conn.protocol == "5" and tcp_nodelay_enabled(conn)
    finally:
        conn.stop()


def test_mqtts_untrusted_certificate_is_explained(tls_mosquitto) -> None:
    broker, _ = tls_mosquitto
    conn = Connection(BrokerConfig.from_url(broker.url),
                      ConnectionConfig("nonn-test-tls", connect_timeout_s=1.0))
    with pytest.raises(BrokerError, match="TLS failed: self.signed certificate.*--cafile"):
        conn.start()
