/* The script editor (/scripts/...): CodeMirror 5 on the script's textarea, highlighting
   for the interpreter picked (or the #! line). A static file: the CSP forbids inline
   scripts. (The "another program" field shows by CSS alone, :has.) */
(function () {
  "use strict";

  // Interpreter (its file name, without version digits) -> CodeMirror mode.
  var MODES = {
    sh: "shell", bash: "shell", dash: "shell", zsh: "shell", ksh: "shell", ash: "shell",
    python: "python", pypy: "python",
    node: "javascript", nodejs: "javascript", deno: "javascript", bun: "javascript",
    php: "text/x-php",
    perl: "perl",
    ruby: "ruby"
  };

  function modeFor(program) {
    var base = (program || "").trim().split("/").pop().replace(/[0-9.]+$/, "");
    return MODES[base] || null;
  }

  // "#!/usr/bin/env python3" -> "python3"; "#!/bin/bash -e" -> "bash".
  function shebangProgram(text) {
    var match = /^#!\s*(\S+)(?:\s+(\S+))?/.exec(text || "");
    if (!match) return "";
    var program = match[1];
    if (/(^|\/)env$/.test(program) && match[2]) program = match[2];
    return program;
  }

  function setUp() {
    var area = document.querySelector("textarea.js-code-editor");
    var picker = document.querySelector("select.js-interpreter");
    var path = document.querySelector("input.js-interpreter-path");
    if (!area || !picker) return;

    function chosenProgram(content) {
      if (picker.value === "custom") return path ? path.value : "";
      if (picker.value === "shebang") return shebangProgram(content);
      return picker.value;
    }

    if (!window.CodeMirror) return;  // the editor did not load: the textarea still works
    var editor = window.CodeMirror.fromTextArea(area, {
      lineNumbers: true,
      indentUnit: 4,
      tabSize: 4,
      indentWithTabs: false,
      lineWrapping: false,
      readOnly: area.readOnly ? "nocursor" : false,
      viewportMargin: Infinity,
      extraKeys: { Tab: function (cm) { cm.execCommand(cm.somethingSelected() ? "indentMore" : "insertSoftTab"); } }
    });
    editor.getWrapperElement().classList.add("code-editor");
    var wrapper = editor.getWrapperElement();
    wrapper.setAttribute("data-mode", "");

    function highlight() {
      var mode = modeFor(chosenProgram(editor.getValue()));
      if (editor.getOption("mode") !== mode) editor.setOption("mode", mode);
      wrapper.setAttribute("data-mode", mode || "plain");
    }
    highlight();
    picker.addEventListener("change", highlight);
    if (path) path.addEventListener("input", highlight);
    // A #! line typed or changed picks the highlighting too.
    editor.on("change", function (cm, change) { if (change.from.line === 0) highlight(); });
    // CodeMirror copies its text back into the textarea when the form is submitted.
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", setUp);
  else setUp();
})();
