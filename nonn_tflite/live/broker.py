"""Brokers we start ourselves: the embedded amqtt (for `demo`) and mosquitto (tests, labs).

Both run as child processes bound to 127.0.0.1 only (amqtt's own default is 0.0.0.0): a demo on
a laptop must not open a port to the network. A pure-Python broker in its own process also
keeps its event loop from competing with the dashboard for the GIL.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from nonn_tflite.errors import NonnError

LOOPBACK = "127.0.0.1"


class BrokerStartError(NonnError):
    """A broker we launched did not come up."""


def free_port(host: str = LOOPBACK) -> int:
    """A port the kernel just called free (another process could still take it: tiny race)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


@dataclass
class BrokerProcess:
    """A broker child process; ``stop()`` is idempotent and always reaps the process."""

    argv: list[str]
    host: str
    port: int
    log_path: Path
    proc: subprocess.Popen | None = None
    env: dict[str, str] = field(default_factory=dict)
    tls: bool = False

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def start(self, timeout_s: float = 15.0) -> BrokerProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env={**os.environ, **self.env})
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                break
            if wait_for_port(self.host, self.port, 0.2):
                return self
        self.stop()
        raise BrokerStartError(f"broker `{' '.join(self.argv[:3])}` did not listen on "
                               f"{self.host}:{self.port}: {self.log_tail()}")

    def stop(self, timeout_s: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout_s)

    def kill(self) -> None:
        """SIGKILL without waiting (safe from a signal handler); stop() would wait and reap."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 3) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-n:]) or "(empty log)"

    def __enter__(self) -> BrokerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def embedded_broker(port: int | None = None, workdir: Path | None = None) -> BrokerProcess:
    """amqtt (MQTT 3.1.1 only) in a child process on 127.0.0.1; call ``.start()``."""
    port = port or free_port()
    workdir = Path(workdir or tempfile.mkdtemp(prefix="nonn-broker-"))
    return BrokerProcess([sys.executable, "-m", "nonn_tflite.live.broker", "--port", str(port)],
                         LOOPBACK, port, workdir / "amqtt.log",
                         env={"NONN_WATCH_PARENT": str(os.getpid())})


def mosquitto_security_lines(password_file: Path | None = None, acl_file: Path | None = None,
                             tls: tuple[Path, Path] | None = None, client_ca: Path | None = None,
                             identity_from_cert: bool = False) -> list[str]:
    """The listener's security settings, shared by our launcher and ``broker-config``.

    ``client_ca`` makes mosquitto demand a client certificate signed by that CA
    (``require_certificate``); ``identity_from_cert`` then takes the user name (for the ACL)
    from the certificate's CN, so no password is needed or accepted."""
    lines: list[str] = []
    if tls is not None:
        lines += [f"certfile {tls[0]}", f"keyfile {tls[1]}"]
        if client_ca is not None:
            lines += [f"cafile {client_ca}", "require_certificate true", "tls_version tlsv1.2"]
            if identity_from_cert:
                lines += ["use_identity_as_username true"]
    elif client_ca is not None:
        raise ValueError("a client CA needs a TLS listener")
    if password_file is not None or identity_from_cert:
        lines += ["allow_anonymous false"]
        if password_file is not None:
            lines += [f"password_file {password_file}"]
    else:
        lines += ["allow_anonymous true"]
    if acl_file is not None:
        lines += [f"acl_file {acl_file}"]
    return lines


def mosquitto_broker(workdir: Path, port: int | None = None, password_file: Path | None = None,
                     tls: tuple[Path, Path] | None = None,
                     executable: str | None = None, acl_file: Path | None = None,
                     client_ca: Path | None = None,
                     identity_from_cert: bool = False) -> BrokerProcess:
    """mosquitto with its own config: loopback listener, TCP_NODELAY, no persistence;
    ``tls=(certfile, keyfile)`` makes the listener mqtts. The security settings are those of
    :func:`mosquitto_security_lines`."""
    exe = executable or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        raise BrokerStartError("mosquitto not found (apt-get install mosquitto)")
    port = port or free_port()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    import pwd

    # run as whoever started us: as root, mosquitto would switch to user "mosquitto" and then
    # fail to read a password file in a private temp folder
    user = pwd.getpwuid(os.geteuid()).pw_name
    lines = [f"listener {port} {LOOPBACK}", f"user {user}", "set_tcp_nodelay true",
             "persistence false",
             "log_dest stderr", "log_type error", "log_type warning"]
    lines += mosquitto_security_lines(password_file, acl_file, tls, client_ca, identity_from_cert)
    conf = workdir / f"mosquitto-{port}.conf"
    conf.write_text("\n".join(lines) + "\n")
    return BrokerProcess([exe, "-c", str(conf)], LOOPBACK, port, workdir / f"mosquitto-{port}.log",
                         tls=tls is not None)


# ---- the embedded broker's own process --------------------------------------------------

async def _serve(host: str, port: int) -> None:
    from amqtt.broker import Broker

    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    broker = Broker(config)
    await broker.start()
    parent = os.environ.get("NONN_WATCH_PARENT")
    try:
        while not stop.is_set():
            if parent and parent.isdigit() and os.getppid() != int(parent):
                break  # exit with the demo that started us, never orphaned
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except TimeoutError:
                pass
    finally:
        await broker.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Embedded amqtt broker on 127.0.0.1.")
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--port", type=int, default=1883)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.CRITICAL)  # amqtt logs every probe connection
    asyncio.run(_serve(args.host, args.port))


if __name__ == "__main__":
    main()
