"""Static checks: puka passes mypy --strict and ruff, and user code type-checks against it.

mypy and ruff come with the ``test`` extra; without them these tests fail (they never pass unchecked).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

USER_CODE = textwrap.dedent(
    """
    import asyncio

    import puka
    import puka.asyncio
    from puka.tracing import FrameRecorder, Middleware


    class Counter(Middleware):
        def on_publish(self, publish: "puka.tracing.OutgoingPublish") -> None:
            publish.headers["x-count"] = 1


    client = puka.Client("amqp:///", middleware=[FrameRecorder(), Counter()])
    promise: int = client.queue_declare(queue="q", durable=True, arguments={"x-queue-type": "quorum"})
    try:
        declared = client.wait(promise, timeout=1.0)
    except puka.NotFound as exc:
        code: int | None = exc.reply_code
    except puka.ConnectionBroken:
        pass
    client.basic_publish(exchange="", routing_key="q", body=b"x", headers={"content_type": "text/plain"})


    async def main() -> None:
        aclient = puka.asyncio.Client("amqp:///")
        await aclient.connect_async()
        await aclient.wait_async(aclient.queue_declare(exclusive=True))
    """
)


MISTAKES = textwrap.dedent(
    """
    import puka

    client = puka.Client("amqp:///")
    client.queue_declare(queue=5)
    promise: str = client.basic_publish(exchange="", routing_key="q", body=b"x")
    """
)


def require(module: str) -> None:
    """The static checkers come with the test extra: missing, they fail the test rather than pass it."""
    if importlib.util.find_spec(module) is None:
        pytest.fail("%s is not installed: pip install -e '.[test]'" % module, pytrace=False)


def mypy(*args: str, cwd: str = ROOT) -> subprocess.CompletedProcess:
    require("mypy")
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", *args],
        cwd=cwd,
        env=dict(os.environ, MYPYPATH=ROOT),
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_puka_is_mypy_strict_clean():
    done = mypy("puka")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("Success: no issues found"), done.stdout


def test_user_code_type_checks_against_the_public_api(tmp_path):
    script = tmp_path / "user_code.py"
    script.write_text(USER_CODE)
    done = mypy("--no-incremental", str(script), cwd=str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "Success: no issues found in 1 source file", done.stdout


def test_user_code_mistakes_are_caught_by_the_public_api_types(tmp_path):
    """puka's annotations reach user code (py.typed, no Any in the way): wrong types are reported."""
    script = tmp_path / "mistakes.py"
    script.write_text(MISTAKES)
    done = mypy("--no-incremental", str(script), cwd=str(tmp_path))
    errors = [line.split(": error: ", 1)[1] for line in done.stdout.splitlines() if ": error: " in line]
    assert errors == [
        'Argument "queue" to "queue_declare" of "Client" has incompatible type "int"; expected "str"  [arg-type]',
        'Incompatible types in assignment (expression has type "int", variable has type "str")  [assignment]',
    ], done.stdout + done.stderr


def test_ruff_is_clean():
    require("ruff")
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
