// A small SignalR client for the page: JSON hub protocol over WebSockets, as
// docs/PROTOCOL.md describes it (negotiate, handshake, invocations, completions,
// pings, close). Reconnecting is the page's business: a HubConnection lives for
// one WebSocket, and `onclose` says whether the server allows a reconnect.

const RS = "\u001e";
const PING_INTERVAL_MS = 15000;
const SERVER_TIMEOUT_MS = 30000;

const Type = { Invocation: 1, Completion: 3, Ping: 6, Close: 7 };

export class HubError extends Error {}

export class HubConnection {
  /** `url`: the hub's URL (http or https); `token`: the identity. */
  constructor(url, token) {
    this.url = new URL(url, location.href);
    this.token = token;
    this.handlers = new Map();
    this.pending = new Map();
    this.nextId = 1;
    this.onclose = () => {};
    this.closed = false;
  }

  on(target, handler) {
    this.handlers.set(target.toLowerCase(), handler);
  }

  async start() {
    const negotiate = new URL(this.url);
    negotiate.pathname += "/negotiate";
    negotiate.searchParams.set("negotiateVersion", "1");
    const response = await fetch(negotiate, {
      method: "POST",
      headers: { Authorization: `Bearer ${this.token}` },
    });
    if (!response.ok) {
      const text = (await response.text()).trim();
      const error = new HubError(text || `negotiate failed: HTTP ${response.status}`);
      error.status = response.status;
      throw error;
    }
    const negotiated = await response.json();
    const ws = new URL(this.url);
    ws.protocol = ws.protocol === "https:" ? "wss:" : "ws:";
    ws.searchParams.set("id", negotiated.connectionToken ?? negotiated.connectionId);
    ws.searchParams.set("access_token", this.token);
    await this.open(ws);
  }

  open(url) {
    return new Promise((resolve, reject) => {
      const socket = new WebSocket(url);
      this.socket = socket;
      let handshaken = false;
      let buffer = "";
      socket.onopen = () => socket.send(JSON.stringify({ protocol: "json", version: 1 }) + RS);
      socket.onmessage = (event) => {
        this.lastReceived = Date.now();
        buffer += event.data;
        let end;
        while ((end = buffer.indexOf(RS)) >= 0) {
          const record = buffer.slice(0, end);
          buffer = buffer.slice(end + 1);
          const message = JSON.parse(record);
          if (!handshaken) {
            if (message.error) {
              reject(new HubError(message.error));
              socket.close();
              return;
            }
            handshaken = true;
            this.startTimers();
            resolve();
            continue;
          }
          this.receive(message);
        }
      };
      socket.onclose = (event) => {
        if (!handshaken) {
          reject(new HubError(`could not connect (WebSocket closed with code ${event.code})`));
        }
        this.finish(this.closeError ?? (event.wasClean ? null : "connection lost"), true);
      };
    });
  }

  startTimers() {
    this.lastReceived = Date.now();
    this.pinger = setInterval(() => this.write({ type: Type.Ping }), PING_INTERVAL_MS);
    this.watchdog = setInterval(() => {
      if (Date.now() - this.lastReceived > SERVER_TIMEOUT_MS) {
        this.closeError = "the server stopped answering";
        this.socket.close();
      }
    }, 1000);
  }

  receive(message) {
    switch (message.type) {
      case Type.Invocation: {
        const handler = this.handlers.get(message.target.toLowerCase());
        if (handler) handler(...(message.arguments ?? []));
        break;
      }
      case Type.Completion: {
        const call = this.pending.get(message.invocationId);
        if (!call) break;
        this.pending.delete(message.invocationId);
        if (message.error) call.reject(new HubError(message.error));
        else call.resolve(message.result);
        break;
      }
      case Type.Close:
        this.closeError = message.error ?? null;
        this.allowReconnect = message.allowReconnect ?? false;
        this.socket.close();
        break;
      default:
        break;
    }
  }

  write(message) {
    if (this.socket?.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify(message) + RS);
      return true;
    }
    return false;
  }

  invoke(target, ...args) {
    return new Promise((resolve, reject) => {
      const invocationId = String(this.nextId++);
      this.pending.set(invocationId, { resolve, reject });
      if (!this.write({ type: Type.Invocation, invocationId, target, arguments: args })) {
        this.pending.delete(invocationId);
        reject(new HubError("not connected"));
      }
    });
  }

  /** Closes the connection on purpose; `onclose` is not called. */
  stop() {
    this.closed = true;
    this.socket?.close();
    this.finish(null, false);
  }

  finish(error, notify) {
    clearInterval(this.pinger);
    clearInterval(this.watchdog);
    for (const call of this.pending.values()) call.reject(new HubError(error ?? "connection closed"));
    this.pending.clear();
    if (this.finished) return;
    this.finished = true;
    if (notify && !this.closed) this.onclose(error, this.allowReconnect ?? true);
  }
}
