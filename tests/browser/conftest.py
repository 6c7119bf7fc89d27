"""Fixtures for the console's browser test: a real `keygate serve --console`
on a throwaway SQLite database with a bootstrapped admin key, the project's
Python SDK to use keys through the Authorize RPC, and headless Chromium
driven by Selenium through Debian's chromedriver."""

import os
import pathlib
import socket
import subprocess
import tempfile
import time
import urllib.request

import keygate as keygate_sdk
import pytest
from keygate.v1 import authorization_pb2
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

ROOT = pathlib.Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Keygate:
    def __init__(self, binary: str, workdir: pathlib.Path):
        self.db = f"sqlite://{workdir / 'keygate.db'}?mode=rwc"
        self.binary = binary
        self.admin_key = subprocess.run(
            [binary, "--database-url", self.db, "bootstrap", "--owner", "acme"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
        self.grpc = f"127.0.0.1:{free_port()}"
        self.http = f"127.0.0.1:{free_port()}"
        self.url = f"http://{self.http}"
        self.log = open(workdir / "keygate.log", "w")
        self.process = subprocess.Popen(
            [binary, "--database-url", self.db, "serve",
             "--listen", self.grpc,
             "--http-listen", self.http, "--console"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/healthz", timeout=1)
                break
            except OSError:
                if time.time() > deadline or self.process.poll() is not None:
                    raise RuntimeError("keygate did not start; see keygate.log")
                time.sleep(0.1)

        self.client = keygate_sdk.Client(self.grpc, insecure=True)

    def authorize(self, secret: str, *scopes: str, environment: str = "live"
                  ) -> authorization_pb2.AuthorizeResponse:
        """Uses `secret` through the Authorize RPC (the SDK's
        Client.authorize), asking for `scopes`: a deny is a response."""
        return self.client.authorize(
            secret, environment=environment, required_scopes=scopes, timeout=5)

    def stop(self) -> None:
        self.client.close()
        self.process.terminate()
        self.process.wait(timeout=15)
        self.log.close()


@pytest.fixture(scope="session")
def out_dir() -> pathlib.Path:
    path = pathlib.Path(os.environ.get("KEYGATE_BROWSER_OUT", ROOT / "target" / "browser-test"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def keygate(out_dir):
    binary = os.environ.get("KEYGATE_BIN", str(ROOT / "target" / "debug" / "keygate"))
    with tempfile.TemporaryDirectory() as workdir:
        server = Keygate(binary, pathlib.Path(workdir))
        try:
            yield server
        finally:
            server.stop()
            (out_dir / "keygate.log").write_text(
                (pathlib.Path(workdir) / "keygate.log").read_text())


@pytest.fixture(scope="session")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    profile = tempfile.mkdtemp(prefix="keygate-chromium-")
    for flag in [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--window-size=1280,800",
        f"--user-data-dir={profile}",
    ]:
        options.add_argument(flag)
    # The page's console messages, for the tests' check that the script
    # runs under the CSP without errors.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_window_size(1280, 800)
    driver.implicitly_wait(2)
    try:
        yield driver
    finally:
        driver.quit()
