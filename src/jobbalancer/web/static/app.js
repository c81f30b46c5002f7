/* jobbalancer web UI behaviour. No inline scripts anywhere (the CSP forbids them): pages
   mark elements with classes and data-* attributes, and this file wires them up. */
(function () {
  "use strict";

  function $(selector, root) { return (root || document).querySelector(selector); }
  function $all(selector, root) { return Array.prototype.slice.call((root || document).querySelectorAll(selector)); }

  function showFlash(message) {
    var flash = document.getElementById("flash");
    if (!flash) return;
    flash.innerHTML = "";
    var div = document.createElement("div");
    div.className = "flash flash-error";
    div.setAttribute("role", "alert");
    var span = document.createElement("span");
    span.textContent = message;
    div.appendChild(span);
    flash.appendChild(div);
  }

  /* Flash messages: dismiss button. */
  document.addEventListener("click", function (ev) {
    var close = ev.target.closest && ev.target.closest(".flash-close");
    if (close) close.parentElement.remove();
  });

  /* An htmx request that failed: the server answers with a flash fragment; show it in
     the flash area instead of swapping it into the target. */
  document.addEventListener("htmx:beforeSwap", function (ev) {
    if (ev.detail.xhr.status >= 400) {
      ev.detail.shouldSwap = true;
      ev.detail.isError = false;
      ev.detail.target = document.getElementById("flash");
      ev.detail.swapOverride = "innerHTML";
    }
  });
  document.addEventListener("htmx:sendError", function () {
    showFlash("The server did not answer. Is it running? Retrying…");
  });
  document.addEventListener("htmx:afterRequest", function (ev) {
    // A refresh that works again clears the "did not answer" message.
    var flash = document.getElementById("flash");
    if (ev.detail.successful && flash && /did not answer/.test(flash.textContent)) flash.innerHTML = "";
  });

  /* Forms (or their buttons) with data-confirm ask first. */
  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    var submitter = ev.submitter;
    var message = (submitter && submitter.getAttribute("data-confirm")) || form.getAttribute("data-confirm");
    if (message && !window.confirm(message)) { ev.preventDefault(); return; }
    if (form.id === "bulk-form") {
      var back = form.querySelector("input[name=back]");
      if (back) back.value = window.location.pathname + window.location.search;
    }
  });

  /* The job list: a selection that survives the table's refreshes. */
  var selected = new Set();

  function syncSelection() {
    var boxes = $all("input.js-select");
    boxes.forEach(function (box) {
      box.checked = selected.has(box.value);
      var row = box.closest("tr");
      if (row) row.classList.toggle("selected", box.checked);
    });
    var all = $(".js-select-all");
    if (all) all.checked = boxes.length > 0 && boxes.every(function (b) { return b.checked; });
    var count = $(".js-selected-count");
    if (count) count.textContent = selected.size ? selected.size + " selected" : "No jobs selected";
    $all(".js-needs-selection").forEach(function (button) { button.disabled = selected.size === 0; });
    // Boxes of jobs no longer shown still count: they go with the form as hidden fields.
    var form = document.getElementById("bulk-form");
    if (form) {
      $all("input.js-kept", form).forEach(function (input) { input.remove(); });
      var shown = new Set(boxes.map(function (b) { return b.value; }));
      selected.forEach(function (id) {
        if (shown.has(id)) return;
        var input = document.createElement("input");
        input.type = "hidden"; input.name = "ids"; input.value = id; input.className = "js-kept";
        form.appendChild(input);
      });
    }
  }

  document.addEventListener("change", function (ev) {
    var t = ev.target;
    if (t.classList.contains("js-select")) {
      if (t.checked) selected.add(t.value); else selected.delete(t.value);
      syncSelection();
    } else if (t.classList.contains("js-select-all")) {
      $all("input.js-select").forEach(function (box) {
        if (t.checked) selected.add(box.value); else selected.delete(box.value);
      });
      syncSelection();
    } else if (t.classList.contains("js-stream-toggle")) {
      var log = document.getElementById("log");
      if (log) log.classList.toggle("hide-" + t.getAttribute("data-stream"), !t.checked);
    }
  });
  document.addEventListener("htmx:afterSettle", syncSelection);

  /* Changing a filter starts again at the newest page. */
  document.addEventListener("input", function (ev) {
    var form = ev.target.closest && ev.target.closest("#job-filters");
    if (!form) return;
    var cursor = form.querySelector("input[name=cursor]");
    if (cursor) cursor.remove();
    selected.clear();
  }, true);

  /* A job's log, live: server-sent events from the API, from where the page stopped. */
  function streamLog() {
    var log = document.getElementById("log");
    if (!log || !log.dataset.streamUrl || !window.EventSource) return;
    var url = log.dataset.streamUrl + "?offset=" + encodeURIComponent(log.dataset.offset || "0");
    var source = new EventSource(url);
    source.addEventListener("output", function (ev) {
      var item = JSON.parse(ev.data);
      var stick = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
      var last = log.lastElementChild;
      if (last && last.className === item.stream) {
        last.textContent += item.data;
      } else {
        var span = document.createElement("span");
        span.className = item.stream;
        span.textContent = item.data;
        log.appendChild(span);
      }
      var empty = $(".js-log-empty");
      if (empty) empty.remove();
      if (stick) log.scrollTop = log.scrollHeight;
    });
    source.addEventListener("end", function () {
      source.close();
      // The job is over: show its final state, exit code and buttons.
      window.setTimeout(function () { window.location.reload(); }, 300);
    });
    source.addEventListener("error", function (ev) {
      if (ev.data) { source.close(); showFlash(JSON.parse(ev.data).message || "The log stream ended."); }
    });
  }

  /* /jobs#submit (the dashboard's "Submit a job") opens the form. */
  function openFromHash() {
    if (window.location.hash !== "#submit") return;
    var details = document.getElementById("submit");
    if (details && details.tagName === "DETAILS") {
      details.open = true;
      var first = details.querySelector("textarea, select");
      if (first) first.focus();
    }
  }

  /* Times: the server writes UTC into <time data-when>; show them in the browser's zone,
     as dense as the server's ("18:20:03" today, "11-28 18:20" this year), UTC on hover. */
  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function localize(root) {
    var now = new Date();
    $all("time[data-when]", root || document).forEach(function (el) {
      var d = new Date(el.getAttribute("datetime"));
      if (isNaN(d.getTime())) return;
      var date = d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate());
      var time = pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
      var text = date + " " + time;
      if (el.getAttribute("data-when") === "short") {
        if (d.toDateString() === now.toDateString()) text = time;
        else if (d.getFullYear() === now.getFullYear()) text = date.slice(5) + " " + time.slice(0, 5);
        else text = date;
      }
      el.textContent = text;
    });
  }
  // afterSwap runs before the browser paints the new rows: no flash of UTC times.
  document.addEventListener("htmx:afterSwap", function (ev) { localize(ev.detail.target); });

  function ready() { localize(); streamLog(); openFromHash(); }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", ready);
  else ready();
})();
