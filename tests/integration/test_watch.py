"""``fedmq watch`` against the real Mosquitto: verified releases printed, saved, evaluated;
forged, malformed, foreign and rolled-back ones refused."""

from __future__ import annotations

import hashlib
import os
import queue
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from numpy.typing import NDArray
from paho.mqtt.enums import CallbackAPIVersion

from device.models import accuracy
from fedmq.cli import main
from fedmq.watch import Dataset, ReleaseWatcher, WatchError
from fedmq.watch_cli import PASSWORD_ENV
from serialization import ModelRelease, SigningKey, VerifyKey
from serialization.topics import model_topic
from tests.conftest import SERVICE_ACCOUNT, Broker

pytestmark = pytest.mark.integration

TIMEOUT = 10.0
"""Upper bound for anything that should happen; only a failing test waits this long."""
CREATED_AT = 1_700_000_000.0
CREATED_TEXT = "2023-11-14T22:13:20Z"
X = np.array([[1, 0], [0, 1], [2, 1], [0, 3], [1, 2]], dtype=np.float32)
Y = np.array([0, 1, 0, 0, 1], dtype=np.int64)
SOFTMAX = {"W": np.eye(2, dtype=np.float32), "b": np.zeros(2, np.float32)}
"""Predicts argmax(x): rows 0, 1, 2, 4 right, row 3 wrong -> accuracy 4/5."""
MLP = {
    "W1": np.eye(2, dtype=np.float32),
    "b1": np.zeros(2, np.float32),
    "W2": np.array([[0, 1], [1, 0]], dtype=np.float32),
    "b2": np.zeros(2, np.float32),
}
"""ReLU keeps x (x >= 0), W2 swaps the classes: predicts argmin(x), only row 3 right -> 1/5."""


def release(
    task: str, version: int, tensors: Mapping[str, NDArray[np.float32]], **fields: Any
) -> ModelRelease:
    """A release of ``task`` with the test's fixed creation time unless overridden."""
    values: dict[str, Any] = {
        "parent_version": version - 1,
        "update_count": 4,
        "created_at": CREATED_AT,
        "metadata": {"strategy": "fedbuff", "server_lr": 1.0},
    }
    values.update(fields)
    return ModelRelease(task=task, version=version, tensors=tensors, **values)


@dataclass(kw_only=True)
class Setup:
    """A watcher account, the release keys and the files ``fedmq watch`` is given."""

    broker: Broker
    username: str
    password: str
    key: SigningKey
    public_key: Path
    password_file: Path
    dataset: Path

    def argv(self, task: str, *extra: str) -> list[str]:
        """``fedmq watch`` arguments for ``task`` with this setup's account and key."""
        return [
            "watch", "--port", str(self.broker.port), "--username", self.username,
            "--password-file", str(self.password_file), "--task", task,
            "--public-key", str(self.public_key), *extra,
        ]  # fmt: skip

    def publish(self, task: str, *payloads: bytes) -> None:
        """Publish each payload retained on the task's model topic, as the aggregator."""
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        client.username_pw_set(SERVICE_ACCOUNT, self.broker.passwords[SERVICE_ACCOUNT])
        client.connect("127.0.0.1", self.broker.port)
        client.loop_start()
        try:
            for payload in payloads:
                info = client.publish(model_topic(task), payload, qos=1, retain=True)
                info.wait_for_publish(TIMEOUT)
                assert info.is_published()
        finally:
            client.disconnect()
            client.loop_stop()


def _wait_for_login(broker: Broker, username: str, password: str) -> None:
    """Mosquitto rereads its password file after SIGHUP: retry until the login works."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        client.username_pw_set(username, password)
        try:
            client.connect("127.0.0.1", broker.port)
            client.loop_start()
            for _ in range(50):
                if client.is_connected():
                    return
                time.sleep(0.02)
        finally:
            client.disconnect()
            client.loop_stop()
        if time.monotonic() > deadline:
            pytest.fail(f"{username!r} cannot log in to Mosquitto")


@pytest.fixture(scope="module")
def setup(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    """A fresh watcher account (pattern rights: reads every model), key files, a dataset."""
    directory = tmp_path_factory.mktemp("watch")
    username = f"watcher-{secrets.token_hex(3)}"
    password = broker.add_account(username)
    _wait_for_login(broker, username, password)
    key = SigningKey.generate()
    (directory / "aggregator.pub").write_bytes(key.verify_key.to_pem())
    (directory / "password").write_text(password + "\n")
    np.savez(directory / "data.npz", x=X, y=Y)
    return Setup(
        broker=broker,
        username=username,
        password=password,
        key=key,
        public_key=directory / "aggregator.pub",
        password_file=directory / "password",
        dataset=directory / "data.npz",
    )


def _lines(stream: IO[str], into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line.rstrip("\n"))


def test_watch_prints_saves_and_evaluates_releases_and_refuses_bad_ones(
    setup: Setup, task: str, tmp_path: Path
) -> None:
    """The console script end to end: retained v1, then four bad payloads, then v2."""
    first = release(task, 1, SOFTMAX).encode(setup.key)
    setup.publish(task, first)
    saved = tmp_path / "releases"
    command = [sys.executable, "-m", "fedmq.cli", "--log-level", "WARNING"]
    argv = setup.argv(task, "--save-dir", str(saved), "--evaluate", str(setup.dataset))
    environment = {k: v for k, v in os.environ.items() if k != PASSWORD_ENV}
    out: queue.Queue[str] = queue.Queue()
    with subprocess.Popen(
        [*command, *argv, "--count", "2", "--timeout", "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    ) as watcher:
        assert watcher.stdout is not None
        assert watcher.stderr is not None
        reader = threading.Thread(target=_lines, args=(watcher.stdout, out), daemon=True)
        reader.start()
        try:
            line_1 = out.get(timeout=TIMEOUT)
            forged = release(task, 5, SOFTMAX).encode(SigningKey.generate())
            rollback = release(task, 1, SOFTMAX, created_at=CREATED_AT + 1).encode(setup.key)
            foreign = release(f"{task}x", 9, SOFTMAX).encode(setup.key)
            second = release(task, 2, MLP, metadata={"strategy": "fedavg"}).encode(setup.key)
            setup.publish(task, forged, b"\x93not a release", rollback, foreign, second)
            assert watcher.wait(TIMEOUT) == 0
        finally:
            watcher.kill()
        reader.join(TIMEOUT)
        err = watcher.stderr.read()
    line_2 = out.get_nowait()
    key_id = setup.key.key_id
    assert line_1 == (
        f"release task={task} version=1 parent=0 created={CREATED_TEXT} bytes={len(first)} "
        f'updates=4 key={key_id} metadata={{"strategy":"fedbuff","server_lr":1.0}} '
        f"accuracy=0.8000 saved={saved / f'{task}-v1.msgpack'}"
    )
    assert line_2 == (
        f"release task={task} version=2 parent=1 created={CREATED_TEXT} bytes={len(second)} "
        f'updates=4 key={key_id} metadata={{"strategy":"fedavg"}} '
        f"accuracy=0.2000 saved={saved / f'{task}-v2.msgpack'}"
    )
    assert out.empty()
    refusals = [line.split(": ")[1] for line in err.splitlines() if line.startswith("WARNING")]
    assert refusals == ["bad_signature", "malformed", "rollback", "foreign_task"]
    assert err.splitlines()[-1] == (
        f"watched fl/v1/{task}/model: 2 verified, 4 refused "
        "(bad_signature=1, foreign_task=1, malformed=1, rollback=1)"
    )
    assert sorted(p.name for p in saved.iterdir()) == [f"{task}-v1.msgpack", f"{task}-v2.msgpack"]
    assert (saved / f"{task}-v1.msgpack").read_bytes() == first
    assert (saved / f"{task}-v2.msgpack").read_bytes() == second
    assert setup.password not in err + line_1 + line_2


def test_watch_exits_1_when_only_forgeries_arrive(
    setup: Setup, task: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A retained release signed by another key is refused; the timeout ends the watch."""
    setup.publish(task, release(task, 7, SOFTMAX).encode(SigningKey.generate()))
    started = time.monotonic()
    code = main(setup.argv(task, "--save-dir", str(tmp_path), "--timeout", "1.5"))
    captured = capsys.readouterr()
    assert code == 1
    assert 1.5 <= time.monotonic() - started < TIMEOUT
    assert captured.out == ""
    assert "WARNING refused a " in captured.err
    assert ": bad_signature: signature does not verify with key " in captured.err
    assert list(tmp_path.iterdir()) == []


def test_watch_speaks_mqtt_311_and_reads_the_password_from_the_environment(
    setup: Setup,
    task: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--mqtt-version 3.1.1, FL_MQTT_PASSWORD, --count 1: one line, exit 0, no secret shown."""
    setup.publish(task, release(task, 4, SOFTMAX).encode(setup.key))
    monkeypatch.setenv(PASSWORD_ENV, setup.password)
    argv = setup.argv(task, "--mqtt-version", "3.1.1", "--count", "1", "--timeout", "10")
    argv.remove("--password-file")
    argv.remove(str(setup.password_file))
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0].startswith(f"release task={task} version=4 parent=3 ")
    assert len(captured.out.splitlines()) == 1
    assert setup.password not in captured.out + captured.err


def test_watch_exits_2_when_the_login_is_refused(
    setup: Setup, task: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wrong password stops the watch at once with an ERROR line."""
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    argv = setup.argv(task, "--timeout", "20")
    argv[argv.index(str(setup.password_file))] = str(wrong)
    started = time.monotonic()
    assert main(argv) == 2
    assert time.monotonic() - started < TIMEOUT
    assert f"ERROR the broker refused the login of {setup.username!r}" in capsys.readouterr().err


def test_watch_refuses_to_start_without_a_usable_key_or_dataset(
    setup: Setup, task: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 2 and a message naming the bad file, before any connection."""
    (tmp_path / "bad.pub").write_text("not a key")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    argv = setup.argv(task, "--timeout", "20")
    argv[argv.index(str(setup.public_key))] = str(tmp_path / "bad.pub")
    assert main(argv) == 2
    assert "cannot load the public key" in capsys.readouterr().err
    assert main(setup.argv(task, "--evaluate", str(tmp_path / "bad.npz"))) == 2
    assert f"cannot read {tmp_path / 'bad.npz'} as an .npz" in capsys.readouterr().err


def test_watch_restarts_from_the_newest_saved_release(tmp_path: Path) -> None:
    """Saved v2 is the baseline of a new watcher: v1 is a rollback, v2 shown once, v3 new."""
    signing_key = SigningKey.generate()
    verify_key: VerifyKey = signing_key.verify_key
    v1, v2, v3 = (release("t", v, SOFTMAX).encode(signing_key) for v in (1, 2, 3))
    first = ReleaseWatcher(task="t", verify_key=verify_key, save_dir=tmp_path)
    assert first.handle(v2).outcome == "verified"
    (tmp_path / "t-v7.msgpack").write_bytes(b"tampered")
    again = ReleaseWatcher(task="t", verify_key=verify_key, save_dir=tmp_path)
    refused = again.handle(v1)
    assert (refused.outcome, refused.reason) == ("refused", "rollback")
    assert refused.line.endswith("rollback: version 1 is not newer than version 2")
    shown = again.handle(v2)
    assert (shown.outcome, shown.saved) == ("verified", tmp_path / "t-v2.msgpack")
    assert again.handle(v2).outcome == "repeat"
    assert again.handle(b"").reason == "empty"
    assert again.handle(v3).outcome == "verified"
    assert (tmp_path / "t-v3.msgpack").read_bytes() == v3
    assert hashlib.sha256((tmp_path / "t-v2.msgpack").read_bytes()).digest() == (
        hashlib.sha256(v2).digest()
    )
    assert (again.summary.verified, dict(again.summary.refused)) == (2, {"rollback": 1, "empty": 1})


def test_watch_accuracy_matches_hand_computed_values(tmp_path: Path) -> None:
    """4/5 and 1/5 on the five rows; a model of other width is a warning, not a crash."""
    np.savez(tmp_path / "data.npz", x=X, y=Y)
    dataset = Dataset.load(tmp_path / "data.npz")
    assert accuracy(SOFTMAX, dataset.x, dataset.y) == pytest.approx(0.8)
    assert accuracy(MLP, dataset.x, dataset.y) == pytest.approx(0.2)
    key = SigningKey.generate()
    wide = {"W": np.eye(3, dtype=np.float32), "b": np.zeros(3, np.float32)}
    watcher = ReleaseWatcher(task="t", verify_key=key.verify_key, dataset=dataset)
    seen = watcher.handle(release("t", 1, wide).encode(key))
    assert (seen.outcome, seen.accuracy) == ("verified", None)
    assert "accuracy=" not in seen.line
    assert seen.warnings[0].startswith("WARNING cannot evaluate version 1 on ")


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": X}, "as an .npz with x and y"),
        ({"x": X, "y": Y[:3]}, "x must be (n, features) and y (n,)"),
        ({"x": X, "y": Y.astype(np.float32)}, "y integers"),
        ({"x": X * np.nan, "y": Y}, "NaN or infinity"),
    ],
)
def test_watch_dataset_refuses_malformed_files(
    tmp_path: Path, arrays: dict[str, NDArray[Any]], message: str
) -> None:
    """Each malformed dataset names its problem."""
    contents: dict[str, Any] = arrays
    np.savez(tmp_path / "data.npz", **contents)
    with pytest.raises(WatchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Dataset.load(tmp_path / "data.npz")
