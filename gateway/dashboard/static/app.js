/* The key-management dashboard.
 *
 * Plain script, no build step. Signs in with an API key kept in sessionStorage
 * only, and calls the management API on the same origin. Every string that
 * comes from a user or the API is put in the page with textContent or as an
 * attribute value, never parsed as HTML.
 */
(function () {
  "use strict";

  var root = document.documentElement;
  var CONFIG = {
    base: root.dataset.base || "/dashboard",
    api: root.dataset.apiPrefix || "/v1",
    keyPrefix: root.dataset.keyPrefix || "sk",
    rotationDays: parseInt(root.dataset.rotationDays || "90", 10) || 90,
  };
  var STORAGE_KEY = "keygate.dashboard.api_key";
  var PANELS = ["keys", "usage", "account", "alerts", "webhooks", "audit"];
  var DAY_MS = 86400000;
  var FIELD_IDS = {
    name: "create-name",
    mode: "create-mode",
    permissions: "create-permissions-extra",
    expires_at: "create-expires",
    allowed_ips: "create-ips",
    allowed_referrers: "create-referrers",
    allowed_endpoints: "create-endpoints",
    rate_limit: "create-rate",
    metadata: "create-metadata",
    credits: "create-credits",
    refill_amount: "create-refill-amount",
    url: "webhook-url",
    events: "webhook-events",
    description: "webhook-description",
  };

  var state = {
    key: null, // the signed-in key's secret: memory and sessionStorage only
    me: null, // what /auth/verify said about it
    account: null,
    testOnly: false,
    filter: "",
    limit: 10,
    cursors: [], // starting_after of each page before the current one
    cursor: null,
    keys: [],
    hasMore: false,
    target: null, // the key a rotate/revoke dialog is about
    chart: null,
    usageKey: null, // the key the usage panel shows, for the credits dialog
  };

  function $(id) {
    return document.getElementById(id);
  }

  function el(tag, props, children) {
    var node = document.createElement(tag);
    if (props) {
      Object.keys(props).forEach(function (name) {
        var value = props[name];
        if (value === undefined || value === null || value === false) return;
        if (name === "text") node.textContent = String(value);
        else if (name === "className") node.className = value;
        else node.setAttribute(name, value === true ? "" : String(value));
      });
    }
    (children || []).forEach(function (child) {
      if (child === null || child === undefined) return;
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function show(node, visible) {
    node.hidden = !visible;
  }

  // -- talking to the management API ------------------------------------------------

  function ApiError(status, body, fallback) {
    var error = body && body.error ? body.error : {};
    this.status = status;
    this.code = error.code || null;
    this.type = error.type || null;
    this.message = error.message || fallback || "The request failed (HTTP " + status + ").";
    this.details = error.details && typeof error.details === "object" ? error.details : {};
    this.field = typeof this.details.field === "string" ? this.details.field : null;
  }

  function api(method, path, body) {
    var headers = { Authorization: "Bearer " + state.key, Accept: "application/json" };
    var init = {
      method: method,
      headers: headers,
      cache: "no-store",
      credentials: "omit",
      referrerPolicy: "no-referrer",
    };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(CONFIG.api + path, init).then(
      function (response) {
        return response.text().then(function (text) {
          var data = null;
          if (text) {
            try {
              data = JSON.parse(text);
            } catch (e) {
              data = null;
            }
          }
          if (!response.ok) throw new ApiError(response.status, data);
          return { data: data, headers: response.headers, status: response.status };
        });
      },
      function () {
        throw new ApiError(0, null, "The gateway could not be reached. Check your connection.");
      }
    );
  }

  /* A failure outside a form: a key that stopped working signs out, anything else is shown. */
  function failed(error) {
    if (!(error instanceof ApiError)) {
      showBanner("Something went wrong: " + String(error && error.message ? error.message : error));
      return;
    }
    if (error.status === 401) {
      signOut("Your key is no longer accepted (" + (error.code || "401") + "). Sign in again.");
      return;
    }
    showBanner(error.message);
  }

  function showBanner(text) {
    hideBanner();
    $("banner").textContent = text;
    show($("banner"), true);
  }

  function showFlash(text) {
    hideBanner();
    $("flash").textContent = text;
    show($("flash"), true);
  }

  function hideBanner() {
    ["banner", "flash"].forEach(function (id) {
      show($(id), false);
      $(id).textContent = "";
    });
  }

  // -- formatting ---------------------------------------------------------------------

  function pad(n) {
    return n < 10 ? "0" + n : String(n);
  }

  function formatTime(iso) {
    if (!iso) return null;
    var d = new Date(iso);
    if (isNaN(d.getTime())) return String(iso);
    return (
      d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate()) + " " +
      pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()) + " UTC"
    );
  }

  /* A <time>: date and time of day in two parts, so a narrow column can break between them. */
  function timeCell(iso, none) {
    if (!iso) return el("span", { className: "muted", text: none });
    var text = formatTime(iso);
    var cut = text.indexOf(" ");
    if (cut < 0) return el("time", { datetime: iso, title: iso, text: text });
    return el("time", { datetime: iso, title: iso }, [
      el("span", { className: "nowrap", text: text.slice(0, cut) }),
      " ",
      el("span", { className: "nowrap", text: text.slice(cut + 1) }),
    ]);
  }

  function keyStatus(key) {
    if (key.revoked_at) return "revoked";
    if (key.expires_at && new Date(key.expires_at).getTime() <= Date.now()) return "expired";
    return "active";
  }

  function rotationDue(key) {
    if (typeof key.rotation_due === "boolean") return key.rotation_due;
    var created = new Date(key.created_at).getTime();
    if (isNaN(created)) return false;
    return Date.now() - created > CONFIG.rotationDays * DAY_MS;
  }

  function maskedKey(key) {
    return (key.prefix || "") + "\u2026" + (key.last4 || "");
  }

  function badge(text, kind) {
    return el("span", { className: "badge " + (kind || ""), text: text });
  }

  function hasPermission(permissions, wanted) {
    return Array.isArray(permissions) && permissions.indexOf(wanted) !== -1;
  }

  // -- sign in and out ------------------------------------------------------------------

  function showView(name) {
    show($("view-signin"), name === "signin");
    show($("view-denied"), name === "denied");
    show($("view-app"), name === "app");
    show($("whoami"), name === "app" || name === "denied");
  }

  function signInError(text) {
    var error = $("signin-error");
    error.textContent = text;
    show(error, Boolean(text));
    var input = $("signin-key");
    if (text) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
  }

  function signIn(secret, remembered) {
    state.key = secret;
    return api("GET", "/auth/verify")
      .then(function (result) {
        var me = result.data && result.data.data ? result.data.data : result.data;
        state.me = me || {};
        state.testOnly = state.me.mode === "test";
        try {
          sessionStorage.setItem(STORAGE_KEY, secret);
        } catch (e) {
          /* storage refused: the key lives in memory for this page only */
        }
        $("signin-key").value = "";
        signInError("");
        fillWhoami();
        if (!hasPermission(state.me.permissions, "admin")) {
          $("denied-key").textContent = (state.me.name || "") + " (" + (state.me.key_id || "") + ")";
          var perms = state.me.permissions && state.me.permissions.length
            ? state.me.permissions.join(", ")
            : "no permissions";
          $("denied-perms").textContent = perms;
          showView("denied");
          $("denied-title").focus();
          return;
        }
        showView("app");
        applyModeLimits();
        loadAccount();
        route();
      })
      .catch(function (error) {
        state.key = null;
        try {
          sessionStorage.removeItem(STORAGE_KEY);
        } catch (e) {
          /* nothing stored */
        }
        showView("signin");
        if (error instanceof ApiError && error.status === 401) {
          signInError(
            remembered
              ? "Your saved key is no longer accepted: " + error.message
              : "This key was refused: " + error.message
          );
        } else {
          signInError(error instanceof ApiError ? error.message : "Sign-in failed.");
        }
      });
  }

  function signOut(message) {
    state.key = null;
    state.me = null;
    state.account = null;
    state.keys = [];
    state.cursors = [];
    state.cursor = null;
    try {
      sessionStorage.removeItem(STORAGE_KEY);
    } catch (e) {
      /* nothing stored */
    }
    ["create-dialog", "secret-dialog", "rotate-dialog", "revoke-dialog", "whsecret-dialog", "credits-dialog"].forEach(function (id) {
      if ($(id).open) $(id).close();
    });
    destroyChart();
    clear($("keys-body"));
    clear($("audit-body"));
    clear($("usage-body"));
    clear($("account-details"));
    clear($("account-limits"));
    clear($("account-key"));
    $("whoami-account").textContent = "";
    $("signin-key").value = "";
    if (location.hash) history.replaceState(null, "", location.pathname);
    showView("signin");
    hideBanner();
    signInError(message || "");
    $("signin-key").focus();
  }

  function fillWhoami() {
    var me = state.me || {};
    $("whoami-account").textContent = me.name ? "Key: " + me.name : "";
    var mode = $("whoami-mode");
    mode.textContent = me.mode === "test" ? "test mode" : "live mode";
    mode.className = "badge " + (me.mode === "test" ? "test" : "live");
  }

  function applyModeLimits() {
    show($("test-mode-notice"), state.testOnly);
    var liveFilter = document.querySelector('input[name="mode-filter"][value="live"]');
    var allFilter = document.querySelector('input[name="mode-filter"][value=""]');
    var testFilter = document.querySelector('input[name="mode-filter"][value="test"]');
    liveFilter.disabled = state.testOnly;
    allFilter.disabled = state.testOnly;
    if (state.testOnly) {
      testFilter.checked = true;
      state.filter = "test";
    } else {
      allFilter.checked = true;
      state.filter = "";
    }
  }

  // -- views ------------------------------------------------------------------------------

  function route() {
    if (!state.key || !state.me || !hasPermission(state.me.permissions, "admin")) return;
    hideBanner();
    var hash = location.hash.replace(/^#/, "");
    var view = "keys";
    var keyId = null;
    if (PANELS.indexOf(hash) !== -1 && hash !== "usage") view = hash;
    else if (hash.indexOf("usage/") === 0) {
      view = "usage";
      keyId = decodeURIComponent(hash.slice("usage/".length));
    }
    PANELS.forEach(function (name) {
      show($("panel-" + name), name === view);
    });
    var current = view === "usage" ? "keys" : view;
    document.querySelectorAll(".tabs a").forEach(function (link) {
      if (link.dataset.view === current) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    });
    if (view !== "usage") destroyChart();
    if (view === "keys") loadKeys();
    else if (view === "usage") loadUsage(keyId);
    else if (view === "account") loadAccount();
    else if (view === "audit") loadAudit();
    else if (view === "alerts") loadAlerts();
    else if (view === "webhooks") loadWebhooks();
  }

  // Keys

  function loadKeys() {
    var query = "?limit=" + encodeURIComponent(state.limit);
    if (state.cursor) query += "&starting_after=" + encodeURIComponent(state.cursor);
    if (state.filter) query += "&mode=" + encodeURIComponent(state.filter);
    var table = $("keys-table");
    table.setAttribute("aria-busy", "true");
    return api("GET", "/api-keys" + query)
      .then(function (result) {
        var body = result.data || {};
        var keys = Array.isArray(body.data) ? body.data : [];
        if (state.filter) {
          keys = keys.filter(function (key) {
            return key.mode === state.filter;
          });
        }
        var meta = body.meta || {};
        var more = typeof body.has_more === "boolean" ? body.has_more : meta.has_more;
        state.keys = keys;
        state.hasMore = typeof more === "boolean" ? more : keys.length >= state.limit;
        renderKeys();
      })
      .catch(failed)
      .then(function () {
        table.removeAttribute("aria-busy");
      });
  }

  function renderKeys() {
    var body = $("keys-body");
    clear(body);
    state.keys.forEach(function (key) {
      body.appendChild(keyRow(key));
    });
    show($("keys-empty"), state.keys.length === 0);
    show($("keys-table"), state.keys.length > 0);
    var page = state.cursors.length + 1;
    $("page-info").textContent = state.keys.length
      ? "Page " + page + " \u00b7 " + state.keys.length + " key" + (state.keys.length === 1 ? "" : "s")
      : "";
    $("page-prev").disabled = state.cursors.length === 0;
    $("page-next").disabled = !state.hasMore;
  }

  /* A cell's content sits in one wrapper, so narrow screens can lay out label and content. */
  function cell(label, children, props) {
    var attrs = Object.assign({ "data-label": label }, props || {});
    return el("td", attrs, [el("div", { className: "cell" }, children)]);
  }

  function keyRow(key) {
    var status = keyStatus(key);
    var statusCell = [badge(status, status)];
    if (status === "active" && rotationDue(key)) {
      statusCell.push(" ", badge("rotation due", "due"));
    }
    if (key.rotated_to && status === "active") {
      statusCell.push(" ", badge("rotated", "muted-badge"));
    }
    var name = key.name || "(unnamed)";
    var actions = el("div", { className: "actions" });
    actions.appendChild(
      el("a", {
        href: "#usage/" + encodeURIComponent(key.id),
        className: "button small secondary",
        "aria-label": "Usage of " + name,
        text: "Usage",
      })
    );
    if (status === "active") {
      var rotate = el("button", {
        type: "button",
        className: "button small secondary",
        "aria-label": "Rotate " + name,
        text: "Rotate",
      });
      rotate.addEventListener("click", function () {
        openRotate(key);
      });
      var revoke = el("button", {
        type: "button",
        className: "button small danger",
        "aria-label": "Revoke " + name,
        text: "Revoke",
      });
      revoke.addEventListener("click", function () {
        openRevoke(key);
      });
      actions.appendChild(rotate);
      actions.appendChild(revoke);
    }
    var permissions = key.permissions && key.permissions.length ? key.permissions.join(", ") : null;
    var row = el("tr", { "data-key-id": key.id, className: "status-" + status }, [
      el("th", { scope: "row", "data-label": "Name" }, [
        el("div", { className: "cell" }, [el("span", { className: "key-name", text: name })]),
      ]),
      cell("Key", [el("code", { className: "key-mask", text: maskedKey(key) })]),
      cell("Mode", [badge(key.mode, key.mode === "test" ? "test" : "live")]),
      cell("Permissions", [
        permissions ? el("span", { text: permissions }) : el("span", { className: "muted", text: "none" }),
      ]),
      cell("Created", [timeCell(key.created_at, "\u2014")]),
      cell("Last used", [timeCell(key.last_used_at, "Never")]),
      cell("Expires", [timeCell(key.expires_at, "Never")]),
      cell("Credits", creditsCell(key.credits)),
      cell("Status", statusCell),
      cell("Actions", [actions]),
    ]);
    return row;
  }

  function formatCount(n) {
    return Number(n).toLocaleString("en-US");
  }

  function refillText(refill) {
    return refill ? "refilled to " + formatCount(refill.amount) + " each " + refill.interval : "no refill";
  }

  /* A key's credits in the table: the balance, and its refill underneath; a dash when unmetered. */
  function creditsCell(credits) {
    if (!credits) return [el("span", { className: "muted", text: "\u2014", title: "Not metered by credits" })];
    var remaining = credits.remaining === null || credits.remaining === undefined ? "?" : formatCount(credits.remaining);
    var out = [el("span", { className: "credits-left" + (credits.remaining === 0 ? " spent" : ""), text: remaining })];
    if (credits.refill) {
      out.push(
        el("span", {
          className: "muted credits-refill",
          text: " / " + formatCount(credits.refill.amount) + " per " + credits.refill.interval,
        })
      );
    }
    return out;
  }

  /* A whole number as typed, or the text itself so that the API refuses it naming the field. */
  function wholeOrText(text) {
    return /^\d+$/.test(text) ? Number(text) : text;
  }

  // Create

  function clearFieldErrors(form) {
    form.querySelectorAll(".field-error").forEach(function (node) {
      node.textContent = "";
      show(node, false);
    });
    form.querySelectorAll("[aria-invalid]").forEach(function (node) {
      node.removeAttribute("aria-invalid");
    });
    form.querySelectorAll(".form-error").forEach(function (node) {
      node.textContent = "";
      show(node, false);
    });
  }

  function fieldError(field, message, formErrorId) {
    var target = $("err-" + field);
    var controlId = FIELD_IDS[field] || (field === "grace_period" ? "rotate-grace" : null);
    if (!target) {
      var general = $(formErrorId);
      general.textContent = message + (field ? " (" + field + ")" : "");
      show(general, true);
      return general;
    }
    target.textContent = message;
    show(target, true);
    var control = controlId ? $(controlId) : null;
    if (control) {
      var group = control.closest("details");
      if (group) group.open = true;
      control.setAttribute("aria-invalid", "true");
      if (control.tagName === "FIELDSET") {
        var first = control.querySelector("input:not([disabled])");
        if (first) first.focus();
      } else {
        control.focus();
      }
    }
    return target;
  }

  function lines(id) {
    return $(id)
      .value.split(/\r?\n/)
      .map(function (line) {
        return line.trim();
      })
      .filter(Boolean);
  }

  function openCreate() {
    var form = $("create-form");
    form.reset();
    clearFieldErrors(form);
    form.querySelector("details").open = false;
    var live = form.querySelector('input[name="mode"][value="live"]');
    var test = form.querySelector('input[name="mode"][value="test"]');
    live.disabled = state.testOnly;
    if (state.testOnly || state.filter === "test") test.checked = true;
    $("create-dialog").showModal();
    $("create-name").focus();
  }

  function createBody() {
    var form = $("create-form");
    var body = { name: $("create-name").value };
    var mode = form.querySelector('input[name="mode"]:checked');
    if (mode) body.mode = mode.value;
    var permissions = [];
    form.querySelectorAll('input[name="permission"]:checked').forEach(function (box) {
      permissions.push(box.value);
    });
    $("create-permissions-extra")
      .value.split(",")
      .map(function (p) {
        return p.trim();
      })
      .filter(Boolean)
      .forEach(function (p) {
        if (permissions.indexOf(p) === -1) permissions.push(p);
      });
    body.permissions = permissions;
    var expires = $("create-expires").value;
    if (expires) {
      var moment = new Date(expires);
      body.expires_at = isNaN(moment.getTime()) ? expires : moment.toISOString().replace(/\.\d{3}Z$/, "Z");
    }
    [
      ["allowed_ips", "create-ips"],
      ["allowed_referrers", "create-referrers"],
      ["allowed_endpoints", "create-endpoints"],
    ].forEach(function (pair) {
      var values = lines(pair[1]);
      if (values.length) body[pair[0]] = values;
    });
    // One rate, or several windows separated by commas: "10/second, 1000/hour".
    var rates = $("create-rate").value.split(",").map(function (part) {
      return part.trim();
    }).filter(Boolean);
    if (rates.length) body.rate_limit = rates.length === 1 ? rates[0] : rates;
    var credits = $("create-credits").value.trim();
    var refillAmount = $("create-refill-amount").value.trim();
    if (credits || refillAmount) {
      body.credits = {
        remaining: credits ? wholeOrText(credits) : null,
        refill: refillAmount
          ? { amount: wholeOrText(refillAmount), interval: $("create-refill-interval").value }
          : null,
      };
      if (!credits) delete body.credits.remaining; // the API says a balance is needed
    }
    var metadata = $("create-metadata").value.trim();
    if (metadata) {
      // The API validates metadata: text that is not JSON is sent as it is, and refused there.
      try {
        body.metadata = JSON.parse(metadata);
      } catch (e) {
        body.metadata = metadata;
      }
    }
    return body;
  }

  function submitCreate(event) {
    event.preventDefault();
    var form = $("create-form");
    var submit = $("create-submit");
    clearFieldErrors(form);
    submit.disabled = true;
    api("POST", "/api-keys", createBody())
      .then(function (result) {
        var created = (result.data && result.data.data) || {};
        $("create-dialog").close();
        form.reset();
        showSecret(created);
        state.cursors = [];
        state.cursor = null;
        loadKeys();
      })
      .catch(function (error) {
        if (error instanceof ApiError && error.status === 401) return failed(error);
        if (error instanceof ApiError && (error.status === 400 || error.status === 403)) {
          var field = error.field;
          if (field === "credits.refill.amount") field = "refill_amount";
          else if (field && field.indexOf("credits") === 0) field = "credits";
          fieldError(field, error.message, "create-error");
          return;
        }
        fieldError(null, error.message || String(error), "create-error");
      })
      .then(function () {
        submit.disabled = false;
      });
  }

  // The secret, once

  function showSecret(created) {
    $("secret-name").textContent = created.name || created.id || "";
    $("secret-value").value = created.key || "";
    $("secret-copied").textContent = "";
    $("secret-dialog").showModal();
    $("secret-copy").focus();
  }

  function forgetSecret() {
    $("secret-value").value = "";
    $("secret-name").textContent = "";
    $("secret-copied").textContent = "";
  }

  function copySecret() {
    var input = $("secret-value");
    var done = function () {
      $("secret-copied").textContent = "Copied to the clipboard.";
    };
    var manual = function () {
      input.focus();
      input.select();
      $("secret-copied").textContent = "Selected: press Ctrl+C (or \u2318C) to copy.";
    };
    if (navigator.clipboard && navigator.clipboard.writeText) {
      navigator.clipboard.writeText(input.value).then(done, manual);
    } else {
      manual();
    }
  }

  // Rotate and revoke

  /* After a rotation or revocation: the list it was started from (keys, or alerts). */
  function reloadList() {
    return $("panel-alerts").hidden ? loadKeys() : loadAlerts();
  }

  function openRotate(key) {
    state.target = key;
    var form = $("rotate-form");
    form.reset();
    clearFieldErrors(form);
    $("rotate-name").textContent = key.name || key.id;
    $("rotate-dialog").showModal();
    $("rotate-grace").focus();
  }

  function submitRotate(event) {
    event.preventDefault();
    var key = state.target;
    if (!key) return;
    var form = $("rotate-form");
    var confirm = $("rotate-confirm");
    clearFieldErrors(form);
    confirm.disabled = true;
    var grace = $("rotate-grace").value.trim();
    api("POST", "/api-keys/" + encodeURIComponent(key.id) + "/rotate", { grace_period: grace })
      .then(function (result) {
        var created = (result.data && result.data.data) || {};
        $("rotate-dialog").close();
        state.target = null;
        if (state.me && key.id === state.me.key_id && created.key) {
          // The signed-in key was rotated (with 0s it stops at once): go on with the new one,
          // or the next call would sign out and take the secret dialog with it.
          state.key = created.key;
          state.me.key_id = created.id;
          state.me.name = created.name || state.me.name;
          try {
            sessionStorage.setItem(STORAGE_KEY, created.key);
          } catch (e) {
            /* storage refused: the key lives in memory for this page only */
          }
          fillWhoami();
        }
        showSecret(created);
        reloadList();
      })
      .catch(function (error) {
        if (error instanceof ApiError && error.status === 401) return failed(error);
        fieldError(error.field === "grace_period" ? "grace_period" : null, error.message, "rotate-error");
      })
      .then(function () {
        confirm.disabled = false;
      });
  }

  function openRevoke(key) {
    state.target = key;
    clearFieldErrors($("revoke-form"));
    $("revoke-name").textContent = key.name || key.id;
    $("revoke-dialog").showModal();
    $("revoke-cancel").focus();
  }

  function submitRevoke(event) {
    event.preventDefault();
    var key = state.target;
    if (!key) return;
    var confirm = $("revoke-confirm");
    confirm.disabled = true;
    api("DELETE", "/api-keys/" + encodeURIComponent(key.id))
      .then(function () {
        $("revoke-dialog").close();
        state.target = null;
        showFlash("Key \u201c" + (key.name || key.id) + "\u201d revoked.");
        return reloadList();
      })
      .then(function () {
        $($("panel-alerts").hidden ? "keys-title" : "alerts-title").focus();
      })
      .catch(function (error) {
        if (error instanceof ApiError && error.status === 401) return failed(error);
        fieldError(null, error.message, "revoke-error");
      })
      .then(function () {
        confirm.disabled = false;
      });
  }

  // Usage

  function destroyChart() {
    if (state.chart) {
      state.chart.destroy();
      state.chart = null;
    }
  }

  function loadUsage(keyId) {
    destroyChart();
    clear($("usage-body"));
    clear($("usage-totals"));
    clear($("usage-key"));
    show($("usage-empty"), false);
    state.usageKey = null;
    $("usage-title").textContent = "Usage";
    var encoded = encodeURIComponent(keyId);
    Promise.all([api("GET", "/api-keys/" + encoded), api("GET", "/api-keys/" + encoded + "/usage")])
      .then(function (results) {
        var key = (results[0].data && results[0].data.data) || {};
        var usage = (results[1].data && results[1].data.data) || {};
        $("usage-title").textContent = "Usage of " + (key.name || keyId) + " (" + maskedKey(key) + ")";
        renderUsage(Array.isArray(usage.days) ? usage.days : []);
        renderBudgets(key, usage);
        renderKeySettings(key);
      })
      .catch(failed);
  }

  function formatReset(iso) {
    var moment = new Date(iso);
    if (isNaN(moment.getTime())) return iso;
    return moment.toLocaleString("en-GB", {
      timeZone: "UTC",
      day: "numeric",
      month: "short",
      year: "numeric",
      hour: "2-digit",
      minute: "2-digit",
    }) + " UTC";
  }

  /* The usage cards: the plan's quota this period and the key's credits. */
  function renderBudgets(key, usage) {
    state.usageKey = key;
    var quota = usage.quota || null;
    var bar = $("usage-quota-bar");
    if (quota) {
      $("usage-quota-figure").textContent = formatCount(quota.used) + " of " + formatCount(quota.limit);
      bar.max = quota.limit;
      bar.value = Math.min(quota.used, quota.limit);
      bar.className = quota.used >= quota.limit ? "spent" : quota.used >= 0.8 * quota.limit ? "near" : "";
      show(bar, true);
      $("usage-quota-note").textContent =
        "calls this " + quota.period + " by all of the account's " + (key.mode || "") +
        " keys; resets " + formatReset(quota.resets_at);
    } else {
      $("usage-quota-figure").textContent = "No quota";
      show(bar, false);
      $("usage-quota-note").textContent = "The account's plan sets no daily or monthly quota.";
    }
    var credits = usage.credits !== undefined ? usage.credits : key.credits;
    if (credits) {
      $("usage-credits-figure").textContent =
        (credits.remaining === null ? "?" : formatCount(credits.remaining)) + " left";
      $("usage-credits-note").textContent =
        refillText(credits.refill).replace(/^./, function (c) {
          return c.toUpperCase();
        }) + ".";
      $("credits-open").textContent = "Change credits";
    } else {
      $("usage-credits-figure").textContent = "Not metered";
      $("usage-credits-note").textContent = "Requests with this key spend no credits.";
      $("credits-open").textContent = "Add credits";
    }
    var active = keyStatus(key) === "active";
    show($("credits-open"), active);
  }

  function openCredits() {
    var key = state.usageKey;
    if (!key) return;
    var form = $("credits-form");
    form.reset();
    clearFieldErrors(form);
    $("credits-name").textContent = key.name || key.id;
    var credits = key.credits;
    $("credits-now").textContent = credits
      ? "Now: " + (credits.remaining === null ? "?" : formatCount(credits.remaining)) + " left, " +
        refillText(credits.refill) + "."
      : "Not metered by credits now: give the credits it starts with.";
    if (credits && credits.refill) {
      $("credits-refill-amount").value = String(credits.refill.amount);
      $("credits-refill-interval").value = credits.refill.interval;
    }
    $("credits-off").disabled = !credits;
    $("credits-dialog").showModal();
    $("credits-remaining").focus();
  }

  function submitCredits(event) {
    event.preventDefault();
    var key = state.usageKey;
    if (!key) return;
    var form = $("credits-form");
    var save = $("credits-save");
    clearFieldErrors(form);
    var change;
    if ($("credits-off").checked) {
      change = null;
    } else {
      change = {};
      var remaining = $("credits-remaining").value.trim();
      if (remaining) change.remaining = wholeOrText(remaining);
      var amount = $("credits-refill-amount").value.trim();
      change.refill = amount ? { amount: wholeOrText(amount), interval: $("credits-refill-interval").value } : null;
    }
    save.disabled = true;
    api("PATCH", "/api-keys/" + encodeURIComponent(key.id), { credits: change })
      .then(function () {
        $("credits-dialog").close();
        showFlash("Credits of \u201c" + (key.name || key.id) + "\u201d saved.");
        loadUsage(key.id);
      })
      .catch(function (error) {
        if (error instanceof ApiError && error.status === 401) return failed(error);
        fieldError(null, error.message, "credits-error");
      })
      .then(function () {
        save.disabled = false;
      });
  }

  function listOrNone(values, none) {
    if (!Array.isArray(values) || values.length === 0) return null;
    var list = el("ul", { className: "plain-list" });
    values.forEach(function (value) {
      list.appendChild(el("li", null, [el("code", { text: String(value) })]));
    });
    return list;
  }

  function metadataList(metadata) {
    var names = metadata && typeof metadata === "object" ? Object.keys(metadata) : [];
    if (!names.length) return null;
    var list = el("ul", { className: "plain-list" });
    names.forEach(function (name) {
      var value = metadata[name];
      list.appendChild(
        el("li", null, [
          el("span", { className: "meta-name", text: name }),
          ": ",
          el("span", { text: typeof value === "string" ? value : JSON.stringify(value) }),
        ])
      );
    });
    return list;
  }

  function renderKeySettings(key) {
    var status = keyStatus(key);
    describe($("usage-key"), [
      ["Key id", el("code", { text: key.id || "" })],
      ["Status", status + (status === "active" && rotationDue(key) ? " (rotation due)" : "")],
      ["Mode", key.mode || null],
      ["Permissions", (key.permissions || []).join(", ") || null, "none"],
      ["Created", key.created_at ? timeCell(key.created_at) : null],
      ["Last used", key.last_used_at ? timeCell(key.last_used_at) : null, "never"],
      ["Expires", key.expires_at ? timeCell(key.expires_at) : null, "never"],
      ["Revoked", key.revoked_at ? timeCell(key.revoked_at) : null, "no"],
      ["Rate limit", key.rate_limit ? rateText(key.rate_limit) : null, "the plan's"],
      ["Allowed IPs", listOrNone(key.allowed_ips), "any"],
      ["Allowed referrers", listOrNone(key.allowed_referrers), "any"],
      ["Allowed endpoints", listOrNone(key.allowed_endpoints), "any"],
      ["Metadata", metadataList(key.metadata), "none"],
      ["Rotated from", key.rotated_from ? el("code", { text: key.rotated_from }) : undefined],
      ["Rotated to", key.rotated_to ? el("code", { text: key.rotated_to }) : undefined],
    ]);
  }

  function renderUsage(days) {
    var ordered = days.slice().sort(function (a, b) {
      return a.date < b.date ? -1 : a.date > b.date ? 1 : 0;
    });
    var totals = { allowed: 0, denied: 0, rate_limited: 0 };
    ordered.forEach(function (day) {
      totals.allowed += Number(day.allowed) || 0;
      totals.denied += Number(day.denied) || 0;
      totals.rate_limited += Number(day.rate_limited) || 0;
    });
    var dl = $("usage-totals");
    [
      ["Allowed", totals.allowed, "allowed"],
      ["Denied", totals.denied, "denied"],
      ["Rate-limited", totals.rate_limited, "limited"],
    ].forEach(function (item) {
      dl.appendChild(
        el("div", { className: "total " + item[2] }, [
          el("dt", { text: item[0] }),
          el("dd", { text: String(item[1]), "data-total": item[2] }),
        ])
      );
    });
    show($("usage-empty"), totals.allowed + totals.denied + totals.rate_limited === 0);
    var body = $("usage-body");
    days.forEach(function (day) {
      body.appendChild(
        el("tr", null, [
          el("th", { scope: "row", text: day.date }),
          el("td", { text: String(day.allowed || 0) }),
          el("td", { text: String(day.denied || 0) }),
          el("td", { text: String(day.rate_limited || 0) }),
        ])
      );
    });
    var canvas = $("usage-chart");
    canvas.setAttribute(
      "aria-label",
      "Requests per day over the last " + ordered.length + " days: " + totals.allowed + " allowed, " +
        totals.denied + " denied, " + totals.rate_limited + " rate-limited"
    );
    if (typeof window.Chart !== "function") return; // the table above still holds every number
    state.chart = new window.Chart(canvas, {
      type: "bar",
      data: {
        labels: ordered.map(function (day) {
          return day.date.slice(5);
        }),
        datasets: [
          { label: "Allowed", data: ordered.map(count("allowed")), backgroundColor: "#2563eb" },
          { label: "Denied", data: ordered.map(count("denied")), backgroundColor: "#d97706" },
          { label: "Rate-limited", data: ordered.map(count("rate_limited")), backgroundColor: "#9d174d" },
        ],
      },
      options: {
        animation: false,
        maintainAspectRatio: false,
        responsive: true,
        scales: {
          x: { stacked: true, ticks: { maxRotation: 0, autoSkip: true } },
          y: { stacked: true, beginAtZero: true, ticks: { precision: 0 } },
        },
        plugins: { legend: { position: "bottom" } },
      },
    });
  }

  function count(field) {
    return function (day) {
      return Number(day[field]) || 0;
    };
  }

  // Account

  function describe(dl, rows) {
    clear(dl);
    rows.forEach(function (row) {
      if (row[1] === undefined) return;
      dl.appendChild(el("dt", { text: row[0] }));
      var value = row[1];
      dl.appendChild(
        el("dd", null, [
          value === null || value === ""
            ? el("span", { className: "muted", text: row[2] || "\u2014" })
            : typeof value === "string"
              ? el("span", { text: value })
              : value,
        ])
      );
    });
  }

  /* The limits the gateway applied to this call: every window its RateLimit-Policy lists
     ("q" requests per "w" seconds), else X-RateLimit-Limit alone. */
  function rateFromHeaders(headers) {
    var limit = headers.get("X-RateLimit-Limit");
    var policy = headers.get("RateLimit-Policy") || "";
    if (!limit) return null;
    var names = { 1: "second", 60: "minute", 3600: "hour", 86400: "day" };
    var windows = [];
    var item = /;\s*q=(\d+);\s*w=(\d+)/g;
    var found;
    while ((found = item.exec(policy)) !== null) {
      var seconds = parseInt(found[2], 10);
      windows.push(
        Number(found[1]).toLocaleString("en-US") + " requests per " + (names[seconds] || seconds + " seconds")
      );
    }
    if (windows.length) return windows.join(", ");
    var count = Number(limit);
    return (isNaN(count) ? limit : count.toLocaleString("en-US")) + " requests";
  }

  /* A rate limit as the API gives it: one rate ("100/minute") or a list of windows. */
  function rateText(rate) {
    if (Array.isArray(rate)) return rate.map(rateText).join(", ");
    var match = /^(\d+)\/(\w+)$/.exec(rate || "");
    if (!match) return rate;
    return Number(match[1]).toLocaleString("en-US") + " requests per " + match[2];
  }

  function loadAccount() {
    var me = state.me || {};
    var own = me.key_id
      ? api("GET", "/api-keys/" + encodeURIComponent(me.key_id)).then(
          function (result) {
            return (result.data && result.data.data) || {};
          },
          function () {
            return {};
          }
        )
      : Promise.resolve({});
    return Promise.all([api("GET", "/account"), own])
      .then(function (results) {
        var result = results[0];
        var ownKey = results[1];
        var account = (result.data && result.data.data) || {};
        state.account = account;
        if (account.name) $("whoami-account").textContent = account.name;
        describe($("account-details"), [
          ["Name", account.name || null],
          ["Account id", account.account_id || null],
          ["Email", account.email || null, "not set"],
          ["Plan", account.plan || null],
          ["API version", account.api_version || null],
        ]);
        var limits = [];
        var planRate = account.rate_limit || (account.limits && account.limits.rate_limit);
        if (planRate !== undefined) limits.push(["Plan rate limit, per key", planRate || null, "unlimited"]);
        if (account.limits && typeof account.limits === "object") {
          Object.keys(account.limits).forEach(function (name) {
            if (name === "rate_limit") return;
            var value = account.limits[name];
            limits.push([name.replace(/_/g, " "), value === null ? null : String(value), "unlimited"]);
          });
        }
        var seen = rateFromHeaders(result.headers);
        if (ownKey.rate_limit) {
          limits.push(["This key's own rate limit", rateText(ownKey.rate_limit)]);
        } else if (planRate === undefined) {
          // Without a limit of its own, a key is held to the plan's: what the gateway just applied.
          limits.push(["Plan rate limit, per key", seen, "none reported"]);
        }
        limits.push(["Key rotation", "every " + CONFIG.rotationDays + " days"]);
        describe($("account-limits"), limits);
        describe($("account-key"), [
          ["Name", me.name || null],
          ["Key id", me.key_id || null],
          ["Mode", me.mode || null],
          ["Permissions", (me.permissions || []).join(", ") || null, "none"],
          ["Created", me.created_at ? timeCell(me.created_at) : null],
          ["Expires", me.expires_at ? timeCell(me.expires_at) : null, "never"],
          ["Rotation due", me.rotation_due === undefined ? undefined : me.rotation_due ? "yes" : "no"],
        ]);
      })
      .catch(failed);
  }

  // Audit

  var AUDIT_CORE = ["id", "at", "actor", "action", "account_id", "key_id"];

  function loadAudit() {
    return api("GET", "/audit?limit=100")
      .then(function (result) {
        var events = (result.data && result.data.data) || [];
        var body = $("audit-body");
        clear(body);
        events.forEach(function (event) {
          var extra = Object.keys(event)
            .filter(function (name) {
              return AUDIT_CORE.indexOf(name) === -1;
            })
            .map(function (name) {
              var value = event[name];
              return name + ": " + (typeof value === "string" ? value : JSON.stringify(value));
            })
            .join("; ");
          body.appendChild(
            el("tr", null, [
              el("td", { "data-label": "When" }, [timeCell(event.at, "\u2014")]),
              el("td", { "data-label": "Action", text: event.action || "" }),
              el("td", { "data-label": "Key" }, [el("code", { text: event.key_id || "\u2014" })]),
              el("td", { "data-label": "By" }, [
                event.actor === "cli"
                  ? el("span", { text: "operator (command line)" })
                  : el("code", { text: event.actor || "" }),
              ]),
              el("td", { "data-label": "Details", text: extra }),
            ])
          );
        });
        show($("audit-empty"), events.length === 0);
      })
      .catch(failed);
  }

  // Alerts

  var ALERT_NAMES = {
    "alert.new_network": "New network",
    "alert.usage_spike": "Usage spike",
    "alert.denied_burst": "Burst of refusals",
    "alert.key_unused": "Key unused",
    "alert.rotation_due": "Rotation due",
    "alert.quota_threshold": "Quota threshold",
  };

  function alertText(event) {
    var d = event.data || {};
    switch (event.type) {
      case "alert.new_network":
        return "Used from " + (d.ip || "?") + ", in " + (d.network || "?") + ", a network it had not used before.";
      case "alert.usage_spike":
        return d.count + " requests in the last window; it usually makes " + d.baseline + ".";
      case "alert.denied_burst":
        var codes = Object.keys(d.codes || {}).map(function (code) {
          return code + " \u00d7" + d.codes[code];
        });
        return d.count + " refused requests (" + codes.join(", ") + ") from " + (d.ips || []).join(", ") + ".";
      case "alert.key_unused":
        return d.last_used_at ? "Not used since " + formatTime(d.last_used_at) + "." : "Never used.";
      case "alert.rotation_due":
        return "Created " + formatTime(d.created_at) + ", older than " + CONFIG.rotationDays + " days.";
      case "alert.quota_threshold":
        return (d.scope || "quota") + ": " + d.used + " of " + d.limit + " used.";
      default:
        return JSON.stringify(d);
    }
  }

  function loadAlerts() {
    var table = $("alerts-table");
    table.setAttribute("aria-busy", "true");
    return api("GET", "/events?type=alert.&limit=100")
      .then(function (result) {
        var events = (result.data && result.data.data) || [];
        var ids = [];
        events.forEach(function (event) {
          var id = event.data && event.data.key_id;
          if (id && ids.indexOf(id) === -1) ids.push(id);
        });
        return Promise.all(
          ids.map(function (id) {
            return api("GET", "/api-keys/" + encodeURIComponent(id)).then(
              function (r) {
                return r.data && r.data.data;
              },
              function () {
                return null;
              }
            );
          })
        ).then(function (keys) {
          var byId = {};
          keys.forEach(function (key) {
            if (key) byId[key.id] = key;
          });
          renderAlerts(events, byId);
        });
      })
      .catch(failed)
      .then(function () {
        table.removeAttribute("aria-busy");
      });
  }

  function renderAlerts(events, byId) {
    var body = $("alerts-body");
    clear(body);
    events.forEach(function (event) {
      var keyId = (event.data && event.data.key_id) || null;
      var key = keyId ? byId[keyId] : null;
      var name = key ? key.name || key.id : keyId || "\u2014";
      var actions = el("div", { className: "actions" });
      if (key && keyStatus(key) === "active") {
        var rotate = el("button", {
          type: "button",
          className: "button small secondary",
          "aria-label": "Rotate " + name,
          text: "Rotate",
        });
        rotate.addEventListener("click", function () {
          openRotate(key);
        });
        var revoke = el("button", {
          type: "button",
          className: "button small danger",
          "aria-label": "Revoke " + name,
          text: "Revoke",
        });
        revoke.addEventListener("click", function () {
          openRevoke(key);
        });
        actions.appendChild(rotate);
        actions.appendChild(revoke);
      } else if (key) {
        actions.appendChild(badge(keyStatus(key), keyStatus(key)));
      }
      var keyCell = [el("span", { className: "key-name", text: name })];
      if (key) keyCell.push(" ", el("code", { className: "key-mask", text: maskedKey(key) }));
      body.appendChild(
        el("tr", { "data-event-id": event.id, "data-type": event.type }, [
          cell("When", [timeCell(event.created_at, "\u2014")]),
          cell("Alert", [badge(ALERT_NAMES[event.type] || event.type, "due")]),
          cell("Key", keyCell),
          cell("What happened", [el("span", { text: alertText(event) })]),
          cell("Actions", [actions]),
        ])
      );
    });
    show($("alerts-empty"), events.length === 0);
    show($("alerts-table"), events.length > 0);
  }

  // Webhooks

  function loadWebhooks() {
    return api("GET", "/webhook-endpoints")
      .then(function (result) {
        var endpoints = (result.data && result.data.data) || [];
        var body = $("webhooks-body");
        clear(body);
        endpoints.forEach(function (endpoint) {
          body.appendChild(webhookRow(endpoint));
        });
        show($("webhooks-empty"), endpoints.length === 0);
        show($("webhooks-table"), endpoints.length > 0);
        if (state.deliveriesFor) {
          var still = endpoints.filter(function (e) {
            return e.id === state.deliveriesFor.id;
          })[0];
          if (still) return loadDeliveries(still);
          state.deliveriesFor = null;
          show($("deliveries"), false);
        }
      })
      .catch(failed);
  }

  function smallButton(text, label, kind, onClick) {
    var button = el("button", {
      type: "button",
      className: "button small " + (kind || "secondary"),
      "aria-label": label,
      text: text,
    });
    button.addEventListener("click", onClick);
    return button;
  }

  function webhookRow(endpoint) {
    var where = endpoint.description ? endpoint.url + " (" + endpoint.description + ")" : endpoint.url;
    var actions = el("div", { className: "actions" }, [
      smallButton("Send test", "Send a test event to " + endpoint.url, "secondary", function () {
        sendTest(endpoint);
      }),
      smallButton("Deliveries", "Deliveries to " + endpoint.url, "secondary", function () {
        loadDeliveries(endpoint);
      }),
      smallButton(
        endpoint.disabled ? "Enable" : "Disable",
        (endpoint.disabled ? "Enable " : "Disable ") + endpoint.url,
        "secondary",
        function () {
          setDisabled(endpoint, !endpoint.disabled);
        }
      ),
      smallButton("Delete", "Delete " + endpoint.url, "danger", function () {
        deleteEndpoint(endpoint);
      }),
    ]);
    return el("tr", { "data-endpoint-id": endpoint.id }, [
      el("th", { scope: "row", "data-label": "URL" }, [
        el("div", { className: "cell" }, [el("code", { className: "endpoint-url", text: where })]),
      ]),
      cell("Events", [el("span", { text: (endpoint.events || []).join(", ") })]),
      cell("Status", [
        endpoint.disabled ? badge("disabled", "revoked") : badge("enabled", "active"),
      ]),
      cell("Created", [timeCell(endpoint.created_at, "\u2014")]),
      cell("Actions", [actions]),
    ]);
  }

  function submitWebhook(event) {
    event.preventDefault();
    var form = $("webhook-form");
    clearFieldErrors(form);
    var events = $("webhook-events")
      .value.split(",")
      .map(function (part) {
        return part.trim();
      })
      .filter(Boolean);
    var body = { url: $("webhook-url").value.trim(), events: events.length ? events : ["*"] };
    var description = $("webhook-description").value.trim();
    if (description) body.description = description;
    $("webhook-submit").disabled = true;
    api("POST", "/webhook-endpoints", body)
      .then(function (result) {
        var created = (result.data && result.data.data) || {};
        form.reset();
        $("whsecret-value").value = created.secret || "";
        $("whsecret-dialog").showModal();
        $("whsecret-value").select();
        return loadWebhooks();
      })
      .catch(function (error) {
        if (error instanceof ApiError && error.status === 401) return failed(error);
        fieldError(
          ["url", "events", "description"].indexOf(error.field) !== -1 ? error.field : null,
          error.message,
          "webhook-error"
        );
      })
      .then(function () {
        $("webhook-submit").disabled = false;
      });
  }

  function sendTest(endpoint) {
    api("POST", "/webhook-endpoints/" + encodeURIComponent(endpoint.id) + "/test")
      .then(function () {
        showFlash("A test event is on its way to " + endpoint.url + ".");
        return loadDeliveries(endpoint);
      })
      .catch(failed);
  }

  function setDisabled(endpoint, disabled) {
    api("PATCH", "/webhook-endpoints/" + encodeURIComponent(endpoint.id), { disabled: disabled })
      .then(function () {
        showFlash("Endpoint " + endpoint.url + (disabled ? " disabled." : " enabled."));
        return loadWebhooks();
      })
      .catch(failed);
  }

  function deleteEndpoint(endpoint) {
    api("DELETE", "/webhook-endpoints/" + encodeURIComponent(endpoint.id))
      .then(function () {
        showFlash("Endpoint " + endpoint.url + " deleted.");
        return loadWebhooks();
      })
      .catch(failed);
  }

  function loadDeliveries(endpoint) {
    state.deliveriesFor = endpoint;
    return api("GET", "/webhook-endpoints/" + encodeURIComponent(endpoint.id) + "/deliveries?limit=50")
      .then(function (result) {
        var deliveries = (result.data && result.data.data) || [];
        $("deliveries-url").textContent = endpoint.url;
        var body = $("deliveries-body");
        clear(body);
        deliveries.forEach(function (d) {
          var answer = d.last_status_code ? String(d.last_status_code) : d.last_error || "\u2014";
          if (d.last_status_code && d.last_error) answer += " (" + d.last_error + ")";
          body.appendChild(
            el("tr", { "data-event-id": d.event_id }, [
              cell("Event", [el("code", { text: d.event_id })]),
              cell("Type", [el("span", { text: d.event_type })]),
              cell("Status", [badge(d.status, d.status === "delivered" ? "active" : d.status === "failed" ? "revoked" : "due")]),
              cell("Attempts", [el("span", { text: String(d.attempts) })]),
              cell("Last answer", [el("span", { text: answer })]),
              cell("Next attempt", [timeCell(d.next_attempt_at, "\u2014")]),
            ])
          );
        });
        show($("deliveries-empty"), deliveries.length === 0);
        show($("deliveries"), true);
      })
      .catch(failed);
  }

  // -- wiring -----------------------------------------------------------------------------

  function wire() {
    $("signin-form").addEventListener("submit", function (event) {
      event.preventDefault();
      var secret = $("signin-key").value.trim();
      if (!secret) {
        signInError("Paste an API key first.");
        $("signin-key").focus();
        return;
      }
      $("signin-submit").disabled = true;
      signIn(secret, false).then(function () {
        $("signin-submit").disabled = false;
      });
    });
    $("sign-out").addEventListener("click", function () {
      signOut("");
    });
    $("denied-sign-out").addEventListener("click", function () {
      signOut("");
    });
    window.addEventListener("hashchange", route);
    document.querySelectorAll('input[name="mode-filter"]').forEach(function (radio) {
      radio.addEventListener("change", function () {
        state.filter = radio.value;
        state.cursors = [];
        state.cursor = null;
        loadKeys();
      });
    });
    $("page-size").addEventListener("change", function () {
      state.limit = parseInt($("page-size").value, 10) || 10;
      state.cursors = [];
      state.cursor = null;
      loadKeys();
    });
    $("page-next").addEventListener("click", function () {
      if (!state.keys.length) return;
      state.cursors.push(state.cursor);
      state.cursor = state.keys[state.keys.length - 1].id;
      loadKeys();
    });
    $("page-prev").addEventListener("click", function () {
      if (!state.cursors.length) return;
      state.cursor = state.cursors.pop();
      loadKeys();
    });
    $("usage-back").addEventListener("click", function () {
      location.hash = "#keys";
    });
    $("create-open").addEventListener("click", openCreate);
    $("credits-open").addEventListener("click", openCredits);
    $("credits-form").addEventListener("submit", submitCredits);
    $("credits-cancel").addEventListener("click", function () {
      $("credits-dialog").close();
    });
    $("create-form").addEventListener("submit", submitCreate);
    $("create-cancel").addEventListener("click", function () {
      $("create-dialog").close();
    });
    $("create-dialog").addEventListener("close", function () {
      $("create-form").reset();
    });
    $("secret-copy").addEventListener("click", copySecret);
    $("secret-close").addEventListener("click", function () {
      $("secret-dialog").close();
    });
    $("secret-dialog").addEventListener("close", forgetSecret);
    $("rotate-form").addEventListener("submit", submitRotate);
    $("rotate-cancel").addEventListener("click", function () {
      $("rotate-dialog").close();
    });
    $("revoke-form").addEventListener("submit", submitRevoke);
    $("revoke-cancel").addEventListener("click", function () {
      $("revoke-dialog").close();
    });
    ["rotate-dialog", "revoke-dialog"].forEach(function (id) {
      $(id).addEventListener("close", function () {
        state.target = null;
      });
    });
    $("alerts-refresh").addEventListener("click", loadAlerts);
    $("webhook-form").addEventListener("submit", submitWebhook);
    $("whsecret-close").addEventListener("click", function () {
      $("whsecret-dialog").close();
    });
    $("whsecret-dialog").addEventListener("close", function () {
      $("whsecret-value").value = "";
    });
  }

  function start() {
    wire();
    var saved = null;
    try {
      saved = sessionStorage.getItem(STORAGE_KEY);
    } catch (e) {
      saved = null;
    }
    if (saved) {
      signIn(saved, true);
    } else {
      showView("signin");
      $("signin-key").focus();
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
