// Licensed under the Apache License, Version 2.0 (the "License"); you may
// not use this file except in compliance with the License.
//
// WebSocket scenarios run by the integration suite
// (tests/integration/test_websocket.c) with the npm `ws` client against the
// real apache2.  Usage: node ws_client.mjs <scenario> <port> [args...]
//
// Each scenario prints what it saw, one line per step, and exits 0 when
// everything was as it must be; any surprise prints "FAIL: ..." and exits
// 1.  The suite's httpd.conf has /sub/ (listen only), /wspub/ (clients
// publish; identity from Basic auth) and /pub/ (HTTP publisher).
//
// With COMET_WS_TLS=<tls port>:<certificate file> in the environment the
// WebSockets are wss:// on that port, trusting that certificate alone
// (the test's, made for 127.0.0.1 with no subject alternative name, so
// the chain is checked and the name is not); publishing stays on HTTP.
import fs from "node:fs";
import WebSocket from "ws";

const [scenario, port, ...args] = process.argv.slice(2);
const [tlsPort, tlsCert] = (process.env.COMET_WS_TLS || "").split(":");
const base = tlsPort ? `wss://127.0.0.1:${tlsPort}`
                     : `ws://127.0.0.1:${port}`;
const tlsOpts = tlsPort ? { ca: fs.readFileSync(tlsCert),
                            checkServerIdentity: () => undefined } : {};
const http = `http://127.0.0.1:${port}`;

function fail(why) {
    console.log("FAIL: " + why);
    process.exit(1);
}

function check(cond, why) {
    if (!cond) {
        fail(why);
    }
}

// A WebSocket with a queue of what it received: next() gives the next
// text message (parsed JSON; keepalives "{}" skipped), closed() the close.
function open(path, opts = {}) {
    const ws = new WebSocket(base + path, { ...tlsOpts, ...opts });
    const queue = [], waiters = [];
    let closeInfo = null, closeWaiters = [];

    ws.on("message", (data, isBinary) => {
        check(!isBinary, "the server sent a binary frame");
        const o = JSON.parse(data.toString());
        if (Object.keys(o).length === 0) {
            return;
        }
        if (waiters.length) {
            waiters.shift()(o);
        }
        else {
            queue.push(o);
        }
    });
    ws.on("close", (code, reason) => {
        closeInfo = { code, reason: reason.toString() };
        closeWaiters.forEach((w) => w(closeInfo));
        closeWaiters = [];
        waiters.forEach((w) => w(null));
    });
    ws.on("error", () => {});
    ws.next = (ms = 5000) => new Promise((res) => {
        if (queue.length) {
            return res(queue.shift());
        }
        if (closeInfo) {
            return res(null);
        }
        const t = setTimeout(() => res(null), ms);
        waiters.push((o) => { clearTimeout(t); res(o); });
    });
    ws.closed = (ms = 8000) => new Promise((res) => {
        if (closeInfo) {
            return res(closeInfo);
        }
        const t = setTimeout(() => res(null), ms);
        closeWaiters.push((c) => { clearTimeout(t); res(c); });
    });
    ws.opened = () => new Promise((res, rej) => {
        if (ws.readyState === WebSocket.OPEN) {
            return res();
        }
        ws.once("open", res);
        ws.once("unexpected-response", (req, r) =>
            rej(new Error("HTTP " + r.statusCode)));
        ws.once("error", rej);
    });
    return ws;
}

async function publish(channel, data, headers = {}) {
    const r = await fetch(`${http}/pub/${channel}`, {
        method: "POST", body: data, headers
    });
    check(r.status === 201 || r.status === 202, `publish answered ${r.status}`);
    return r.headers.get("Comet-Message-Id");
}

async function stored(channel) {
    const r = await fetch(`${http}/pub/${channel}`);
    if (r.status === 404) {
        return 0;
    }
    return (await r.json()).messages;
}

// A masked frame as a client writes it, for what `ws` will not send.
function rawFrame(first, payload) {
    const mask = Buffer.from([1, 2, 3, 4]);
    const p = Buffer.from(payload);
    const out = Buffer.alloc(6 + p.length);
    out[0] = first;
    out[1] = 0x80 | p.length;
    mask.copy(out, 2);
    for (let i = 0; i < p.length; i++) {
        out[6 + i] = p[i] ^ mask[i & 3];
    }
    return out;
}

async function expectClose(ws, code, what) {
    const c = await ws.closed();
    check(c, `${what}: no close`);
    check(c.code === code, `${what}: closed with ${c.code} (${c.reason}), `
          + `wanted ${code}`);
    console.log(`${what}: close ${c.code} ${c.reason}`);
}

const auth = { headers: { Authorization: "Basic "
    + Buffer.from("alice:wonderland").toString("base64") } };

const scenarios = {
    // Two channels, ids, the missed-free resume after a reconnect.
    async messages() {
        const ws = open("/sub/wsa,wsb");
        await ws.opened();
        console.log("open");
        await publish("wsa", "one");
        await publish("wsb", "two");
        const m1 = await ws.next(), m2 = await ws.next();
        check(m1 && m1.channel === "wsa" && m1.data === "one",
              "first: " + JSON.stringify(m1));
        check(m2 && m2.channel === "wsb" && m2.data === "two",
              "second: " + JSON.stringify(m2));
        check(/^[0-9a-f]{8}:\d+,\d+$/.test(m2.id), "compound id " + m2.id);
        console.log("got " + m1.data + " " + m2.data + " id=" + m2.id);
        ws.close();
        await ws.closed();
        // Published while away: the resumed connection gets exactly it.
        await publish("wsb", "while-away");
        const again = open("/sub/wsa,wsb?last_event_id="
                           + encodeURIComponent(m2.id));
        await again.opened();
        const m3 = await again.next();
        check(m3 && m3.data === "while-away", "resumed: " + JSON.stringify(m3));
        const none = await again.next(500);
        check(none === null, "more after resume: " + JSON.stringify(none));
        console.log("resumed " + m3.data);
        // An id the store never had: the missed signal first.
        const lost = open("/sub/wsa?last_event_id=00000001:5");
        await lost.opened();
        const sig = await lost.next();
        check(sig && sig.missed === true && sig.channel === "wsa",
              "missed: " + JSON.stringify(sig));
        console.log("missed signal");
        lost.close();
        again.close();
    },

    // Frames and close codes, against a location where clients publish.
    async protocol() {
        // Fragmented text and a ping in between; the echo carries "from".
        let ws = open("/wspub/frag", auth);
        await ws.opened();
        const pong = new Promise((res) => ws.once("pong", (d) => res(d)));
        ws.send("hel", { fin: false });
        ws.ping("abc");
        ws.send("lo", { fin: true });
        const p = await pong;
        check(p.toString() === "abc", "pong payload " + p);
        const echo = await ws.next();
        check(echo && echo.data === "hello" && echo.from === "alice",
              "echo: " + JSON.stringify(echo));
        console.log("fragmented: " + echo.data + " from " + echo.from);
        ws.close(4001, "done");
        const back = await ws.closed();
        check(back && back.code === 4001, "our close code came back as "
              + JSON.stringify(back));
        console.log("client close answered with " + back.code);

        // 1002: unmasked, unknown opcode, RSV bit.
        ws = open("/wspub/codes", auth);
        await ws.opened();
        ws.send("x", { mask: false });
        await expectClose(ws, 1002, "unmasked");
        ws = open("/wspub/codes", auth);
        await ws.opened();
        ws._socket.write(rawFrame(0x83, ""));
        await expectClose(ws, 1002, "opcode 3");
        ws = open("/wspub/codes", auth);
        await ws.opened();
        ws._socket.write(rawFrame(0xc1, "x"));
        await expectClose(ws, 1002, "RSV1");
        // 1007: not UTF-8.
        ws = open("/wspub/codes", auth);
        await ws.opened();
        ws._socket.write(rawFrame(0x81, [0xc0, 0x80]));
        await expectClose(ws, 1007, "invalid UTF-8");
        // 1009: larger than CometMaxMessageSize (4K here).
        ws = open("/wspub/codes", auth);
        await ws.opened();
        ws.send("y".repeat(5000));
        await expectClose(ws, 1009, "too big");
        // 1003: binary.
        ws = open("/wspub/codes", auth);
        await ws.opened();
        ws.send(Buffer.from([1, 2, 3]));
        await expectClose(ws, 1003, "binary");
        // 1008: where clients may not publish, and nothing is stored.
        ws = open("/sub/codes-listen");
        await ws.opened();
        ws.send("spam");
        await expectClose(ws, 1008, "publish refused");
        check(await stored("codes-listen") === 0, "something was stored");
        check(await stored("codes") === 0, "a refused frame was stored");
        console.log("nothing stored");
        // 4400: a bad channel, after the upgrade so that a browser sees it.
        ws = open("/sub/bad%20channel");
        await ws.opened();
        await expectClose(ws, 4400, "bad channel");
        // Origin: a page of another site is refused before the upgrade.
        ws = open("/sub/codes", { origin: "http://evil.example" });
        let refused = "";
        await ws.opened().catch((e) => { refused = e.message; });
        check(refused === "HTTP 403", "foreign origin: " + refused);
        console.log("foreign origin: " + refused);
    },

    // Several channels: the envelope; "from" cannot be forged.
    async envelope() {
        const ws = open("/wspub/enva,envb", auth);
        await ws.opened();
        ws.send(JSON.stringify({ channel: "envb", event: "move",
                                 data: "e2e4" }));
        const m = await ws.next();
        check(m && m.channel === "envb" && m.event === "move"
              && m.data === "e2e4" && m.from === "alice",
              "envelope: " + JSON.stringify(m));
        ws.send(JSON.stringify({ channel: "enva", data: "x", from: "root" }));
        const e = await ws.next();
        check(e && e.error && /unknown member/.test(e.error),
              "forged from: " + JSON.stringify(e));
        console.log("envelope ok; forged from refused: " + e.error);
        ws.close();
    },

    // Connect, say so, then report how the server ended it.
    async wait_close() {
        const ws = open(args[0] || "/sub/restart");
        await ws.opened();
        console.log("open");
        const c = await ws.closed(60000);
        console.log(c ? "close " + c.code + " " + c.reason : "no close");
    },

    // A handshake refused before the upgrade: args[1] is the status.
    async refused() {
        const ws = open(args[0]);
        let why = "";
        await ws.opened().catch((e) => { why = e.message; });
        check(why === "HTTP " + args[1], "refused with: " + why);
        console.log("refused: " + why);
    },

    // Publish one message as alice and wait for its echo.
    async say() {
        const ws = open(args[0], auth);
        await ws.opened();
        ws.send(args[1]);
        const m = await ws.next();
        check(m && m.data === args[1], "echo: " + JSON.stringify(m));
        console.log("said " + m.data + " id=" + m.id);
        ws.close();
        await ws.closed();
    },

    // n connections, each publishing count messages as fast as the rate
    // limit lets it: throughput of client publishing (bench).
    async rate() {
        const ws = open("/wspub/ratelimited", auth);
        await ws.opened();
        for (let i = 0; i < 100; i++) {
            ws.send("m" + i);
        }
        await expectClose(ws, 1008, "rate");
    },
};

const fn = scenarios[scenario];
if (!fn) {
    fail("unknown scenario " + scenario);
}
const timer = setTimeout(() => fail("timed out"), 60000);
fn().then(() => {
    clearTimeout(timer);
    console.log("PASS");
    process.exit(0);
}, (e) => fail(e.stack || String(e)));
