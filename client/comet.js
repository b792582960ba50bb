/* comet.js -- the browser client of mod_comet.  No dependencies.
 *
 *   var sub = Comet.subscribe("/events/", ["room1", "room2"], function (msg) {
 *       // msg.channel, msg.id, msg.event, msg.data, msg.time, msg.from
 *   }, { transport: "auto", backlog: 20, share: true, publishUrl: "/publish/" });
 *   sub.on("state", function (s) {});    // s.state: connecting | live | reconnecting | closed; s.transport
 *   sub.on("missed", function (info) {}); // the server said messages were lost (info.channel, or null: all)
 *   sub.publish("room1", "hi");           // a Promise of the server's answer
 *   sub.close();
 *
 * One file for both ways of loading it.  It is a classic script that sets
 * globalThis.Comet (window.Comet on a page), because a file with `export`
 * cannot be a classic <script>, while a classic file imported as a module
 * (`import "/comet/comet.js"`) runs just as well: it then sets the same
 * global, and `module.exports` serves bundlers and Node.  The same file is
 * also the SharedWorker's script (share: true), so a page needs no second
 * URL.
 *
 * Structure: a Conn is one logical connection (transports, fallback,
 * position, backlog, retries); a Group hands a Conn's events to the
 * subscriptions of one page -- running the Conn itself, or receiving its
 * events from a SharedWorker or from the tab that leads the others.
 *
 * Licensed under the Apache License, Version 2.0.
 */
(function (G) {
    "use strict";

    var ORDER = ["websocket", "eventsource", "longpoll"],
        T = {},
        groups = {},
        seq = 0,
        port,
        doc = G.document,
        SCRIPT = doc && doc.currentScript && doc.currentScript.src,
        DEFAULTS = {
            transport: "auto",
            firstByteTimeout: 6000,   // auto: fall back when no byte comes
            idleTimeout: 45000,       // a stream silent this long is dead
            pollTimeout: 75000,       // a long-poll unanswered this long
            retryMin: 1000,
            retryMax: 30000,
            upgradeInterval: 30000    // first retry of a better transport
        };

    function now() { return Date.now(); }
    function later(f, ms) { return setTimeout(f, ms); }
    function noop() {}

    /* A user's callback that throws must not break a connection's loop. */
    function call(f, x) {
        try { f(x); }
        catch (e) { later(function () { throw e; }, 0); }
    }

    /* ---- ids ----------------------------------------------------------
     * <epoch>:<seq>, or <epoch>:<seq>,<seq>,... with one seq per channel in
     * the order of the URL.  A position {e, s[]} is where a subscription
     * stands: s[i] is the last seq seen of channel i (undefined: unknown). */
    function parse(s) {
        var m = /^([^:,]+):(\d+(,\d+)*)$/.exec(s || "");

        return m ? { e: m[1], s: m[2].split(",").map(Number) } : null;
    }

    function fmt(p, n) {
        for (var i = 0; p && i < n; i++) {
            if (p.s[i] == null) {
                return "";
            }
        }
        return p ? p.e + ":" + p.s.slice(0, n).join(",") : "";
    }

    function merge(p, s) {
        for (var i = 0; i < s.length; i++) {
            if (!(p.s[i] >= s[i])) {
                p.s[i] = s[i];
            }
        }
    }

    /* Dedupe: o.p moves past m; returns m's own id (<epoch>:<seq> of its
     * channel), or nothing when m was seen already. */
    function take(o, chs, m) {
        var id = parse(m.id), ci = chs.indexOf(m.channel), p = o.p, q;

        if (!id || ci < 0) {
            return m.id || "?";
        }
        q = id.s[id.s.length > 1 ? ci : 0];
        if (!p || p.e != id.e) {
            p = o.p = { e: id.e, s: [] };
        }
        else if (p.s[ci] >= q) {
            return;
        }
        if (id.s.length > 1) {
            merge(p, id.s);
        }
        p.s[ci] = q;
        return id.e + ":" + q;
    }

    function adopt(o, s) {
        var id = parse(s);

        if (id && o.p && o.p.e == id.e) {
            merge(o.p, id.s);
        }
        else if (id) {
            o.p = id;
        }
    }

    function num(n) {
        return n == "all" ? 1000 : +n || 0;
    }

    /* The newest n messages of each channel: what a subscription that
     * joins a shared connection gets as its backlog. */
    function Cache() { this.a = []; this.n = 0; }
    Cache.prototype = {
        cap: function (n) { this.n = Math.max(this.n, num(n)); },
        add: function (m) {
            var a = this.a, n = 0, i;

            a.push(m);
            for (i = a.length; i--;) {
                if (a[i].channel == m.channel && ++n > this.n) {
                    a.splice(i, 1);
                    break;
                }
            }
        },
        get: function (n) {
            var a = this.a, c = {}, r = [], i, k;

            n = num(n);
            for (i = a.length; i--;) {
                k = a[i].channel;
                if ((c[k] = (c[k] || 0) + 1) <= n) {
                    r.unshift(a[i]);
                }
            }
            return r;
        }
    };

    /* ---- transports ---------------------------------------------------
     * A transport is { ok(): usable here?, slow: no first-byte bound,
     * open(link, opts, channels): { close(), publish?(ch, data, event) } }.
     * It reports through the link:
     *   link.url(name)     the request URL (position, backlog) for ?transport=name
     *   link.up()          bytes arrived (the first one means "live")
     *   link.msg(m)        a message {channel, id, event?, data, time?, from?}
     *   link.pos(id)       the position after what was delivered
     *   link.sig(kind, ch) "missed" or "deleted" for channel ch (null: any)
     *   link.end(err)      it ended: nothing (clean end), {status, after},
     *                      {net: 1} (network error) or {to: 1} (timed out) */

    function fail(r) {
        throw { status: r.status, after: r.headers.get("Retry-After") };
    }

    function request(L, o, name, ab) {
        return fetch(L.url(name), {
            cache: "no-store", signal: ab.signal,
            credentials: o.withCredentials ? "include" : "same-origin"
        });
    }

    /* WebSocket: frames are the JSON objects of the ndjson stream, and a
     * frame without a channel (e.g. {}) is a keepalive: the browser does
     * not show ping frames, and the idle bound needs bytes.  The request
     * names its transport, so a server without WebSocket refuses the
     * upgrade at once (400) instead of answering as a long-poll.  The
     * server answers the subprotocol "comet.publish" where the client may
     * publish (CometClientPublish): then x.publish sends over the socket,
     * the text alone on a connection of one channel, else the envelope
     * {channel, event, data}.  It gives null when it cannot (an event on
     * one channel, a channel not subscribed here): POST then. */
    T.websocket = {
        ok: function () { return !!G.WebSocket; },
        open: function (L, o, chs) {
            var ws = new WebSocket(L.url("websocket").replace(/^http/, "ws"),
                                   ["comet.publish", "comet"]),
                x = { close: function () { ws.onclose = null; ws.close(); } };

            ws.onopen = function () {
                if (ws.protocol == "comet.publish") {
                    x.publish = function (ch, data, event) {
                        var one = chs.length == 1;

                        if (chs.indexOf(ch) < 0 || (one && event)) {
                            return null;
                        }
                        ws.send(one ? data : JSON.stringify({
                            channel: ch, event: event || undefined, data: data
                        }));
                        return Promise.resolve({ sent: "websocket" });
                    };
                }
                L.up();
            };
            ws.onmessage = function (e) {
                var o = JSON.parse(e.data);

                L.up();
                if (o.missed || o.deleted) {
                    L.sig(o.missed ? "missed" : "deleted", o.channel);
                }
                else if (o.channel) {
                    L.msg(o);
                }
                else if (o.id) {
                    L.pos(o.id);
                }
            };
            /* 4000 + an HTTP status: the server refused (4400 bad id). */
            ws.onclose = function (e) {
                x.publish = null;
                L.end(e.code >= 4000 ? { status: e.code - 4000 }
                      : e.code == 1000 ? undefined : { net: 1 });
            };
            return x;
        }
    };

    /* Server-Sent Events, read with fetch rather than EventSource: it sees
     * the status (EventSource gives up for good on any 4xx), every byte --
     * the server's first "retry:" line and its keepalive comments, which
     * tell a working stream from one a proxy buffers -- and it cannot
     * reconnect behind our back. */
    T.eventsource = {
        ok: function () { return !!(G.fetch && G.ReadableStream && G.TextDecoder); },
        open: function (L, o, chs) {
            var ab = new AbortController(), buf = "", data = [], ev = "",
                id = null, dec = new TextDecoder();

            function field(l) {
                var i = l.indexOf(":"), f = i < 0 ? l : l.slice(0, i),
                    v = i < 0 ? "" : l.slice(l[i + 1] == " " ? i + 2 : i + 1);

                if (!l) {
                    dispatch();
                }
                else if (f == "data") {
                    data.push(v);
                }
                else if (f == "event") {
                    ev = v;
                }
                else if (f == "id") {
                    id = v;
                }
            }

            function dispatch() {
                var d = data.join("\n"), h = ev.indexOf("#"), multi = chs.length > 1;

                if (!data.length) {
                    if (id) {
                        L.pos(id);
                    }
                }
                else if (ev == "comet-missed" || ev == "comet-deleted") {
                    L.sig(ev.slice(6), d);
                }
                else {
                    L.msg({
                        channel: multi ? (h < 0 ? ev : ev.slice(0, h)) : chs[0],
                        id: id, data: d,
                        event: (multi ? (h < 0 ? "" : ev.slice(h + 1)) : ev) || undefined
                    });
                }
                data = [];
                ev = "";
                id = null;
            }

            request(L, o, "sse", ab).then(function (r) {
                var rd = r.body && r.body.getReader();

                if (!r.ok || !/^text\/event-stream/.test(r.headers.get("Content-Type"))) {
                    fail(r);
                }
                return (function pump() {
                    return rd.read().then(function (x) {
                        var re = /\r\n|\r|\n/g, m, at = 0;

                        if (x.done) {
                            return L.end();
                        }
                        L.up();
                        buf += dec.decode(x.value, { stream: true });
                        while ((m = re.exec(buf)) && !(m[0] == "\r" && re.lastIndex == buf.length)) {
                            field(buf.slice(at, m.index));
                            at = re.lastIndex;
                        }
                        buf = buf.slice(at);
                        return pump();
                    });
                })();
            }).catch(function (e) {
                L.end(e && e.status ? e : { net: 1 });
            });
            return { close: function () { ab.abort(); } };
        }
    };

    /* Long-polling: one JSON document per request, then the next request
     * from the document's id.  Its answer may take CometSubscriberTimeout,
     * so it has no first-byte bound: a request the server has held for a
     * second is taken as working. */
    T.longpoll = {
        slow: 1,
        ok: function () { return !!(G.fetch && G.AbortController); },
        open: function (L, o) {
            var ab, t, w;

            (function poll() {
                ab = new AbortController();
                t = later(function () { L.end({ to: 1 }); }, o.pollTimeout);
                w = later(function () { L.up(); }, 1000);
                request(L, o, "longpoll", ab).then(function (r) {
                    return r.ok ? r.json() : fail(r);
                }).then(function (d) {
                    clearTimeout(t);
                    L.up();
                    d.messages.forEach(function (m) { L.msg(m); });
                    L.pos(d.id);
                    if (d.missed) {
                        L.sig("missed", null);
                    }
                    if (!L.dead) {
                        poll();
                    }
                }).catch(function (e) {
                    L.end(e && e.status ? e : { net: 1 });
                });
            })();
            return {
                close: function () { clearTimeout(t); clearTimeout(w); ab.abort(); }
            };
        }
    };

    /* ---- a connection ---------------------------------------------------- */

    function Link(c, t, probe) {
        this.c = c;
        this.t = t;
        this.pr = probe;
    }
    Link.prototype = {
        url: function (q) { return this.c.url(q); },
        up: function () { this.dead || this.c.up(this); },
        msg: function (m) { this.dead || this.c.msg(m); },
        pos: function (p) { this.dead || this.c.pos(p); },
        sig: function (k, ch) { this.dead || this.c.out({ t: k == "missed" ? "x" : "d", x: { channel: ch || null } }); },
        end: function (e) { this.dead || this.c.end(this, e); }
    };

    /* url: the subscription's URL, channels included; p: the position to
     * resume from; b: the backlog asked for while there is no position;
     * out: where every event goes: {t: "m", m, p} a message and the
     * position after it, {t: "p", p} a position, {t: "s", s} a state,
     * {t: "x", x} missed, {t: "d", x} deleted, {t: "r"} the position was
     * dropped. */
    function Conn(url, chs, o, p, b, out) {
        var c = this;

        c.u = url;
        c.chs = chs;
        c.o = o;
        c.b = b;
        c.out = out;
        c.p = parse(p);
        c.raw = c.p ? "" : p;   // sent as it is: the server says if it is bad
        c.n = 0;            // failures in a row: the backoff's exponent
        c.bad = {};         // transport -> time before which it is not tried again
        c.wait = {};        // transport -> how long it waits after its next failure
        c.ok = {};          // transport -> it has worked here
        c.order = o.transport == "auto"
            ? ORDER.filter(function (n) { return T[n].ok(); }) : [o.transport];
        c.online = function () {
            if (c.rt) {
                clearTimeout(c.rt);
                c.go(c.ti);
            }
        };
        G.addEventListener && G.addEventListener("online", c.online);
        c.go(0);
    }

    Conn.prototype = {
        url: function (t) {
            var id = fmt(this.p, this.chs.length) || this.raw,
                q = "transport=" + t + (id ? "&last_event_id=" + encodeURIComponent(id)
                                          : this.b ? "&backlog=" + this.b : "");

            return this.u + (/\?/.test(this.u) ? "&" : "?") + q;
        },

        set: function (state, t) {
            var s = this.st;

            if (!s || s.state != state || s.transport != t) {
                this.out({ t: "s", s: this.st = { state: state, transport: t } });
            }
        },

        link: function (i, probe) {
            var c = this, t = c.order[i], L = new Link(c, t, probe), to = c.o.firstByteTimeout;

            L.i = i;
            if (!T[t].slow && to) {
                L.fb = later(function () { c.end(L, { to: 1 }); }, to);
            }
            try {
                L.x = T[t].open(L, c.o, c.chs);
            }
            catch (e) {
                /* e.g. a Content-Security-Policy that forbids it */
                L.x = { close: noop };
                later(function () { L.end({ net: 1 }); }, 0);
            }
            return L;
        },

        go: function (i) {
            this.rt = 0;
            this.ti = i;
            this.set(this.was ? "reconnecting" : "connecting", this.order[i]);
            this.cur = this.link(i);
        },

        drop: function (L) {
            if (L && !L.dead) {
                L.dead = 1;
                clearTimeout(L.fb);
                clearTimeout(L.idle);
                L.x.close();
            }
        },

        up: function (L) {
            var c = this, idle = c.o.idleTimeout;

            clearTimeout(L.fb);
            if (!T[L.t].slow && idle) {
                clearTimeout(L.idle);
                L.idle = later(function () { c.end(L, { to: 1 }); }, idle);
            }
            if (L.at) {
                return;
            }
            L.at = now();
            c.ok[L.t] = 1;
            if (L.pr) {
                /* A better transport works: it takes over (what both
                 * deliver meanwhile is deduplicated). */
                c.drop(c.cur);
                c.cur = L;
                c.ti = L.i;
                L.pr = c.probe = 0;
            }
            c.was = 1;
            c.set("live", L.t);
            c.plan();
        },

        /* While on a fallback, try the better transports again now and
         * then, without leaving the one that works until one delivers. */
        plan: function () {
            var c = this, best = 0, j;

            clearTimeout(c.pt);
            if (c.closed || c.probe || !c.ti) {
                return;
            }
            for (j = 1; j < c.ti; j++) {
                if ((c.bad[c.order[j]] || 0) < (c.bad[c.order[best]] || 0)) {
                    best = j;
                }
            }
            c.pt = later(function () {
                c.probe = c.link(best, 1);
            }, Math.max(0, (c.bad[c.order[best]] || 0) - now()));
        },

        msg: function (m) {
            if (take(this, this.chs, m)) {
                this.out({ t: "m", m: m, p: fmt(this.p, this.chs.length) });
            }
        },

        pos: function (p) {
            adopt(this, p);
            this.out({ t: "p", p: fmt(this.p, this.chs.length) });
        },

        backoff: function () {
            var o = this.o, d = Math.min(o.retryMax, o.retryMin * Math.pow(2, this.n++));

            return d / 2 + Math.random() * d / 2;
        },

        end: function (L, e) {
            var c = this, t = L.t, st = e && e.status, i = c.ti, d;

            c.drop(L);
            if (L.pr || c.closed) {
                /* A better transport failed again: it waits longer. */
                c.probe = 0;
                c.bad[t] = now() + (c.wait[t] = Math.min(600000, (c.wait[t] || c.o.upgradeInterval / 2) * 2));
                c.plan();
                return;
            }
            clearTimeout(c.pt);
            c.drop(c.probe);
            c.probe = 0;
            if (L.at && now() - L.at > 5000) {
                c.n = 0;
            }
            if (st == 400 && (fmt(c.p, c.chs.length) || c.raw)) {
                /* The server refuses the id (a stale or foreign one):
                 * start afresh and say that messages may be missing. */
                c.p = null;
                c.raw = "";
                c.out({ t: "r" });
                c.out({ t: "x", x: { channel: null } });
                return c.go(i);
            }
            if (i + 1 < c.order.length
                && (e && e.to && !L.at || st >= 400 && st < 500 && st != 408 && st != 429
                    || !L.at && !c.ok[t])) {
                /* This transport does not work here (refused, or nothing
                 * came through): the next one, at once. */
                c.bad[t] = now() + (c.wait[t] = Math.min(600000, (c.wait[t] || c.o.upgradeInterval / 2) * 2));
                return c.go(i + 1);
            }
            d = c.backoff();
            if (e && e.after > 0) {
                d = Math.max(d, e.after * 1000);
            }
            c.set(c.was ? "reconnecting" : "connecting", t);
            c.rt = later(function () { c.go(i); }, d);
        },

        close: function () {
            this.closed = 1;
            clearTimeout(this.rt);
            clearTimeout(this.pt);
            this.drop(this.cur);
            this.drop(this.probe);
            G.removeEventListener && G.removeEventListener("online", this.online);
            this.set("closed", null);
        }
    };

    /* ---- subscriptions and sharing -------------------------------------- */

    function Sub(url, chs, fn, o) {
        var s = this, q = url.indexOf("?"), mode = 0, key, gk;

        o = s.o = Object.assign({}, DEFAULTS, o);
        chs = s.chs = [].concat(chs);
        s.fn = fn;
        s.h = {};
        s.id = ++seq + ":" + Math.random();
        s.p = parse(o.lastEventId);
        s.state = "connecting";
        /* Channels go after the location's path, before any query. */
        url = new URL(q < 0 ? url : url.slice(0, q), G.location).href + chs.join(",")
              + (q < 0 ? "" : url.slice(q));
        if (o.transport != "auto" && !T[o.transport]) {
            throw new Error("comet: no transport " + o.transport);
        }
        if (o.share) {
            mode = o.share != "tabs" && G.SharedWorker && P(o.workerUrl || SCRIPT) ? 1
                 : G.BroadcastChannel && G.navigator && navigator.locks ? 2 : 0;
        }
        key = JSON.stringify([url, o.transport, o.withCredentials, o.firstByteTimeout,
                              o.idleTimeout, o.pollTimeout, o.retryMin, o.retryMax,
                              o.upgradeInterval]);
        gk = mode ? mode + key : s.id;
        (groups[gk] || (groups[gk] = new Group(gk, key, url, chs, o, mode))).add(s);
    }

    Sub.prototype = {
        on: function (type, f) {
            (this.h[type] = this.h[type] || []).push(f);
            return this;
        },

        emit: function (type, x) {
            (this.h[type] || []).forEach(function (f) { call(f, x); });
        },

        get lastEventId() {
            return fmt(this.p, this.chs.length) || undefined;
        },

        deliver: function (m, p) {
            var id = take(this, this.chs, m);

            if (id) {
                call(this.fn, {
                    channel: m.channel, id: id, event: m.event, data: m.data,
                    time: m.time, from: m.from
                });
            }
            adopt(this, p);
        },

        /* Over the connection when its transport can publish (a
         * WebSocket that the server lets publish: t.publish returns a
         * Promise of {sent: "websocket"}, or null), else POST
         * publishUrl + channel (a Promise of the server's answer).  data
         * that is not a string is sent as JSON. */
        publish: function (ch, data, event) {
            var o = this.o, h = {}, c = this.g && this.g.c, t = c && c.cur, p;

            data = typeof data == "string" ? data : JSON.stringify(data);
            p = t && t.at && t.x.publish && t.x.publish(ch, data, event);
            if (p) {
                return p;
            }
            if (!o.publishUrl) {
                return Promise.reject(new Error("comet: no publishUrl"));
            }
            if (event) {
                h["Comet-Event"] = event;
            }
            return fetch(new URL(o.publishUrl, G.location).href + ch, {
                method: "POST", headers: h,
                body: data,
                credentials: o.withCredentials ? "include" : "same-origin"
            }).then(function (r) {
                return r.ok ? r.json() : r.text().then(function (t) {
                    throw new Error("comet: publish: " + r.status + " " + t);
                });
            });
        },

        close: function () {
            if (this.g) {
                this.g.remove(this);
                this.g = null;
                this.state = "closed";
                this.emit("state", { state: "closed", transport: null });
            }
        }
    };

    /* The page's one port to the SharedWorker (made from the first
     * workerUrl; null when the browser refuses it, e.g. a cross-origin
     * script). */
    function P(u) {
        var w;

        if (!port && u && !P.bad) {
            try {
                w = new SharedWorker(u, { name: "comet-1" });
            }
            catch (e) {
                return;
            }
            /* The script did not load as a worker (404, a wrong MIME
             * type): each page runs its own connections after all. */
            w.onerror = function () {
                P.bad = 1;
                for (var k in groups) {
                    if (groups[k].m == 1) {
                        groups[k].m = 0;
                        groups[k].lead();
                    }
                }
            };
            port = w.port;
            port.onmessage = function (e) {
                var g = groups[1 + e.data.k];

                g && g.recv(e.data);
            };
            G.addEventListener("pagehide", function () { port.postMessage({ t: "bye" }); });
            G.addEventListener("pageshow", function (e) {
                if (e.persisted) {
                    for (var k in groups) {
                        groups[k].subs.forEach(function (s) { groups[k].hello(s); });
                    }
                }
            });
        }
        return port;
    }

    /* mode 0: this page runs the Conn; 1: a SharedWorker does; 2: the tab
     * holding the Web Lock named after the subscription does, and sends
     * every event to the other tabs on a BroadcastChannel. */
    function Group(gk, key, url, chs, o, mode) {
        var g = this;

        g.gk = gk;
        g.k = key;
        g.u = url;
        g.chs = chs;
        g.o = o;
        g.m = mode;
        g.subs = [];
        g.h = new Cache();
        if (mode == 2) {
            g.bc = new BroadcastChannel("comet:" + key);
            g.bc.onmessage = function (e) {
                var d = e.data;

                if (d.t == "sub") {
                    g.h.cap(d.n);
                    g.c && g.bc.postMessage(g.hist(d.id, d.n));
                }
                else {
                    g.recv(d);
                }
            };
            g.ac = new AbortController();
            navigator.locks.request("comet:" + key, { signal: g.ac.signal }, function () {
                return new Promise(function (done) {
                    g.rel = done;
                    g.lead();
                });
            }).catch(noop);
        }
    }

    Group.prototype = {
        /* After the caller's on() calls: it sees every state. */
        add: function (s) {
            var g = this;

            s.g = g;
            g.subs.push(s);
            g.h.cap(s.o.backlog);
            Promise.resolve().then(function () {
                if (s.g) {
                    g.hello(s);
                    g.m || g.c || g.lead();
                }
            });
        },

        hello: function (s) {
            var g = this;

            if (g.c) {
                g.recv(g.hist(s.id, s.o.backlog));
            }
            else if (g.m == 1) {
                P().postMessage({
                    t: "sub", k: g.k, id: s.id, u: g.u, c: g.chs, n: s.o.backlog,
                    p: fmt(s.p, g.chs.length) || s.o.lastEventId, o: JSON.parse(JSON.stringify(g.o))
                });
            }
            else if (g.m == 2) {
                g.bc.postMessage({ t: "sub", id: s.id, n: s.o.backlog });
            }
        },

        hist: function (id, n) {
            return { t: "h", id: id, ms: this.h.get(n), p: fmt(this.c.p, this.chs.length), s: this.c.st };
        },

        /* This page runs the connection, from where its subscriptions
         * stand (a tab taking over from one that closed resumes there). */
        lead: function () {
            var g = this, b = 0, p = "";

            g.subs.forEach(function (s) {
                b = num(s.o.backlog) > num(b) ? s.o.backlog : b;
                p = p || fmt(s.p, g.chs.length) || s.o.lastEventId;
            });
            g.c = new Conn(g.u, g.chs, g.o, p, b, function (d) {
                g.recv(d);
                g.bc && g.bc.postMessage(d);
            });
            g.subs.forEach(function (s) {
                s.r || g.recv(g.hist(s.id, 0));
            });
        },

        recv: function (d) {
            var g = this;

            if (d.t == "m") {
                g.h.add(d.m);
            }
            g.subs.slice().forEach(function (s) {
                if (d.t == "h") {
                    if (d.id == s.id) {
                        d.ms.forEach(function (m) { s.deliver(m); });
                        adopt(s, d.p);
                        s.r = 1;
                        d.s && g.state(s, d.s);
                    }
                }
                else if (!s.r) {
                    /* Not yet: the history it waits for holds this. */
                }
                else if (d.t == "m") {
                    s.deliver(d.m, d.p);
                }
                else if (d.t == "x") {
                    s.emit("missed", d.x);
                }
                else if (d.t == "p") {
                    adopt(s, d.p);
                }
                else if (d.t == "r") {
                    s.p = null;
                }
                else if (d.t == "s") {
                    g.state(s, d.s);
                }
                else if (d.t == "d") {
                    s.emit("deleted", d.x);
                }
            });
        },

        state: function (s, st) {
            s.state = st.state;
            s.transport = st.transport;
            s.emit("state", st);
        },

        remove: function (s) {
            var g = this;

            g.subs.splice(g.subs.indexOf(s), 1);
            if (g.m == 1) {
                P().postMessage({ t: "uns", k: g.k, id: s.id });
            }
            if (!g.subs.length) {
                delete groups[g.gk];
                /* The other tabs must not hear "closed": one of them
                 * takes over. */
                g.bc && g.bc.close();
                g.bc = null;
                g.c && g.c.close();
                g.rel && g.rel();
                g.ac && g.ac.abort();
            }
        }
    };

    /* ---- the SharedWorker: one Conn per subscription key for all tabs -- */
    if (typeof SharedWorkerGlobalScope == "function" && G instanceof SharedWorkerGlobalScope) {
        var E = {};

        G.onconnect = function (ev) {
            var pt = ev.ports[0];

            pt.onmessage = function (e) {
                var d = e.data, k = d.k, x = E[k];

                if (d.t == "sub") {
                    if (!x) {
                        x = E[k] = { h: new Cache(), q: new Map() };
                        x.h.cap(d.n);
                        x.c = new Conn(d.u, d.c, d.o, d.p, d.n, function (y) {
                            y.k = k;
                            if (y.t == "m") {
                                x.h.add(y.m);
                            }
                            x.q.forEach(function (ids, p) { p.postMessage(y); });
                        });
                    }
                    x.h.cap(d.n);
                    (x.q.get(pt) || x.q.set(pt, new Set()).get(pt)).add(d.id);
                    pt.postMessage({
                        t: "h", k: k, id: d.id, ms: x.h.get(d.n),
                        p: fmt(x.c.p, d.c.length), s: x.c.st
                    });
                }
                else {
                    for (k in E) {
                        x = E[k];
                        if (x.q.has(pt) && (d.t == "bye" || d.k == k)) {
                            x.q.get(pt).delete(d.id);
                            if (d.t == "bye" || !x.q.get(pt).size) {
                                x.q.delete(pt);
                            }
                            if (!x.q.size) {
                                x.c.close();
                                delete E[k];
                            }
                        }
                    }
                }
            };
        };
    }

    var Comet = {
        subscribe: function (url, channels, onMessage, opts) {
            return new Sub(url, channels, onMessage || noop, opts);
        },
        transports: T,
        order: ORDER,
        version: "1.0.0"
    };

    G.Comet = Comet;
    if (typeof module == "object" && module.exports) {
        module.exports = Comet;
    }
})(typeof globalThis != "undefined" ? globalThis : self);
