/* jobbalancer web UI behaviour. No inline scripts anywhere (the CSP forbids them): pages
   mark elements with data-* attributes and this file wires them up. */
(function () {
  "use strict";

  function csrfToken() {
    var headers = document.body.getAttribute("hx-headers");
    if (!headers) return "";
    try { return JSON.parse(headers)["X-CSRF-Token"] || ""; } catch (e) { return ""; }
  }

  /* Flash messages: dismiss button. */
  document.addEventListener("click", function (ev) {
    var close = ev.target.closest && ev.target.closest(".flash-close");
    if (close) close.parentElement.remove();
  });

  /* An htmx request that failed: the server answers with a flash fragment; show it in
     the flash area instead of swapping it into the target. */
  document.addEventListener("htmx:beforeSwap", function (ev) {
    var status = ev.detail.xhr.status;
    if (status >= 400) {
      ev.detail.shouldSwap = true;
      ev.detail.isError = false;
      ev.detail.target = document.getElementById("flash");
      ev.detail.swapOverride = "innerHTML";
    }
  });
  document.addEventListener("htmx:sendError", function () {
    var flash = document.getElementById("flash");
    if (flash) {
      flash.innerHTML = "";
      var div = document.createElement("div");
      div.className = "flash flash-error";
      div.setAttribute("role", "alert");
      var span = document.createElement("span");
      span.textContent = "The server did not answer. Is it running? Retrying…";
      div.appendChild(span);
      flash.appendChild(div);
    }
  });

  /* Forms with data-confirm ask first (htmx elements use hx-confirm instead). */
  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    var submitter = ev.submitter;
    var message = (submitter && submitter.getAttribute("data-confirm")) || form.getAttribute("data-confirm");
    if (message && !window.confirm(message)) ev.preventDefault();
  });

  window.jobbalancer = { csrfToken: csrfToken };
})();
