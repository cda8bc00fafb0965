"""Per-node identity on a real mosquitto: `broker-config`'s users, ACL and client certificates.

Mosquitto drops an unauthorised PUBLISH without telling the publisher over MQTT 3.1.1, so the
ACL is checked the way it matters: a subscriber entitled to read the topic must not receive
the forged message, while an authorised publish sent after it on the same connection IS
delivered (the positive control that proves the subscriber was listening). Over MQTT 5 the
broker also answers a QoS 1 forgery with PUBACK "Not authorized", which is asserted too.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import threading
import time

import pytest

from nonn_tflite.errors import UsageError
from nonn_tflite.live.broker import free_port, mosquitto_broker
from nonn_tflite.live.mqtt import (
    BrokerAuthError,
    BrokerConfig,
    BrokerError,
    Connection,
    ConnectionConfig,
)
from nonn_tflite.live.secure import (
    SecureConfig,
    SecureSetupError,
    acl_text,
    load_credentials,
    pbkdf2_line,
    roles,
    write_broker_config,
    write_password_file,
)

pytestmark = pytest.mark.timeout(120)


def _need(tool: str) -> None:
    import shutil

    if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
        pytest.fail(f"{tool} is required for these tests (apt-get install {tool})")


@pytest.fixture(params=["password", "tls"])
def secure(request, deployment, tmp_path):
    """A broker-config (passwords, or client certificates) and mosquitto running with it."""
    _need("mosquitto")
    setup = write_broker_config(deployment, tmp_path / "cfg",
                                SecureConfig(port=free_port(), tls=request.param == "tls"))
    broker = setup.broker_process(tmp_path / "run").start()
    yield setup
    broker.stop()


class Listener:
    """A node's connection that records what it receives."""

    def __init__(self, broker: BrokerConfig, subscriptions: tuple[str, ...]) -> None:
        self.got: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.conn = Connection(broker, ConnectionConfig(
            f"test-{time.monotonic_ns()}", subscriptions=subscriptions, connect_timeout_s=5),
            on_message=self._on)
        self.conn.start()

    def _on(self, topic: str, payload: bytes, t: float) -> None:
        with self._lock:
            self.got.append((topic, payload))

    def has(self, topic: str, payload: bytes) -> bool:
        with self._lock:
            return (topic, payload) in self.got

    def wait_for(self, topic: str, payload: bytes, timeout: float = 5.0) -> None:
        end = time.monotonic() + timeout
        while not self.has(topic, payload):
            assert time.monotonic() < end, f"authorised {topic} {payload!r} never arrived"
            time.sleep(0.02)


def _as(setup, user: str) -> BrokerConfig:
    return setup.credentials(user).broker_config(protocol="5")


# ---- what the configuration says ------------------------------------------------------------

def test_acl_grants_each_role_only_its_own_topics(deployment):
    t = deployment.topics
    by_user = {r.username: r for r in roles(deployment)}
    ids = sorted(s.id for s in deployment.students)
    assert set(by_user) == {*(f"device-{k}" for k in ids), "fusion", "source", "dashboard"}
    for k in ids:
        assert set(by_user[f"device-{k}"].publish) == {
            t.feature(k), t.status(f"device-{k}"), t.stats(f"device-{k}")}
        assert by_user[f"device-{k}"].read == (t.image,)
    writers = {topic: {r.username for r in by_user.values() if topic in r.publish}
               for topic in (t.prediction, t.image)}
    assert writers == {t.prediction: {"fusion"}, t.image: {"source"}}
    assert by_user["dashboard"].publish == ()
    text = acl_text(deployment, list(by_user.values()))
    assert text.splitlines()[3] == "user device-0"  # no anonymous grants before the first user
    assert "#" not in text.split("user dashboard")[0].replace("# ", "")


def test_files_are_private_and_credentials_load(deployment, tmp_path):
    setup = write_broker_config(deployment, tmp_path / "cfg", SecureConfig())
    for user in setup.users:
        path = setup.credentials_path(user)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        creds = load_credentials(path)
        assert creds.username == user and len(creds.password) >= 32
    assert stat.S_IMODE((setup.folder / "passwd").stat().st_mode) == 0o600
    lines = (setup.folder / "passwd").read_text().splitlines()
    assert len(lines) == len(setup.users) and all("$7$" in line for line in lines)
    conf = setup.conf.read_text()
    assert "allow_anonymous false" in conf and f"acl_file {setup.acl}" in conf
    with pytest.raises(UsageError, match="already exists"):
        write_broker_config(deployment, tmp_path / "cfg", SecureConfig())
    old = load_credentials(setup.credentials_path("fusion")).password
    write_broker_config(deployment, tmp_path / "cfg", SecureConfig(), force=True)
    assert load_credentials(setup.credentials_path("fusion")).password != old
    assert [p.name for p in tmp_path.iterdir()] == ["cfg"]  # no partial folders left


def test_mosquitto_passwd_hashes_in_the_format_we_can_verify(tmp_path):
    """mosquitto_passwd's line and ours are the same PBKDF2-SHA512 over the same salt."""
    _need("mosquitto_passwd")
    import base64

    path = tmp_path / "pw"
    assert write_password_file(path, {"alice": "s3cret"}) == "mosquitto_passwd"
    user, rest = path.read_text().strip().split(":", 1)
    _, kind, iterations, salt, _ = rest.split("$")
    assert (user, kind) == ("alice", "7")
    ours = pbkdf2_line("alice", "s3cret", base64.b64decode(salt), int(iterations))
    assert ours == path.read_text().strip()


def test_fallback_hashes_are_accepted_by_mosquitto(tmp_path):
    """Without mosquitto_passwd we write the file ourselves; the real broker must take it."""
    _need("mosquitto")
    pw = tmp_path / "pw"
    assert write_password_file(pw, {"alice": "s3cret"}, tool="") == "pbkdf2-sha512"
    broker = mosquitto_broker(tmp_path / "mq", password_file=pw).start()
    try:
        ok = Connection(BrokerConfig.from_url(f"mqtt://alice:s3cret@127.0.0.1:{broker.port}"),
                        ConnectionConfig("test-fallback")).start()
        ok.stop()
        with pytest.raises(BrokerAuthError):
            Connection(BrokerConfig.from_url(f"mqtt://alice:wrong@127.0.0.1:{broker.port}"),
                       ConnectionConfig("test-fallback-bad")).start()
    finally:
        broker.stop()


def test_missing_openssl_fails_in_one_line_and_writes_nothing(deployment, tmp_path,
                                                              monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(SecureSetupError, match="openssl not found.*apt-get install openssl"):
        write_broker_config(deployment, tmp_path / "cfg", SecureConfig(tls=True))
    assert list(tmp_path.iterdir()) == []


def test_credentials_and_url_user_conflict(deployment, tmp_path):
    setup = write_broker_config(deployment, tmp_path / "cfg", SecureConfig(port=1999))
    creds = setup.credentials("device-0")
    b = creds.broker_config()
    assert (b.host, b.port, b.username) == ("127.0.0.1", 1999, "device-0")
    assert creds.password not in b.url  # redacted in every log line
    assert creds.broker_config("mqtt://gw.local:1884").host == "gw.local"
    with pytest.raises(UsageError, match="either in the --broker URL or in --credentials"):
        creds.broker_config("mqtt://other:pw@gw.local:1884")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UsageError, match="not JSON"):
        load_credentials(bad)


# ---- the broker enforces it -------------------------------------------------------------------

def test_anonymous_and_strangers_are_refused(secure, tmp_path):
    url = secure.config.url
    if not secure.config.tls:
        with pytest.raises(BrokerAuthError, match="not authorized"):
            Connection(BrokerConfig.from_url(url), ConnectionConfig("anon")).start()
        wrong = BrokerConfig.from_url(url.replace("://", "://device-0:guess@"))
        with pytest.raises(BrokerAuthError):
            Connection(wrong, ConnectionConfig("guess")).start()
        return
    ca = secure.credentials("device-0").cafile
    # TLS that trusts the broker, but no client certificate: the handshake is refused
    with pytest.raises(BrokerError):
        Connection(BrokerConfig.from_url(url, cafile=ca),
                   ConnectionConfig("anon", connect_timeout_s=3)).start()
    # a certificate from another CA, even with a device's name, is refused too
    from nonn_tflite.live.secure import OpenSSL

    other = tmp_path / "other"
    other.mkdir()
    ssl = OpenSSL(other)
    ssl.make_ca(other / "ca.crt", other / "ca.key", "someone else")
    ssl.make_cert((other / "ca.crt", other / "ca.key"), other / "d.crt", other / "d.key",
                  "device-0")
    with pytest.raises(BrokerError):
        Connection(BrokerConfig.from_url(url, cafile=ca, certfile=str(other / "d.crt"),
                                         keyfile=str(other / "d.key")),
                   ConnectionConfig("stranger", connect_timeout_s=3)).start()


def test_a_device_publishes_only_where_it_belongs(secure, deployment):
    """device-0's identity cannot forge device-1's vector or status, an image, or a result."""
    t = deployment.topics
    fusion = Listener(_as(secure, "fusion"), (t.features, t.status_all, t.image))
    source = Listener(_as(secure, "source"), (t.prediction,))
    dashboard = Listener(_as(secure, "dashboard"), (f"{t.prefix}/#",))
    device0 = Connection(_as(secure, "device-0"), ConnectionConfig("test-device-0")).start()
    try:
        forged = [(t.feature(1), b"forged feature"), (t.status("device-1"), b"offline"),
                  (t.prediction, b"forged result"), (t.image, b"forged image")]
        for topic, payload in forged:
            device0.publish(topic, payload, qos=1)  # the broker drops these
        assert device0.publish(t.feature(0), b"own feature", qos=1)  # positive control
        fusion.wait_for(t.feature(0), b"own feature")
        dashboard.wait_for(t.feature(0), b"own feature")
        fusion_conn = Connection(_as(secure, "fusion"), ConnectionConfig("test-fusion")).start()
        fusion_conn.publish(t.prediction, b"real result", qos=1)
        source.wait_for(t.prediction, b"real result")
        dashboard.wait_for(t.prediction, b"real result")
        fusion_conn.stop()
        time.sleep(0.3)
        for topic, payload in forged:
            for who in (fusion, source, dashboard):
                assert not who.has(topic, payload), f"device-0 reached {topic}"
    finally:
        device0.stop()
        for who in (fusion, source, dashboard):
            who.conn.stop()


def test_mqtt5_puback_names_each_refusal(secure, deployment):
    """The refusals as the broker states them: PUBACK reason codes of a raw MQTT 5 client."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    t = deployment.topics
    b = _as(secure, "device-0")
    acks: dict[int, str] = {}
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-raw-device-0",
                         protocol=mqtt.MQTTv5)
    if b.password:
        client.username_pw_set(b.username, b.password)
    if b.tls:
        client.tls_set(ca_certs=b.cafile, certfile=b.certfile, keyfile=b.keyfile)
    client.on_connect = lambda c, u, f, rc, p: done.set()
    client.on_publish = lambda c, u, mid, rc, p: acks.__setitem__(mid, rc.getName())
    client.connect(b.host, b.port)
    client.loop_start()
    try:
        assert done.wait(5)
        topics = [t.feature(0), t.feature(1), t.status("device-1"), t.prediction, t.image]
        mids = {topic: client.publish(topic, b"x", qos=1).mid for topic in topics}
        end = time.monotonic() + 5
        while len(acks) < len(mids) and time.monotonic() < end:
            time.sleep(0.02)
        result = {topic: acks.get(mid) for topic, mid in mids.items()}
        print(f"device-0 PUBACKs ({secure.config.url.split(':')[0]}):", json.dumps(result))
        assert result[t.feature(0)] in ("Success", "No matching subscribers")  # accepted
        for topic in topics[1:]:
            assert result[topic] == "Not authorized", result
    finally:
        client.loop_stop()
        client.disconnect()


def test_a_deployment_runs_end_to_end_with_its_own_identities(secure, live_nodes_secure):
    nodes = live_nodes_secure(secure, frames=40)
    score = nodes.source.run()
    assert score.frames == 40 and len(score.predictions) == 40
    assert all(d.stats()["inferences"] >= 40 for d in nodes.devices)
    assert nodes.fusions[0].stats()["complete"] == 40


@pytest.fixture
def live_nodes_secure(deployment, tiny_run):
    """Devices, fusion and source in this process, each with its own credentials."""
    from nonn_tflite.live.device import DeviceConfig, DeviceNode
    from nonn_tflite.live.fusion import FusionConfig, FusionNode
    from nonn_tflite.live.source import SourceConfig, SourceNode, load_images

    started = []

    class Nodes:
        pass

    def make(setup, frames: int):
        n = Nodes()
        n.devices = [DeviceNode(deployment, _as(setup, f"device-{s.id}"), DeviceConfig(s.id))
                     for s in deployment.students]
        n.fusions = [FusionNode(deployment, _as(setup, "fusion"),
                                FusionConfig(deadline_ms=2000))]
        n.source = SourceNode(deployment, _as(setup, "source"),
                              load_images(deployment, tiny_run),
                              SourceConfig(rate=50, frames=frames, drain_s=3.0))
        for node in (*n.devices, *n.fusions, n.source):
            node.start()
            started.append(node)
        return n

    yield make
    for node in reversed(started):
        node.stop()


# ---- the commands ---------------------------------------------------------------------------

def test_broker_config_cli_never_prints_a_password(tiny_run, tmp_path, cli):
    out = tmp_path / "cfg"
    done = subprocess.run(cli("broker-config", tiny_run, "--out", out),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "broker-config.json").read_text())
    assert "device-0" in done.stdout and f"mosquitto -c {out / 'mosquitto.conf'}" in done.stdout
    for user in manifest["users"]:
        password = load_credentials(out / manifest["credentials"][user]).password
        assert password not in done.stdout + done.stderr
        assert password not in (out / "passwd").read_text()
    again = subprocess.run(cli("broker-config", tiny_run, "--out", out),
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "--force" in again.stderr
    assert "Traceback" not in again.stderr


def test_demo_secure_runs_over_tls_with_client_certificates(tiny_run, tmp_path, cli, procs):
    """`demo --secure`: mosquitto with broker-config --tls; each node its own certificate."""
    _need("mosquitto")
    summary, logs = tmp_path / "s.json", tmp_path / "logs"
    p = subprocess.Popen(cli("demo", tiny_run, "--secure", "--rate", "40", "--frames", "60",
                             "--no-dashboard", "--summary", summary, "--log-dir", logs),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs.append(p)
    stdout, stderr = p.communicate(timeout=100)
    assert p.returncode == 0, stderr[-2000:]
    s = json.loads(summary.read_text())
    assert s["secure"] and s["broker"].startswith("mqtts://") and not s["embedded_broker"]
    assert s["frames"] == 60 and s["predicted"] == 60 and s["rejected"] == 0
    conf = next(logs.glob("mosquitto-*.conf")).read_text()
    assert "require_certificate true" in conf and "use_identity_as_username true" in conf
    assert "password_file" not in conf
    for name in ("device-0", "device-1", "fusion"):  # each child got its own credentials
        creds = load_credentials(logs / "broker-config" / "nodes" / name / "credentials.json")
        assert creds.password is None and creds.certfile.endswith(f"{name}.crt")


def test_demo_secure_refuses_a_broker(tiny_run):
    from click.testing import CliRunner

    from nonn_tflite.cli import main

    result = CliRunner().invoke(main, ["demo", str(tiny_run), "--secure", "--broker",
                                       "mqtt://127.0.0.1:1883"])
    assert result.exit_code == 2 and "--secure starts its own mosquitto" in result.output
