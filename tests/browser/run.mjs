// comet.js in headless Chromium against the real apache2.  Run by the
// integration suite (tests/integration/test_client.c), one scenario per
// process: `node run.mjs <scenario>`.  Servers are started, stopped and
// started again by the C harness: a command goes out on descriptor 3, its
// answer comes back on standard input (see test_client.c).
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import readline from "node:readline";
import zlib from "node:zlib";
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const TOP = path.resolve(HERE, "../..");
const TMP = process.env.COMET_TEST_TMP || fs.mkdtempSync("/tmp/comet-js.");
const ARTIFACTS = path.join(TOP, "build/artifacts");
const scenario = process.argv[2];
const started = Date.now();

function say(text) {
    process.stderr.write(`  comet.js ${scenario}: ${text}\n`);
}

function check(cond, what) {
    if (!cond) {
        throw new Error(what);
    }
}


// ---- the C harness's server commands ---------------------------------------

const answers = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const commands = fs.createWriteStream(null, { fd: 3 });

async function command(line) {
    commands.write(line + "\n");
    const { value, done } = await answers.next();

    check(!done && value.startsWith("ok"), `server command '${line}': ${done ? "no answer" : value}`);
    return value.split(" ").slice(1);
}

let nconf = 0;

// The locations the pages use, and the page files under the document root.
async function startServer(extra = "") {
    const conf = path.join(TMP, `extra-${++nconf}.conf`);

    fs.writeFileSync(path.join(TMP, "mime.types"), "");
    fs.writeFileSync(conf, `
LoadModule mime_module @MODULES@/mod_mime.so
LoadModule dir_module @MODULES@/mod_dir.so
TypesConfig "${TMP}/mime.types"
AddType text/html .html
AddType text/javascript .js
DirectoryIndex index.html
<Location /events/>
    SetHandler comet-subscriber
</Location>
<Location /publish/>
    SetHandler comet-publisher
    Require ip 127.0.0.1
</Location>
${extra}
`);
    const [port, dir, socket] = await command(`start ${conf}`);
    const docs = path.join(dir, "htdocs");

    fs.mkdirSync(path.join(docs, "comet"), { recursive: true, mode: 0o755 });
    fs.copyFileSync(path.join(TOP, "client/comet.js"), path.join(docs, "comet/comet.js"));
    fs.writeFileSync(path.join(docs, "t.html"), TEST_PAGE);
    fs.writeFileSync(path.join(docs, "m.html"), MODULE_PAGE);
    // The chat page as installed (showing the usual socket path, which
    // the screenshots keep free of temporary paths).
    fs.copyFileSync(path.join(TOP, "demo/index.html"), path.join(docs, "index.html"));
    for (const f of ["", "comet", "comet/comet.js", "t.html", "m.html", "index.html"]) {
        fs.chmodSync(path.join(docs, f), f.includes(".") ? 0o644 : 0o755);
    }
    return { port: +port, dir, socket, base: `http://127.0.0.1:${port}` };
}

// A page that subscribes as told and records what it sees.
const TEST_PAGE = `<!doctype html><meta charset=utf-8><title>comet.js test</title>
<link rel="icon" href="data:,">
<script src="/comet/comet.js"></script>
<script>
window.log = []; window.states = []; window.missed = [];
window.start = function (chs, opts, where) {
    var sub = window.sub = Comet.subscribe(where || "/events/", chs, function (m) { log.push(m); },
        Object.assign({ publishUrl: "/publish/" }, opts));
    sub.on("state", function (s) { states.push(s.state + " " + s.transport); });
    sub.on("missed", function (x) { missed.push(x); });
};
window.count = function (text) { return log.filter(function (m) { return m.data === text; }).length; };
window.sent = function (text) { return log.filter(function (m) { return m.data === text; })[0]; };
</script>`;

// The same client imported from an ES module.
const MODULE_PAGE = `<!doctype html><meta charset=utf-8><title>comet.js as a module</title>
<link rel="icon" href="data:,">
<script type="module">
import "/comet/comet.js";
window.log = [];
Comet.subscribe("/events/", ["module"], (m) => log.push(m.data), { transport: "eventsource" })
    .on("state", (s) => { window.state = s.state; });
</script>`;

// ---- HTTP -------------------------------------------------------------------

async function publish(srv, channel, data) {
    const r = await fetch(`${srv.base}/publish/${channel}`, { method: "POST", body: data });

    check(r.status === 201 || r.status === 202, `publish answered ${r.status}`);
    return r.json();
}

async function status(srv) {
    const text = await (await fetch(`${srv.base}/server-status?auto`)).text();
    const out = {};

    for (const line of text.split("\n")) {
        const m = /^(\w+): (.*)$/.exec(line);

        if (m) {
            out[m[1]] = m[2];
        }
    }
    return out;
}

async function until(what, cond, ms = 10000) {
    const end = Date.now() + ms;
    let last;

    for (;;) {
        last = await cond();
        if (last) {
            return last;
        }
        check(Date.now() < end, `timed out waiting for ${what}`);
        await new Promise((r) => setTimeout(r, 25));
    }
}

// Subscriber connections the server holds (all channels, all processes).
async function connections(srv) {
    return +(await status(srv)).CometConnections;
}

// ---- the browser ------------------------------------------------------------

let browser;

// Playwright gives each launch a new, empty profile (--user-data-dir).
async function launch() {
    const { chromium } = await import("playwright-core");

    browser = await chromium.launch({
        executablePath: process.env.COMET_CHROMIUM || "/usr/bin/chromium",
        headless: true,
        args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update",
               "--disable-sync"]
    });
    return browser;
}

async function newPage(ctx, url) {
    const page = await ctx.newPage();

    page.on("pageerror", (e) => say(`page error: ${e.message}`));
    if (url) {
        // The test page must be the one served: say what came instead
        // (the scenario's subject is what the page does, not its load).
        for (let attempt = 1; ; attempt++) {
            const res = await page.goto(url);
            const ready = await page.evaluate(() => typeof window.start === "function"
                                              || typeof window.Comet === "object");
            if (res && res.ok() && (ready || !url.endsWith("t.html"))) {
                break;
            }
            const why = `${url}: HTTP ${res ? res.status() : "no response"}, `
                + `${ready ? "" : "page script not run: "}`
                + `${(await page.content()).slice(0, 200)}`;
            if (attempt === 2) {
                throw new Error(why);
            }
            say(`loading the page again: ${why}`);
        }
    }
    return page;
}

async function waitIn(page, what, fn, arg, ms = 10000) {
    try {
        await page.waitForFunction(fn, arg, { timeout: ms, polling: 20 });
    }
    catch (e) {
        const seen = await page.evaluate(() => ({
            states: window.states, missed: window.missed,
            log: (window.log || []).map((m) => m.data)
        })).catch(() => ({}));

        throw new Error(`timed out waiting for ${what}; the page saw ${JSON.stringify(seen)}`);
    }
}

const live = (page, transport) => waitIn(page, `live over ${transport || "any transport"}`,
    (t) => window.sub && window.sub.state === "live" && (!t || window.sub.transport === t), transport);
const shows = (page, text, ms) => waitIn(page, `message '${text}'`, (x) => window.count(x) > 0, text, ms);
const count = (page, text) => page.evaluate((x) => window.count(x), text);

// ---- scenarios --------------------------------------------------------------

const scenarios = {};

// The client's size budget: < 6 KB minified and gzipped.
scenarios.size = async () => {
    const { minify } = await import("terser");
    const src = fs.readFileSync(path.join(TOP, "client/comet.js"), "utf8");
    const min = (await minify(src, { compress: { passes: 2 }, mangle: true })).code;
    const gz = zlib.gzipSync(min, { level: 9 }).length;

    say(`${src.length} bytes, ${zlib.gzipSync(src, { level: 9 }).length} gzipped; ` +
        `minified ${min.length}, minified+gzipped ${gz} bytes (budget 6144)`);
    check(gz < 6144, `comet.js is ${gz} bytes minified+gzipped, over 6 KB`);
};

// A message published from page A shows in page B and in A, for each
// transport forced and for auto (which takes WebSocket, which the server
// offers); and the file works when imported as an ES module.
scenarios.exchange = async () => {
    const srv = await startServer();
    const ctx = await (await launch()).newContext();

    for (const t of ["websocket", "eventsource", "longpoll", "auto"]) {
        const A = await newPage(ctx, `${srv.base}/t.html`), B = await newPage(ctx, `${srv.base}/t.html`);
        const ch = `x-${t}`, text = `hello over ${t}`, t0 = Date.now();

        await A.evaluate(([c, o]) => window.start([c], o), [ch, { transport: t }]);
        await B.evaluate(([c, o]) => window.start([c], o), [ch, { transport: t }]);
        await live(A, t === "auto" ? "websocket" : t);
        await live(B, t === "auto" ? "websocket" : t);
        const up = Date.now() - t0, t1 = Date.now();

        await A.evaluate(([c, x]) => window.sub.publish(c, x), [ch, text]);
        await shows(B, text);
        const lat = Date.now() - t1;

        await shows(A, text);
        check(await count(B, text) === 1 && await count(A, text) === 1, "delivered twice");
        const states = await B.evaluate(() => window.states);

        if (t === "auto") {
            check(states[0] === "connecting websocket" && states.includes("live websocket"),
                  `auto went ${states.join(", ")}`);
        }
        say(`${t}: both pages live in ${up} ms (${states.join(" -> ")}); ` +
            `A's message reached B in ${lat} ms`);
        await A.close();
        await B.close();
    }

    const M = await newPage(ctx, `${srv.base}/m.html`);

    await waitIn(M, "the module page live", () => window.state === "live");
    await publish(srv, "module", "to the module");
    await waitIn(M, "the module page's message", () => window.log.includes("to the module"));
    say("imported as an ES module: live and receiving");
};

// sub.publish over a WebSocket: where the location lets clients publish
// (the server answers the subprotocol comet.publish) the message goes over
// the socket and carries the identity the server gives it; an event type
// on a one-channel connection, a location where clients only listen, and
// a connection that is not a WebSocket go by POST to publishUrl (whose
// messages carry no identity here).  A POST to /nowhere/ would fail: the
// first publish cannot have gone that way.
scenarios.wspublish = async () => {
    const srv = await startServer(`
<Location /talk/>
    SetHandler comet-subscriber
    CometClientPublish on
    CometClientIdentity "guest@%{REMOTE_ADDR}"
</Location>`);
    const ctx = await (await launch()).newContext();
    const page = async (chs, where, opts) => {
        const P = await newPage(ctx, `${srv.base}/t.html`);

        await P.evaluate(([c, w, o]) => window.start(c, o, w), [chs, where, opts]);
        await live(P, opts.transport);
        return P;
    };
    const from = async (P, text) => {
        await shows(P, text);
        return (await P.evaluate((x) => window.sent(x), text)).from;
    };
    const ws = { transport: "websocket" };

    // One channel: the text alone over the socket.
    let A = await page(["solo"], "/talk/", { transport: "websocket", publishUrl: "/nowhere/" });
    let B = await page(["solo"], "/talk/", ws);
    const r = await A.evaluate(() => window.sub.publish("solo", "over the socket"));

    check(r && r.sent === "websocket", `publish answered ${JSON.stringify(r)}`);
    check(await from(B, "over the socket") === "guest@127.0.0.1", "no identity: not sent over the socket");
    check(await from(A, "over the socket") === "guest@127.0.0.1", "A's own message");
    say("one channel: sent over the WebSocket, seen with the server's identity");
    await A.close();
    // An event type on one channel: POST.
    A = await page(["solo"], "/talk/", ws);
    await A.evaluate(() => window.sub.publish("solo", "typed", "chat"));
    check(await from(B, "typed") === undefined, "an event on one channel went over the socket");
    await A.close();
    await B.close();
    // Two channels: the envelope, with its event type.
    A = await page(["c1", "c2"], "/talk/", { transport: "websocket", publishUrl: "/nowhere/" });
    B = await page(["c2"], "/talk/", ws);
    await A.evaluate(() => window.sub.publish("c2", { move: "e2e4" }, "move"));
    await shows(B, '{"move":"e2e4"}');
    const m = await B.evaluate((x) => window.sent(x), '{"move":"e2e4"}');

    check(m.from === "guest@127.0.0.1" && m.event === "move" && m.channel === "c2",
          `envelope: ${JSON.stringify(m)}`);
    say("two channels: the envelope over the WebSocket, event type kept");
    await A.close();
    await B.close();
    // Where clients only listen, and over EventSource: POST.
    for (const [where, t] of [["/events/", "websocket"], ["/talk/", "eventsource"]]) {
        A = await page(["quiet"], where, { transport: t });
        B = await page(["quiet"], where, { transport: t });
        const text = `posted ${t} at ${where}`;
        const a = await A.evaluate((x) => window.sub.publish("quiet", x), text);

        check(a && a.id, `the POST's answer: ${JSON.stringify(a)}`);
        check(await from(B, text) === undefined, `${text}: carries an identity`);
        await A.close();
        await B.close();
    }
    const st = await status(srv);
    say(`listen-only location and EventSource: POST; server-status ${
        Object.keys(st).filter((k) => /^CometProcess/.test(k)).map((k) =>
            (/client_publishes=\d+/.exec(st[k]) || [""])[0]).join(" ")}`);
};

// The server is stopped and started again (a new store, a new epoch) while
// the pages are open: each reconnects by itself and shows what was
// published before it was back, nothing lost, nothing twice, and says that
// messages may have been missed (the server cannot know what the old store
// held).
scenarios.restart = async () => {
    const srv = await startServer();
    const ctx = await (await launch()).newContext();
    const kinds = ["websocket", "eventsource", "longpoll", "auto"], pages = {};

    for (const t of kinds) {
        pages[t] = await newPage(ctx, `${srv.base}/t.html`);
        await pages[t].evaluate(([c, o]) => window.start([c], o),
                                [`r-${t}`, { transport: t, retryMin: 800, retryMax: 3000 }]);
        await live(pages[t], t === "auto" ? "websocket" : t);
        await publish(srv, `r-${t}`, "before");
        await shows(pages[t], "before");
    }
    await command("stop");
    for (const t of kinds) {
        await waitIn(pages[t], "the page to notice", () => window.sub.state !== "live");
    }
    await command("again");
    const away = {};

    for (const t of kinds) {
        away[t] = (await publish(srv, `r-${t}`, "meanwhile 1")).receivers === 0;
        await publish(srv, `r-${t}`, "meanwhile 2");
    }
    for (const t of kinds) {
        const P = pages[t];

        await shows(P, "meanwhile 2", 20000);
        await live(P);
        await publish(srv, `r-${t}`, "after");
        await shows(P, "after");
        for (const text of ["before", "meanwhile 1", "meanwhile 2", "after"]) {
            check(await count(P, text) === 1, `${t}: '${text}' seen ${await count(P, text)} times`);
        }
        const seen = await P.evaluate(() => ({ missed: window.missed.length, states: window.states }));

        check(seen.missed > 0, `${t}: no missed signal after the store was renewed`);
        say(`${t}: reconnected (${seen.states.slice(-3).join(" -> ")}); ` +
            `${away[t] ? "resumed what was published while it was away" : "was back before the publish"}; ` +
            "each message once; missed signal shown");
    }
};

// An id the server refuses (400) does not end the subscription as it
// would EventSource's: the client starts afresh and says messages may be
// missing.
scenarios.badid = async () => {
    const srv = await startServer();
    const ctx = await (await launch()).newContext();

    for (const t of ["websocket", "eventsource", "longpoll"]) {
        for (const id of ["garbage", "1234:5,6"]) {
            const P = await newPage(ctx, `${srv.base}/t.html`);

            await P.evaluate(([c, o]) => window.start([c], o), [`b-${t}`, { transport: t, lastEventId: id }]);
            await live(P, t);
            await waitIn(P, "the missed signal", () => window.missed.length > 0);
            await publish(srv, `b-${t}`, `fresh ${id}`);
            await shows(P, `fresh ${id}`);
            check(/^[^:]+:\d+$/.test(await P.evaluate(() => window.sub.lastEventId)), "no fresh id");
            await P.close();
        }
        say(`${t}: a refused id is dropped, the missed signal shown, messages flow`);
    }
};

// A proxy that holds every response until it is complete (as some
// corporate proxies and virus scanners do): a stream never gets through,
// so auto falls back to long-polling, and messages still arrive.
scenarios.proxy = async () => {
    const srv = await startServer();
    let buffering = true;
    const proxy = http.createServer((req, res) => {
        const up = http.request({
            host: "127.0.0.1", port: srv.port, method: req.method, path: req.url,
            headers: { ...req.headers, connection: "close" }
        }, (ur) => {
            const parts = [];

            if (!buffering) {
                res.writeHead(ur.statusCode, ur.headers);
                ur.pipe(res);
                return;
            }

            ur.on("data", (c) => parts.push(c));
            ur.on("end", () => {
                const body = Buffer.concat(parts), h = { ...ur.headers };

                delete h["transfer-encoding"];
                delete h.connection;
                h["content-length"] = body.length;
                res.writeHead(ur.statusCode, h);
                res.end(body);
            });
        });

        up.on("error", () => res.destroy());
        res.on("close", () => up.destroy());
        req.pipe(up);
    });

    await new Promise((r) => proxy.listen(0, "127.0.0.1", r));
    const ctx = await (await launch()).newContext();
    const P = await newPage(ctx, `http://127.0.0.1:${proxy.address().port}/t.html`);

    await P.evaluate(() => window.start(["proxied"], { firstByteTimeout: 1500, upgradeInterval: 2000 }));
    await live(P, "longpoll", 20000);
    await publish(srv, "proxied", "through the proxy");
    await shows(P, "through the proxy");
    await publish(srv, "proxied", "and again");
    await shows(P, "and again");
    const states = await P.evaluate(() => window.states);

    check(states.includes("connecting eventsource"), `no EventSource attempt: ${states}`);
    say(`auto through a buffering proxy: ${states.join(" -> ")}; messages arrive`);

    // The proxy lets streams through now: the client, trying the better
    // transports again now and then, goes back to a stream by itself.
    buffering = false;
    await live(P, "eventsource", 30000);
    await publish(srv, "proxied", "streamed");
    await shows(P, "streamed");
    for (const text of ["through the proxy", "and again", "streamed"]) {
        check(await count(P, text) === 1, `'${text}' seen ${await count(P, text)} times`);
    }
    say("the proxy stops buffering: back on eventsource by itself, each message once");
    proxy.close();
    proxy.closeAllConnections();
};

// Ten tabs with share: true hold one connection to the server and all
// receive; closing the tab that opened it loses nothing.  Both ways of
// sharing: the SharedWorker (Chromium has it), and the tabs' own leader
// election (what browsers without SharedWorker use).
scenarios.share = async () => {
    const srv = await startServer();
    const b = await launch();

    for (const share of [true, "tabs"]) {
        const ctx = await b.newContext(), tabs = [], ch = `s-${share}`;
        const how = share === true ? "SharedWorker" : "leader tab";

        for (let i = 0; i < 10; i++) {
            tabs.push(await newPage(ctx, `${srv.base}/t.html`));
            await tabs[i].evaluate(([c, o]) => window.start([c], o),
                                   [ch, { share, transport: "eventsource", retryMin: 300 }]);
        }
        for (const t of tabs) {
            await live(t);
        }
        await until("one server connection", async () => await connections(srv) === 1);
        await publish(srv, ch, "to all ten");
        for (const t of tabs) {
            await shows(t, "to all ten");
        }

        // Close the tab that opened the connection (the leader), publish
        // at once, and again once a new connection is up.
        let leader = 0;

        if (share === "tabs") {
            const leading = [];

            for (let i = 0; i < tabs.length; i++) {
                if (await tabs[i].evaluate(() => !!window.sub.g.c)) {
                    leading.push(i);
                }
            }
            check(leading.length === 1, `${leading.length} tabs lead`);
            leader = leading[0];
        }
        // With the leader tab gone, the new leader's request waits here
        // until a message has been published: it must resume to get it.
        let asked, release;
        const held = new Promise((r) => { release = r; });
        const arrived = new Promise((r) => { asked = r; });

        if (share === "tabs") {
            await ctx.route("**/events/**", async (route) => {
                asked();
                await held;
                await route.continue();
            });
        }
        await tabs[leader].close();
        tabs.splice(leader, 1);
        if (share === "tabs") {
            await arrived;
        }
        const gap = (await publish(srv, ch, "right after the close")).receivers === 0;

        release();
        for (const t of tabs) {
            await shows(t, "right after the close", 15000);
        }
        await until("one server connection again", async () => await connections(srv) === 1);
        await publish(srv, ch, "later");
        for (const t of tabs) {
            await shows(t, "later");
            for (const text of ["to all ten", "right after the close", "later"]) {
                check(await count(t, text) === 1, `${how}: '${text}' seen ${await count(t, text)} times`);
            }
        }
        say(`${how}: ten tabs, one server connection, all receive; the tab that opened it ` +
            `closed, ${gap ? "a message published before another took over" : "a message published at once"} ` +
            "reached the other nine, nothing lost or twice");
        await ctx.close();
        await until("no connection left", async () => await connections(srv) === 0);
    }
};

// The demo chat as `make run` serves it: two people talk, a third joins
// later and gets the history; markup in a message stays text; screenshots
// of both windows mid-conversation go to build/artifacts/.
scenarios.demo = async () => {
    const srv = await startServer();
    const b = await launch();
    const join = async (name) => {
        const ctx = await b.newContext({ viewport: { width: 1060, height: 660 }, deviceScaleFactor: 1 });
        const P = await newPage(ctx, `${srv.base}/`);

        await P.fill("#name", name);
        await P.click("#name-form button");
        await waitIn(P, "the chat live", () => /\blive\b/.test(document.getElementById("conn").className));
        return P;
    };
    const says = async (P, text) => {
        await P.fill("#text", text);
        await P.press("#text", "Enter");
    };
    const has = (P, text) => waitIn(P, `'${text}' in the chat`,
        (x) => [...document.querySelectorAll("#log .text")].some((e) => e.textContent === x), text);

    const alice = await join("Alice"), bob = await join("Bob");
    const talk = [
        [alice, "Hi Bob! Is the new build up?"],
        [bob, "Yes, deployed five minutes ago. Pushed straight from Apache, no polling."],
        [alice, "Nice. Two windows, one connection each, and it arrives in a blink."],
        [bob, "Try <b>bold</b> or <script>alert(1)</script>: it stays text."]
    ];

    for (const [P, text] of talk) {
        await says(P, text);
        await has(alice, text);
        await has(bob, text);
    }
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    await alice.screenshot({ path: path.join(ARTIFACTS, "demo-alice.png") });
    await bob.screenshot({ path: path.join(ARTIFACTS, "demo-bob.png") });

    const xss = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>';

    await publish(srv, "lobby", JSON.stringify({ name: "<i>mallory</i>", text: xss }));
    await publish(srv, "dev", "plain text from an application <b>");
    await has(bob, xss);
    check(await bob.evaluate(() => window.pwned === undefined
        && !document.querySelector("#log img, #log script, #log i, #log b")), "markup in a message was rendered");
    check(await bob.textContent("#conn") === "live \u00b7 websocket", `bob's state: ${await bob.textContent("#conn")}`);
    await waitIn(bob, "an unread mark on #dev", () => document.querySelector('[data-room="dev"] .badge').textContent === "1");

    const carol = await join("Carol");

    for (const [, text] of talk) {
        await has(carol, text);
    }
    say(`two people talk, a late joiner gets the history, markup stays text; ` +
        `screenshots in ${path.relative(TOP, ARTIFACTS)}/demo-{alice,bob}.png`);
};

// The README's "Publishing from an application" snippets, run as they are
// written (the socket path aside) against the real server.
scenarios.snippets = async () => {
    const srv = await startServer();
    const readme = fs.readFileSync(path.join(TOP, "README.md"), "utf8");
    const part = readme.slice(readme.indexOf("### From an application"));
    // Up to the next heading: "Applications listen" after it subscribes,
    // which would not end.
    const next = part.slice(1).search(/\n##+ /);
    const end = next < 0 ? part.length : next + 1;
    const blocks = [...part.slice(0, end).matchAll(/```(\w+)\n([\s\S]*?)```/g)];
    const run = (file, args, opts) => new Promise((resolve, reject) => {
        execFile(file, args, { timeout: 20000, ...opts }, (err, out, errout) =>
            err ? reject(new Error(`${file}: ${err.message} ${errout}`)) : resolve(out));
    });
    const kinds = [];

    check(blocks.length >= 4, "README: the publish snippets are missing");
    for (const [, lang, code0] of blocks) {
        const code = code0.replaceAll("/run/apache2/comet.sock", srv.socket);

        if (lang === "python") {
            // Debian's python3, the one python3-redis belongs to.
            await run(fs.existsSync("/usr/bin/python3") ? "/usr/bin/python3" : "python3", ["-c", code]);
        }
        else if (lang === "php") {
            await run("php", ["-r", code.replace(/^<\?php\s*/, "")]);
        }
        else if (lang === "js") {
            // Where Node finds the redis package the tests install.
            const file = path.join(HERE, "node_modules", `.snippet-${process.pid}.mjs`);

            fs.writeFileSync(file, code);
            try {
                await run("node", [file]);
            }
            finally {
                fs.unlinkSync(file);
            }
        }
        else if (lang === "sh") {
            await run("sh", ["-c", code]);
        }
        else {
            continue;
        }
        kinds.push(lang);
    }
    const r = await fetch(`${srv.base}/events/lobby?transport=longpoll&backlog=all`);
    const got = (await r.json()).messages.map((m) => JSON.parse(m.data).text);

    for (const who of ["Python", "PHP", "Node", "the shell"]) {
        check(got.includes(`hello from ${who}`), `no message from the ${who} snippet: ${got}`);
    }
    say(`README snippets (${kinds.join(", ")}) each published to the real server`);
};

// ---- main -------------------------------------------------------------------

try {
    check(scenarios[scenario], `unknown scenario '${scenario}'`);
    await scenarios[scenario]();
    say(`passed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}
catch (e) {
    say(`FAILED: ${e.stack || e}`);
    process.exitCode = 1;
}
finally {
    await browser?.close().catch(() => {});
    // Whatever sockets are left (the proxy's) must not keep us here.
    commands.end(() => process.exit());
}
