/*! leadflow.js: a small tracking snippet speaking the Segment HTTP API to the leadflow
 * collector. Plain ES2017, no build step.
 *
 *   <script src="https://collector.example/leadflow.js"></script>
 *   <script>leadflow.init({host: "https://collector.example", writeKey: "..."});</script>
 *
 * init() sends a page view; leadflow.track(event, properties), leadflow.identify(userId,
 * traits) and leadflow.page(name, properties) queue calls that are sent in batches to
 * <host>/v1/batch. Forms marked `data-leadflow-identify` identify the visitor by the e-mail
 * field on submit (and track `data-leadflow-track`, default "Form Submitted").
 *
 * Delivery: calls are kept in localStorage until the collector answers 2xx, sent with
 * fetch(keepalive) and, when the page goes away, navigator.sendBeacon; failed sends are
 * retried with exponential backoff. Bodies are text/plain with the write key inside, so
 * browsers send them without a CORS preflight. Duplicates are possible (a beacon and a later
 * retry); leadflow deduplicates by messageId.
 */
(function (window, document) {
  "use strict";
  if (window.leadflow && window.leadflow.__loaded) return;

  var VERSION = "0.1.0";
  var STORE = "leadflow:";
  var MAX_BATCH_BYTES = 60000; // under fetch keepalive's and sendBeacon's 64 KB budget
  var MAX_QUEUE = 500;
  var MAX_ATTEMPTS = 10;

  var cfg = { host: "", writeKey: "", flushAt: 20, flushInterval: 1000 };
  var queue = [];
  var timer = null;
  var attempts = 0;
  var sending = false;
  var inflight = {}; // messageIds of the fetch under way: a beacon must not send them again

  function get(key) {
    try { return window.localStorage.getItem(STORE + key); } catch (e) { return readCookie(key); }
  }
  function set(key, value) {
    try { window.localStorage.setItem(STORE + key, value); } catch (e) { /* private mode */ }
    if (key === "anonymousId" || key === "userId") writeCookie(key, value);
  }
  function readCookie(key) {
    var m = document.cookie.match(new RegExp("(?:^|; )leadflow_" + key + "=([^;]*)"));
    return m ? decodeURIComponent(m[1]) : null;
  }
  function writeCookie(key, value) {
    // A first-party cookie too, so the id survives when localStorage is unavailable.
    document.cookie = "leadflow_" + key + "=" + encodeURIComponent(value) +
      "; path=/; max-age=31536000; SameSite=Lax";
  }

  function uuid() {
    if (window.crypto && typeof window.crypto.randomUUID === "function") {
      return window.crypto.randomUUID();
    }
    var b = new Uint8Array(16);
    window.crypto.getRandomValues(b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    var h = Array.prototype.map.call(b, function (x) { return (x + 256).toString(16).slice(1); });
    return h.slice(0, 4).join("") + "-" + h.slice(4, 6).join("") + "-" + h.slice(6, 8).join("") +
      "-" + h.slice(8, 10).join("") + "-" + h.slice(10).join("");
  }

  function anonymousId() {
    var id = get("anonymousId") || readCookie("anonymousId");
    if (!id) { id = uuid(); }
    set("anonymousId", id);
    return id;
  }

  function campaign() {
    // Segment's mapping of utm_* query parameters to context.campaign.
    var names = { utm_source: "source", utm_medium: "medium", utm_campaign: "name",
                  utm_term: "term", utm_content: "content" };
    var out = {};
    var params = new URLSearchParams(window.location.search);
    Object.keys(names).forEach(function (k) {
      var v = params.get(k);
      if (v) out[names[k]] = v;
    });
    return out;
  }

  function pageContext() {
    var canonical = document.querySelector("link[rel='canonical']");
    return {
      path: window.location.pathname,
      referrer: document.referrer,
      search: window.location.search,
      title: document.title,
      url: canonical && canonical.href ? canonical.href : window.location.href,
    };
  }

  function message(type, fields) {
    var msg = Object.assign({
      type: type,
      messageId: uuid(),
      anonymousId: anonymousId(),
      originalTimestamp: new Date().toISOString(),
      context: {
        library: { name: "leadflow.js", version: VERSION },
        page: pageContext(),
        userAgent: window.navigator.userAgent,
        locale: window.navigator.language,
      },
    }, fields);
    var userId = get("userId");
    if (userId && !msg.userId) msg.userId = userId;
    var c = campaign();
    if (Object.keys(c).length) msg.context.campaign = c;
    return msg;
  }

  function save() {
    try { window.localStorage.setItem(STORE + "queue", JSON.stringify(queue)); } catch (e) { /* full */ }
  }

  function enqueue(msg) {
    queue.push(msg);
    if (queue.length > MAX_QUEUE) queue.splice(0, queue.length - MAX_QUEUE);
    save();
    if (queue.length >= cfg.flushAt) flush();
    else schedule(cfg.flushInterval);
  }

  function schedule(ms) {
    if (timer) return;
    timer = window.setTimeout(function () { timer = null; flush(); }, ms);
  }

  // Take messages from the front of the queue up to the byte budget of one request.
  function nextBatch(skipInflight) {
    var batch = [];
    var size = 100;
    for (var i = 0; i < queue.length; i++) {
      if (skipInflight && inflight[queue[i].messageId]) continue;
      var n = JSON.stringify(queue[i]).length + 1;
      if (batch.length && size + n > MAX_BATCH_BYTES) break;
      batch.push(queue[i]);
      size += n;
    }
    return batch;
  }

  function body(batch) {
    return JSON.stringify({ batch: batch, writeKey: cfg.writeKey, sentAt: new Date().toISOString() });
  }

  function drop(batch) {
    var ids = {};
    batch.forEach(function (m) { ids[m.messageId] = true; });
    queue = queue.filter(function (m) { return !ids[m.messageId]; });
    save();
  }

  function flush() {
    if (sending || !queue.length || !cfg.host) return Promise.resolve();
    var batch = nextBatch(false);
    sending = true;
    inflight = {};
    batch.forEach(function (m) { inflight[m.messageId] = true; });
    return window.fetch(cfg.host + "/v1/batch", {
      method: "POST",
      body: body(batch),
      headers: { "Content-Type": "text/plain" },
      keepalive: true, // finishes even if the page navigates away (form submits)
      mode: "cors",
      credentials: "omit",
    }).then(function (res) {
      sending = false;
      inflight = {};
      if (res.ok) {
        attempts = 0;
        drop(batch);
        if (queue.length) schedule(0);
      } else if (res.status === 429 || res.status >= 500) {
        retry();
      } else {
        // 4xx: the collector says these messages are wrong; resending cannot help.
        if (window.console) window.console.warn("leadflow: collector refused a batch", res.status);
        attempts = 0;
        drop(batch);
      }
    }, function () {
      sending = false;
      inflight = {};
      retry();
    });
  }

  function retry() {
    attempts += 1;
    if (attempts > MAX_ATTEMPTS) { attempts = 0; return; } // kept in storage for the next page
    var delay = Math.min(60000, 500 * Math.pow(2, attempts)) * (0.5 + Math.random() / 2);
    schedule(delay);
  }

  // The page is going away: hand what is left to the browser, which sends it afterwards.
  function beacon() {
    if (!queue.length || !cfg.host || !window.navigator.sendBeacon) return;
    for (;;) {
      // The fetch under way keeps going after the page is gone (keepalive); if it fails,
      // its messages are still in localStorage and the next page sends them.
      var batch = nextBatch(true);
      if (!batch.length) break;
      var ok = window.navigator.sendBeacon(cfg.host + "/v1/batch",
        new Blob([body(batch)], { type: "text/plain" }));
      if (!ok) break; // over the browser's beacon budget: the stored queue goes next time
      drop(batch);
    }
  }

  function onSubmit(event) {
    var form = event.target;
    if (!form || !form.hasAttribute || !form.hasAttribute("data-leadflow-identify")) return;
    var traits = {};
    var email = null;
    Array.prototype.forEach.call(form.elements, function (el) {
      if (!el.name || !el.value || el.disabled) return;
      if (el.type === "password" || el.type === "hidden" || el.type === "file") return;
      if (el.type === "checkbox" || el.type === "radio") { if (!el.checked) return; }
      if (el.type === "email" || el.name.toLowerCase() === "email") email = el.value.trim();
      else traits[el.name] = el.value;
    });
    if (email) {
      traits.email = email;
      api.identify(email, traits);
    }
    var name = form.getAttribute("data-leadflow-track") || "Form Submitted";
    api.track(name, { form_id: form.id || null, form_name: form.getAttribute("name") || null });
    // A submit usually navigates away: hand the calls to the browser now (a beacon outlives
    // the page and leaves nothing half-sent in storage); without sendBeacon, a keepalive fetch.
    if (window.navigator.sendBeacon) beacon(); else flush();
  }

  var api = {
    __loaded: true,
    VERSION: VERSION,
    /** Configure and send the first page view: init({host, writeKey, page: true}). */
    init: function (options) {
      cfg = Object.assign(cfg, options || {});
      cfg.host = String(cfg.host || "").replace(/\/+$/, "");
      try { queue = JSON.parse(get("queue") || "[]"); } catch (e) { queue = []; }
      if (!Array.isArray(queue)) queue = [];
      window.addEventListener("pagehide", beacon);
      document.addEventListener("visibilitychange", function () {
        if (document.visibilityState === "hidden") beacon();
      });
      document.addEventListener("submit", onSubmit, true);
      if (options && options.page === false) { if (queue.length) schedule(0); return; }
      api.page();
    },
    /** A page view; name and properties are optional. */
    page: function (name, properties) {
      var props = Object.assign(pageContext(), properties || {});
      enqueue(message("page", { name: name || undefined, properties: props }));
    },
    /** A user action, e.g. track("Demo Requested", {plan: "pro"}). */
    track: function (event, properties) {
      enqueue(message("track", { event: String(event), properties: properties || {} }));
    },
    /** Tie the visitor to a known user id (kept for later calls) and traits. */
    identify: function (userId, traits) {
      if (userId) set("userId", String(userId));
      enqueue(message("identify", { userId: userId ? String(userId) : undefined,
                                    traits: traits || {} }));
    },
    /** Send what is queued now; returns a promise. */
    flush: flush,
    /** Forget the user (log out): a new anonymousId, no userId. */
    reset: function () {
      try {
        window.localStorage.removeItem(STORE + "userId");
        window.localStorage.removeItem(STORE + "anonymousId");
      } catch (e) { /* ignore */ }
      document.cookie = "leadflow_userId=; path=/; max-age=0";
      document.cookie = "leadflow_anonymousId=; path=/; max-age=0";
    },
  };
  window.leadflow = api;
})(window, document);
