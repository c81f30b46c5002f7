/* Secrets shown once (a new password or API key on a user's page). Copy buttons (.js-copy, data-copy = the id of the element whose text to copy), for a
   password or API key shown once. The clipboard API needs a secure context (https or
   localhost); elsewhere the text is selected and copied the old way. */
(function () {
  "use strict";

  function selectText(el) {
    var range = document.createRange();
    range.selectNodeContents(el);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  function done(button, text) {
    var label = button.getAttribute("data-label") || button.textContent;
    button.setAttribute("data-label", label);
    button.textContent = text;
    window.setTimeout(function () { button.textContent = label; }, 2000);
  }

  /* A page showing a secret once was the answer to a POST: make its address the plain
     page, so a reload shows the page without the secret (and posts nothing again). */
  var shown = document.querySelector(".js-shown-once[data-url]");
  if (shown && window.history.replaceState) window.history.replaceState(null, "", shown.getAttribute("data-url"));

  document.addEventListener("click", function (ev) {
    var button = ev.target.closest && ev.target.closest(".js-copy");
    if (!button) return;
    var source = document.getElementById(button.getAttribute("data-copy"));
    if (!source) return;
    var text = source.textContent;
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(
        function () { done(button, "Copied"); },
        function () { selectText(source); done(button, "Press Ctrl+C"); }
      );
      return;
    }
    selectText(source);
    var copied = false;
    try { copied = document.execCommand("copy"); } catch (e) { copied = false; }
    done(button, copied ? "Copied" : "Press Ctrl+C");
  });
})();
