"""Codec benchmarks: puka against the original puka 0.0.8 and pamqp, same run.

Run: ``python -m pytest benchmarks/test_codec.py --benchmark-only``, or
``python tools/bench_codec.py`` for the ratios and the verdict.  Each group
holds the same work done by each library:

* ``encode-publish``: a basic.publish method and its content header with
  content_type, delivery_mode and a 3-entry headers table, as payload bytes;
* ``decode-deliver``: a basic.deliver method payload and its content header.

puka goes through its public names (``METHODS[...].encode(**fields)``,
``encode_properties``, ``decode_method``, ``decode_properties``); the
``internal`` entries time what the client's hot paths call instead
(``encode_args``, ``PROPERTIES[60].encode``, the method's ``decode`` after the
dispatch, ``decode_header``).
"""

from __future__ import annotations

import struct

import peers
import pytest

from puka import spec

HEADERS = {"x-trace": "00-abc-def-01", "attempt": 100000, "urgent": True}
PROPS = {"content_type": "application/json", "delivery_mode": 2, "headers": HEADERS}
BODY_SIZE = 100

BasicPublish = spec.METHODS_BY_NAME["basic.publish"]
BasicDeliver = spec.METHODS_BY_NAME["basic.deliver"]
_content_header = struct.Struct(">HHQ")

DELIVER_PAYLOAD = BasicDeliver.encode(
    consumer_tag="amq.ctag-7Yb0cGXfHe1rrMkq5v3l3A",
    delivery_tag=123456,
    redelivered=False,
    exchange="orders",
    routing_key="orders.created.eu",
)
HEADER_PAYLOAD = _content_header.pack(60, 0, BODY_SIZE) + spec.encode_properties(60, PROPS)


_publish = spec.METHODS[BasicPublish.method_id]
_encode_properties = spec.encode_properties
_decode_method = spec.decode_method
_decode_properties = spec.decode_properties


def puka_encode():
    method = _publish.encode(exchange="orders", routing_key="orders.created.eu", mandatory=False, immediate=False)
    header = _content_header.pack(60, 0, BODY_SIZE) + _encode_properties(60, PROPS)
    return method, header


def puka_decode():
    method, _ = _decode_method(DELIVER_PAYLOAD, 0)
    _class_id, _weight, size = _content_header.unpack_from(HEADER_PAYLOAD, 0)
    props, _ = _decode_properties(HEADER_PAYLOAD, 12)
    return method, size, props


_encode_publish_args = BasicPublish.encode_args
_encode_basic_properties = spec.PROPERTIES[60].encode


def internal_encode():
    method = _encode_publish_args("orders", "orders.created.eu", False, False)
    header = _content_header.pack(60, 0, BODY_SIZE) + _encode_basic_properties(PROPS)
    return method, header


_decode_deliver = BasicDeliver.decode
_decode_basic_header = spec.PROPERTIES[60].decode_header


def internal_decode():
    # What the client does per delivery: the method arguments after the
    # 4-byte method id it dispatched on, then the whole content header.
    method, _ = _decode_deliver(DELIVER_PAYLOAD, 4)
    size, props = _decode_basic_header(HEADER_PAYLOAD)
    return method, size, props


@pytest.fixture(scope="module")
def puka008():
    return peers.load_puka008("spec")


@pytest.mark.benchmark(group="encode-publish")
def test_encode_puka(benchmark):
    method, header = benchmark(puka_encode)
    assert spec.decode_method(method, 0)[0]["routing_key"] == "orders.created.eu"
    assert spec.decode_properties(header, 12)[0] == PROPS


@pytest.mark.benchmark(group="encode-publish")
def test_encode_internal(benchmark):
    assert benchmark(internal_encode) == puka_encode()


@pytest.mark.benchmark(group="encode-publish")
def test_encode_puka008(benchmark, puka008):
    user_headers = dict(HEADERS, content_type="application/json", delivery_mode=2)

    def encode():
        return puka008.encode_basic_publish("orders", "orders.created.eu", False, False, user_headers, b"x" * 0, 131072)

    frames = benchmark(encode)
    assert spec.decode_properties(frames[1][1], 12)[0] == PROPS


@pytest.mark.benchmark(group="encode-publish")
def test_encode_pamqp(benchmark):
    from pamqp import commands, header

    def encode():
        method = commands.Basic.Publish(exchange="orders", routing_key="orders.created.eu").marshal()
        props = commands.Basic.Properties(content_type="application/json", delivery_mode=2, headers=HEADERS)
        return method, header.ContentHeader(0, BODY_SIZE, props).marshal()

    benchmark(encode)


@pytest.mark.benchmark(group="decode-deliver")
def test_decode_puka(benchmark):
    method, size, props = benchmark(puka_decode)
    assert method["delivery_tag"] == 123456 and props == PROPS and size == BODY_SIZE


@pytest.mark.benchmark(group="decode-deliver")
def test_decode_internal(benchmark):
    assert benchmark(internal_decode) == puka_decode()


@pytest.mark.benchmark(group="decode-deliver")
def test_decode_puka008(benchmark, puka008):
    def decode():
        method, _ = puka008.METHODS[BasicDeliver.method_id](DELIVER_PAYLOAD, 4)
        class_id, _weight, size = _content_header.unpack_from(HEADER_PAYLOAD, 0)
        props, _ = puka008.PROPS[class_id](HEADER_PAYLOAD, 12)
        return method, size, props

    method, size, props = benchmark(decode)
    assert method["delivery_tag"] == 123456


@pytest.mark.benchmark(group="decode-deliver")
def test_decode_pamqp(benchmark):
    from pamqp import frame

    method_frame = struct.pack(">BHI", 1, 1, len(DELIVER_PAYLOAD)) + DELIVER_PAYLOAD + b"\xce"
    header_frame = struct.pack(">BHI", 2, 1, len(HEADER_PAYLOAD)) + HEADER_PAYLOAD + b"\xce"

    def decode():
        _, _, method = frame.unmarshal(method_frame)
        _, _, header = frame.unmarshal(header_frame)
        return method, header

    benchmark(decode)


def paired_ratios(ours, theirs, pairs: int = 40, batch: int = 2000) -> list[float]:
    """theirs/ours CPU-time ratios of alternating batches: the machine's drift hits both alike."""
    import gc
    import time

    ratios = []
    clock = time.process_time  # CPU time: a batch descheduled by the busy machine is not charged
    gc.collect()
    for _ in range(pairs):
        start = clock()
        for _ in range(batch):
            ours()
        mid = clock()
        for _ in range(batch):
            theirs()
        end = clock()
        ratios.append((end - mid) / (mid - start))
    return sorted(ratios)


def puka008_encode_decode(puka008):
    user_headers = dict(HEADERS, content_type="application/json", delivery_mode=2)
    method_id = BasicDeliver.method_id
    decode_method = puka008.METHODS[method_id]
    decode_props = puka008.PROPS[60]

    def encode():
        return puka008.encode_basic_publish("orders", "orders.created.eu", False, False, user_headers, b"", 131072)

    def decode():
        method, _ = decode_method(DELIVER_PAYLOAD, 4)
        class_id, _weight, size = _content_header.unpack_from(HEADER_PAYLOAD, 0)
        props, _ = decode_props(HEADER_PAYLOAD, 12)
        return method, size, props

    return encode, decode


@pytest.mark.benchmark(group="paired")
def test_paired_ratios(benchmark, puka008):
    """Interleaved batches of puka and puka 0.0.8, same work: the ratio per pair, median printed."""
    encode008, decode008 = puka008_encode_decode(puka008)
    results = {}

    def measure():
        results["encode"] = paired_ratios(puka_encode, encode008)
        results["decode"] = paired_ratios(puka_decode, decode008)

    benchmark.pedantic(measure, rounds=1, iterations=1)
    for name, ratios in results.items():
        median = ratios[len(ratios) // 2]
        benchmark.extra_info["%s_ratio_median" % name] = median
        benchmark.extra_info["%s_ratio_range" % name] = [ratios[0], ratios[-1]]
        print(
            "\n%s: puka / puka008 = %.2fx (median of %d paired batches, %.2f-%.2f)"
            % (name, median, len(ratios), ratios[0], ratios[-1])
        )
