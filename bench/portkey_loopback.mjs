// Preloaded into the Portkey gateway by bench/peers.py (`node --import`): its start-server.js calls
// `serve({fetch, port})` without a hostname, which listens on every interface; the benchmark keeps
// everything on 127.0.0.1, so a listen() without a host gets 127.0.0.1.
import net from "node:net";

const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === "number" && (args[1] === undefined || typeof args[1] === "function")) {
    args.splice(1, args[1] === undefined ? 1 : 0, "127.0.0.1");
  }
  return listen.apply(this, args);
};
