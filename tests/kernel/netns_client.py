"""`netns_client.py HOST PORT PATH N`: N keep-alive GETs, as an app in a test host."""

import http.client
import sys

host, port, path, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
conn = http.client.HTTPConnection(host, port, timeout=30)
for _ in range(n):
    conn.request("GET", path)
    conn.getresponse().read()
conn.close()
