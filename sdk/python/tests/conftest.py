"""Fixtures: a real `keygate serve` built from this repository.

The server binary is $KEYGATE_BIN, or target/debug/keygate at the repository
root, built with `cargo build -p keygate-server` when missing. The tests fail,
never skip, when it cannot be started.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

import keygate


@dataclass(frozen=True)
class KeygateServer:
    address: str
    admin_key: str


def _repo_root() -> Path:
    for directory in Path(__file__).resolve().parents:
        if (directory / "Cargo.toml").is_file() and (directory / "proto").is_dir():
            return directory
    raise RuntimeError("repository root (Cargo.toml beside proto/) not found")


def _keygate_binary() -> Path:
    if env := os.environ.get("KEYGATE_BIN"):
        path = Path(env)
        if not path.is_file():
            raise RuntimeError(f"KEYGATE_BIN={env} does not exist")
        return path
    root = _repo_root()
    path = root / "target" / "debug" / "keygate"
    if not path.is_file():
        subprocess.run(["cargo", "build", "-p", "keygate-server"], cwd=root, check=True)
    if not path.is_file():
        raise RuntimeError(f"`cargo build -p keygate-server` did not produce {path}")
    return path


def free_address() -> str:
    """A 127.0.0.1 address whose port was free just now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def _wait_serving(address: str, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"keygate serve exited early with {process.returncode}")
            try:
                response = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"keygate at {address} not SERVING after {timeout}s")
            time.sleep(0.1)


@pytest.fixture(scope="session")
def keygate_server() -> Iterator[KeygateServer]:
    binary = _keygate_binary()
    directory = Path(tempfile.mkdtemp(prefix="keygate-py-sdk-"))
    database_url = f"sqlite://{directory / 'kg.db'}?mode=rwc"
    try:
        bootstrap = subprocess.run(
            [binary, "bootstrap", "--owner", "acme", "--database-url", database_url],
            check=True,
            capture_output=True,
            text=True,
        )
        admin_key = bootstrap.stdout.strip()
        assert admin_key.startswith("kg_live_") and "\n" not in admin_key, bootstrap.stdout

        address = free_address()
        log = (directory / "serve.log").open("wb")
        process = subprocess.Popen(
            [binary, "serve", "--listen", address, "--database-url", database_url],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            try:
                _wait_serving(address, process)
            except RuntimeError as error:
                raise RuntimeError(f"{error}\n{(directory / 'serve.log').read_text()}") from None
            yield KeygateServer(address=address, admin_key=admin_key)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                code = process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise
            finally:
                log.close()
            assert code == 0, f"keygate serve exited with {code} after SIGTERM"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def admin(keygate_server: KeygateServer) -> Iterator[keygate.Client]:
    with keygate.Client(
        keygate_server.address, management_key=keygate_server.admin_key, insecure=True
    ) as client:
        yield client
