"""The gRPC calls the tests make, over one channel: unary, streaming, failing."""

from __future__ import annotations

import grpc


def call_all(port: int, unary: int = 3, streams: int = 2) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        say_hello = channel.unary_unary("/demo.Greeter/SayHello")
        count = channel.unary_stream("/demo.Greeter/Count")
        fail = channel.unary_unary("/demo.Greeter/Fail")
        for i in range(unary):
            assert say_hello(b"world%d" % i, timeout=10) == b"hello world%d" % i
        for _ in range(streams):
            assert list(count(bytes([4]), timeout=10)) == [b"n0", b"n1", b"n2", b"n3"]
        try:
            fail(b"x", timeout=10)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND
        else:
            raise AssertionError("Fail did not fail")


if __name__ == "__main__":
    import sys

    call_all(int(sys.argv[1]))
