// One hop of a request chain on Node's event loop (http server + http.get).
// `node node_hop.js PORT [NEXT_PORT]`: as threads_hop.py.
const http = require("http");
const port = Number(process.argv[2]);
const next = process.argv[3] ? Number(process.argv[3]) : 0;
const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });

http
  .createServer((req, res) => {
    if (!next) {
      setTimeout(() => res.end(`leaf ${req.url}\n`), 2);
      return;
    }
    http
      .get({ host: "127.0.0.1", port: next, path: req.url, agent }, (up) => {
        const chunks = [];
        up.on("data", (c) => chunks.push(c));
        up.on("end", () => res.end(Buffer.concat(chunks)));
      })
      .on("error", (e) => {
        res.statusCode = 502;
        res.end(String(e));
      });
  })
  .listen(port, "127.0.0.1");
