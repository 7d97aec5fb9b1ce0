"""Static checks: puka passes mypy --strict and ruff, and user code type-checks against it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

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


def test_puka_is_mypy_strict_clean():
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "puka"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_user_code_type_checks_against_the_public_api(tmp_path):
    script = tmp_path / "user_code.py"
    script.write_text(USER_CODE)
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(script)],
        cwd=str(tmp_path),
        env=dict(os.environ, MYPYPATH=ROOT),
        capture_output=True,
        text=True,
        timeout=600,
    )
    user_errors = [line for line in done.stdout.splitlines() if line.startswith(str(script))]
    assert not user_errors, done.stdout


def test_ruff_is_clean():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
