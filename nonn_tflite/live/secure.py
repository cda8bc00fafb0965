"""Per-node identity on the broker: users, an ACL and (optionally) client certificates.

With one shared password every node can publish as any device, or publish results. Here each
node gets its own identity and the broker itself enforces where it may publish and read, with
mosquitto's own mechanisms: its password file (PBKDF2-SHA512, hashed by ``mosquitto_passwd``),
its ACL file, and TLS with ``require_certificate`` and ``use_identity_as_username`` (the
certificate's CN is the user the ACL sees, so a stolen password alone is worth nothing).
Certificates are made with the ``openssl`` CLI; no cryptography is implemented here.

Roles and what the ACL lets them do (topics from :class:`~nonn_tflite.live.protocol.Topics`):

===========  ===========================================  ==================================
user         publishes                                    reads
===========  ===========================================  ==================================
device-<k>   feature/<k>, status/device-<k>, stats/...    image
fusion       prediction, status/fusion[-i], stats/...     feature/+, status/+, image
source       image, status/source, stats/source           prediction, stats/+
dashboard    nothing                                      everything of the deployment
===========  ===========================================  ==================================

Mosquitto drops an unauthorised PUBLISH silently (the client sees no error): a device that
tries another device's topic, or the results topic, simply reaches no one.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from nonn_tflite.deployment import Deployment
from nonn_tflite.errors import NonnError, UsageError
from nonn_tflite.live.broker import (
    LOOPBACK,
    BrokerProcess,
    mosquitto_broker,
    mosquitto_security_lines,
)
from nonn_tflite.live.mqtt import BrokerConfig

PASSWORD_FILE = "passwd"
ACL_FILE = "acl"
CONF_FILE = "mosquitto.conf"
MANIFEST = "broker-config.json"
CREDENTIALS = "credentials.json"
CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.crt", "server.key"
# mosquitto_passwd's own default for its "$7$" (sha512-pbkdf2) hashes. Stretching adds
# nothing for our passwords: they are 192 random bits, not words someone could guess.
PBKDF2_ITERATIONS = 101
PBKDF2_SALT_BYTES = 12


class SecureSetupError(NonnError):
    """A tool needed to make keys or hashes failed (openssl, mosquitto_passwd)."""


@dataclass(frozen=True)
class SecureConfig:
    """How ``broker-config`` lays out the broker; see :func:`write_broker_config`."""

    host: str = LOOPBACK             # where nodes reach the broker: URL + server certificate
    port: int | None = None          # default 1883, or 8883 with TLS
    bind: str | None = None          # listener address (default: host if an IP, else all)
    tls: bool = False                # client certificates instead of passwords
    names: tuple[str, ...] = ()      # more names/addresses in the server certificate
    fusion_workers: int = 1          # fusion-0..N-1 share the fusion user when N > 1
    days: int = 365                  # certificate validity

    @property
    def listen_port(self) -> int:
        return self.port or (8883 if self.tls else 1883)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.listen_port}"


@dataclass(frozen=True)
class Role:
    """One broker user and the topics the ACL grants it."""

    username: str
    publish: tuple[str, ...]
    read: tuple[str, ...]


def fusion_names(workers: int) -> list[str]:
    """Node names the fusion user may speak for (``demo --fusion-workers`` naming)."""
    return ["fusion"] + ([f"fusion-{i}" for i in range(workers)] if workers > 1 else [])


def roles(deployment: Deployment, fusion_workers: int = 1) -> list[Role]:
    """Every user of a deployment, least privilege first to last."""
    t = deployment.topics
    out = [Role(f"device-{s.id}", (t.feature(s.id), t.status(f"device-{s.id}"),
                                   t.stats(f"device-{s.id}")), (t.image,))
           for s in sorted(deployment.students, key=lambda s: s.id)]
    fusion_own = [topic for n in fusion_names(fusion_workers) for topic in (t.status(n),
                                                                             t.stats(n))]
    out.append(Role("fusion", (t.prediction, *fusion_own), (t.features, t.status_all, t.image)))
    out.append(Role("source", (t.image, t.status("source"), t.stats("source")),
                    (t.prediction, t.stats_all)))
    out.append(Role("dashboard", (), (f"{t.prefix}/#",)))
    return out


def acl_text(deployment: Deployment, role_list: list[Role]) -> str:
    """A mosquitto ACL file: nothing for anyone not listed (no anonymous section)."""
    lines = [f"# NoNN deployment {deployment.name}: written by `nonn-tflite broker-config`.",
             "# Everything not granted here is denied; mosquitto drops a denied PUBLISH "
             "silently.", ""]
    for role in role_list:
        lines.append(f"user {role.username}")
        lines += [f"topic write {topic}" for topic in role.publish]
        lines += [f"topic read {topic}" for topic in role.read]
        lines.append("")
    return "\n".join(lines)


# ---- passwords ----------------------------------------------------------------------------

def new_password() -> str:
    return secrets.token_urlsafe(24)


def pbkdf2_line(username: str, password: str, salt: bytes | None = None,
                iterations: int = PBKDF2_ITERATIONS) -> str:
    """One ``user:$7$iterations$salt$hash`` line, the format mosquitto 2 reads (what
    ``mosquitto_passwd`` writes): PBKDF2-HMAC-SHA512 from hashlib, base64 salt and hash."""
    salt = salt if salt is not None else secrets.token_bytes(PBKDF2_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return (f"{username}:$7${iterations}${base64.b64encode(salt).decode()}$"
            f"{base64.b64encode(digest).decode()}")


def write_password_file(path: Path, passwords: dict[str, str],
                        tool: str | None = None) -> str:
    """Hashed password file (0600); returns how it was hashed. ``mosquitto_passwd -U`` hashes
    a plain file in place (passwords never appear on a command line); without the tool the
    same format is written here."""
    for user in passwords:
        if not user or ":" in user or "\n" in user:
            raise UsageError(f"user name {user!r} cannot go in a mosquitto password file")
    tool = tool if tool is not None else shutil.which("mosquitto_passwd")
    if tool:
        write_private(path, "".join(f"{u}:{p}\n" for u, p in passwords.items()))
        done = subprocess.run([tool, "-U", str(path)], capture_output=True, text=True,
                              timeout=60)
        if done.returncode != 0 or "$7$" not in path.read_text():
            path.unlink(missing_ok=True)  # it may still hold the plain passwords
            raise SecureSetupError(f"mosquitto_passwd -U failed: "
                                   f"{(done.stderr or done.stdout).strip()[:200]}")
        os.chmod(path, 0o600)
        return "mosquitto_passwd"
    write_private(path, "".join(pbkdf2_line(u, p) + "\n" for u, p in passwords.items()))
    return "pbkdf2-sha512"


# ---- certificates (openssl CLI) -----------------------------------------------------------

_OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca_ext]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = {san}
authorityKeyIdentifier = keyid
[client_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
"""


def _san(names: list[str]) -> str:
    out = []
    for name in dict.fromkeys(names):
        try:
            out.append(f"IP:{ipaddress.ip_address(name)}")
        except ValueError:
            out.append(f"DNS:{name}")
    return ", ".join(out)


@dataclass
class OpenSSL:
    """A CA and the certificates it signs, all EC P-256, made by the ``openssl`` CLI."""

    folder: Path
    days: int = 365
    exe: str = field(default_factory=lambda: shutil.which("openssl") or "")

    def __post_init__(self) -> None:
        if not self.exe:
            raise SecureSetupError("openssl not found; --tls needs the openssl command "
                                   "(apt-get install openssl)")

    def _run(self, *args: str) -> None:
        done = subprocess.run([self.exe, *args], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            last = (done.stderr or done.stdout).strip().splitlines()
            raise SecureSetupError(f"openssl {args[0]} failed: {last[-1] if last else '?'}")

    def _cnf(self, san: str) -> Path:
        path = self.folder / "openssl.cnf"
        path.write_text(_OPENSSL_CNF.format(san=san))
        return path

    def make_ca(self, cert: Path, key: Path, common_name: str) -> None:
        cnf = self._cnf("DNS:unused")
        self._run("req", "-x509", "-new", "-config", str(cnf), "-extensions", "ca_ext",
                  "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                  "-keyout", str(key), "-out", str(cert), "-days", str(self.days),
                  "-subj", f"/CN={common_name}")
        os.chmod(key, 0o600)

    def make_cert(self, ca: tuple[Path, Path], cert: Path, key: Path, common_name: str,
                  server_names: list[str] | None = None) -> None:
        """A leaf certificate: a server one (with these SAN names) or a client one (CN =
        the broker user name, which mosquitto's ``use_identity_as_username`` reads)."""
        cnf = self._cnf(_san(server_names or ["unused"]))
        csr = key.with_suffix(".csr")
        self._run("req", "-new", "-config", str(cnf), "-newkey", "ec", "-pkeyopt",
                  "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key),
                  "-out", str(csr), "-subj", f"/CN={common_name}")
        os.chmod(key, 0o600)
        self._run("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
                  "-set_serial", f"0x{secrets.token_hex(16)}", "-days", str(self.days),
                  "-extfile", str(cnf), "-extensions",
                  "server_ext" if server_names else "client_ext", "-out", str(cert))
        csr.unlink()


# ---- credentials --------------------------------------------------------------------------

@dataclass(frozen=True)
class Credentials:
    """What one node needs to connect as itself; file paths are absolute once loaded."""

    node: str
    username: str
    broker: str                      # URL without user or password
    password: str | None = None
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None

    def broker_config(self, url: str | None = None, protocol: str = "auto",
                      cafile: str | None = None, certfile: str | None = None,
                      keyfile: str | None = None) -> BrokerConfig:
        """The connection settings; ``url`` (host and port) and explicit TLS files win over
        the file's. A user name in ``url`` conflicts with the file and is refused."""
        config = BrokerConfig.from_url(url or self.broker, cafile=cafile or self.cafile,
                                       certfile=certfile or self.certfile,
                                       keyfile=keyfile or (None if certfile else self.keyfile),
                                       protocol=protocol)
        if config.username is not None:
            raise UsageError(f"give the user either in the --broker URL or in --credentials, "
                             f"not both (URL {config.url})")
        if self.password is None:  # certificate identity: the broker ignores any user name
            return config
        return replace(config, username=self.username, password=self.password)

    def to_json(self, relative_to: Path) -> str:
        def rel(path: str | None) -> str | None:
            return None if path is None else os.path.relpath(path, relative_to)

        data = {"node": self.node, "username": self.username, "broker": self.broker,
                "password": self.password, "cafile": rel(self.cafile),
                "certfile": rel(self.certfile), "keyfile": rel(self.keyfile)}
        return json.dumps({k: v for k, v in data.items() if v is not None}, indent=2) + "\n"


def load_credentials(path: Path | str) -> Credentials:
    """Read a node's credentials file; its TLS paths are relative to the file's folder."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--credentials {path}: cannot read it ({exc})") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"--credentials {path}: not JSON ({exc.msg}, line {exc.lineno})") \
            from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), str)
                                             for k in ("node", "username", "broker")):
        raise UsageError(f"--credentials {path}: expected a JSON object with node, username "
                         f"and broker (as `nonn-tflite broker-config` writes it)")
    files = {}
    for key in ("cafile", "certfile", "keyfile"):
        value = data.get(key)
        if value is not None:
            resolved = (path.parent / value).resolve()
            if not resolved.is_file():
                raise UsageError(f"--credentials {path}: {key} {resolved} does not exist")
            files[key] = str(resolved)
    password = data.get("password")
    if password is not None and not isinstance(password, str):
        raise UsageError(f"--credentials {path}: password must be a string")
    return Credentials(node=data["node"], username=data["username"], broker=data["broker"],
                       password=password, **files)


def write_private(path: Path, text: str) -> None:
    """Write a secret atomically, readable by its owner only (0600 from the first byte)."""
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ---- the whole configuration ----------------------------------------------------------------

@dataclass(frozen=True)
class BrokerSetup:
    """A written configuration: where its files are, and how to start mosquitto with it."""

    folder: Path
    config: SecureConfig
    users: tuple[str, ...]
    hashed_by: str | None            # "mosquitto_passwd" / "pbkdf2-sha512"; None with TLS

    @property
    def conf(self) -> Path:
        return self.folder / CONF_FILE

    @property
    def acl(self) -> Path:
        return self.folder / ACL_FILE

    def credentials_path(self, user: str) -> Path:
        return self.folder / "nodes" / user / CREDENTIALS

    def credentials(self, user: str) -> Credentials:
        return load_credentials(self.credentials_path(user))

    def broker_process(self, workdir: Path, executable: str | None = None) -> BrokerProcess:
        """mosquitto on 127.0.0.1 with these files (our launcher: own user, logs to workdir)."""
        tls = self.folder / "tls"
        return mosquitto_broker(
            workdir, self.config.listen_port,
            password_file=None if self.config.tls else self.folder / PASSWORD_FILE,
            tls=(tls / SERVER_CERT, tls / SERVER_KEY) if self.config.tls else None,
            executable=executable, acl_file=self.acl,
            client_ca=tls / CA_CERT if self.config.tls else None,
            identity_from_cert=self.config.tls)


def write_broker_config(deployment: Deployment, out: Path, config: SecureConfig = SecureConfig(),
                        force: bool = False) -> BrokerSetup:
    """Write users, ACL, optional CA and certificates, and one credentials file per node into
    ``out``: built in a private temp folder next to it and renamed, so ``out`` is never half
    written. An existing ``out`` is replaced only with ``force`` (its secrets would change)."""
    out = Path(out).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise UsageError(f"{out} already exists; pass --force to replace it (every node then "
                         f"needs its new credentials)")
    if config.fusion_workers < 1:
        raise UsageError("fusion workers must be at least 1")
    role_list = roles(deployment, config.fusion_workers)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))  # 0700
    try:
        setup = _write_into(tmp, out, deployment, config, role_list)
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return setup


def _write_into(tmp: Path, out: Path, deployment: Deployment, config: SecureConfig,
                role_list: list[Role]) -> BrokerSetup:
    users = [r.username for r in role_list]
    (tmp / ACL_FILE).write_text(acl_text(deployment, role_list))
    passwords: dict[str, str] = {}
    hashed_by = None
    if config.tls:
        _make_certificates(tmp, config, users)
    else:
        passwords = {u: new_password() for u in users}
        hashed_by = write_password_file(tmp / PASSWORD_FILE, passwords)
    for user in users:
        node_dir = tmp / "nodes" / user
        node_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        node_dir.parent.chmod(0o700)
        tls = {}
        if config.tls:
            tls = {"cafile": str(node_dir / CA_CERT), "certfile": str(node_dir / f"{user}.crt"),
                   "keyfile": str(node_dir / f"{user}.key")}
        creds = Credentials(node=user, username=user, broker=config.url,
                            password=passwords.get(user), **tls)
        write_private(node_dir / CREDENTIALS, creds.to_json(node_dir))
    tls_files = (tmp / "tls" / SERVER_CERT, tmp / "tls" / SERVER_KEY) if config.tls else None
    security = mosquitto_security_lines(
        password_file=None if config.tls else out / PASSWORD_FILE, acl_file=out / ACL_FILE,
        tls=None if tls_files is None else (out / "tls" / SERVER_CERT, out / "tls" / SERVER_KEY),
        client_ca=out / "tls" / CA_CERT if config.tls else None, identity_from_cert=config.tls)
    (tmp / CONF_FILE).write_text(_conf_text(deployment, config, security))
    manifest = {"deployment": deployment.name, "broker": config.url, "tls": config.tls,
                "identity": "certificate CN" if config.tls else "password",
                "password_hash": hashed_by, "users": users,
                "credentials": {u: f"nodes/{u}/{CREDENTIALS}" for u in users}}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return BrokerSetup(out, config, tuple(users), hashed_by)


def _make_certificates(tmp: Path, config: SecureConfig, users: list[str]) -> None:
    tls = tmp / "tls"
    tls.mkdir(mode=0o700)
    ssl = OpenSSL(tls, config.days)
    ca = (tls / CA_CERT, tls / CA_KEY)
    ssl.make_ca(*ca, common_name=f"NoNN broker CA {secrets.token_hex(4)}")
    ssl.make_cert(ca, tls / SERVER_CERT, tls / SERVER_KEY, config.host,
                  server_names=[config.host, *config.names])
    for user in users:
        node_dir = tmp / "nodes" / user
        node_dir.mkdir(parents=True, mode=0o700)
        ssl.make_cert(ca, node_dir / f"{user}.crt", node_dir / f"{user}.key", user)
        shutil.copyfile(ca[0], node_dir / CA_CERT)
    (tls / "openssl.cnf").unlink()


def _conf_text(deployment: Deployment, config: SecureConfig, security: list[str]) -> str:
    bind = config.bind
    if bind is None:
        try:
            bind = str(ipaddress.ip_address(config.host))
        except ValueError:
            bind = ""  # a host name: listen on every address
    head = [f"# mosquitto configuration for NoNN deployment {deployment.name}",
            "# written by `nonn-tflite broker-config`; start with: mosquitto -c <this file>",
            "# Paths are absolute: after moving this folder, edit them. mosquitto must be able",
            "# to read the password file / server key (chown them to its user).",
            "per_listener_settings false",
            f"listener {config.listen_port} {bind}".rstrip(),
            "set_tcp_nodelay true"]
    return "\n".join(head + security) + "\n"


def _swap_in(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    os.chmod(out, 0o700)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
