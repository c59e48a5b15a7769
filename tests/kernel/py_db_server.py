"""An uninstrumented web tier that queries a database per request.

`py_db_server.py PORT PG_DSN MYSQL_PORT`: GET /pg runs a query through psycopg,
GET /mysql one through PyMySQL. No OpenTelemetry: the collector must make the
database spans children of the request's SERVER span by itself.
"""

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import pymysql

PG_DSN = sys.argv[2]
MYSQL_PORT = int(sys.argv[3])


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/pg":
            with psycopg.connect(PG_DSN) as conn:
                value = conn.execute("SELECT 40 + 2").fetchone()
        else:
            conn2 = pymysql.connect(
                host="127.0.0.1", port=MYSQL_PORT, user="app", password="secret", database="app"
            )
            with conn2.cursor() as cur:
                cur.execute("SELECT 40 + 2")
                value = cur.fetchone()
            conn2.close()
        body = repr(value).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
