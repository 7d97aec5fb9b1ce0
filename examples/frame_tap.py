#!/usr/bin/env python
"""See the AMQP conversation: FrameRecorder keeps every frame, both directions, decoded.

Declare a queue, publish a message, get it back -- then print what went over the
wire.  Credentials in connection.start-ok are shown as '***'.

    AMQP_URL=amqp://guest:guest@localhost/ python examples/frame_tap.py
"""

import os
import sys

import puka
from puka.tracing import FrameRecorder


def main() -> int:
    recorder = FrameRecorder()
    client = puka.Client(os.environ.get("AMQP_URL") or "amqp:///", middleware=[recorder])
    client.wait(client.connect())
    queue = client.wait(client.queue_declare(exclusive=True))["queue"]
    client.wait(
        client.basic_publish(exchange="", routing_key=queue, body=b"tap me", headers={"content_type": "text/plain"})
    )
    message = client.wait(client.basic_get(queue=queue))
    client.basic_ack(message)
    client.wait(client.queue_delete(queue=queue))
    client.wait(client.close())

    for frame in recorder.frames:
        print(frame)
    print()
    print("sent:     %s" % " ".join(recorder.names("out")))
    print("received: %s" % " ".join(recorder.names("in")))
    return 0 if message["body"] == b"tap me" else 1


if __name__ == "__main__":
    sys.exit(main())
