"""A gRPC service with no generated code (bytes in, bytes out), on grpcio.

`py_grpc_server.py PORT`: demo.Greeter/SayHello (unary), demo.Greeter/Count
(server streaming, as many messages as the request's byte value), and
demo.Greeter/Fail (always NOT_FOUND).
"""

import sys
from collections.abc import Iterator
from concurrent import futures

import grpc


def say_hello(request: bytes, context: grpc.ServicerContext) -> bytes:
    return b"hello " + request


def count(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    for i in range(request[0] if request else 3):
        yield b"n%d" % i


def fail(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.abort(grpc.StatusCode.NOT_FOUND, "no such greeting")
    return b""


def main() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handlers = {
        "SayHello": grpc.unary_unary_rpc_method_handler(say_hello),
        "Count": grpc.unary_stream_rpc_method_handler(count),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("demo.Greeter", handlers),)
    )
    server.add_insecure_port(f"127.0.0.1:{sys.argv[1]}")
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
