// keyward console: progressive enhancement only. Every page works without
// this script; the server checks everything again.
(function () {
  "use strict";
  // Create New API Key: the button waits for a name and a permission set,
  // presets tick their sets, and broad write access asks for confirmation.
  var form = document.getElementById("create-key");
  if (form) {
    var limit = parseInt(form.getAttribute("data-broad"), 10) || 10;
    var name = document.getElementById("name");
    var button = document.getElementById("create");
    var warning = document.getElementById("broad-warning");
    var count = document.getElementById("broad-count");
    var ack = document.getElementById("acknowledge");
    var sets = function () { return form.querySelectorAll("input[name=set]"); };
    var update = function () {
      var chosen = 0, writes = 0;
      sets().forEach(function (s) {
        if (s.checked) { chosen += 1; if (s.getAttribute("data-write") === "true") { writes += 1; } }
      });
      var presets = form.querySelectorAll("input[name=preset]:checked").length;
      var broad = writes > limit;
      warning.hidden = !broad;
      count.textContent = String(writes);
      var ready = name.value.trim().length > 0 && (chosen + presets) > 0 && (!broad || ack.checked);
      button.disabled = !ready;
    };
    form.querySelectorAll("input[name=preset]").forEach(function (p) {
      p.addEventListener("change", function () {
        var ids = (p.getAttribute("data-sets") || "").split(" ");
        sets().forEach(function (s) { if (ids.indexOf(s.value) >= 0) { s.checked = p.checked; } });
        update();
      });
    });
    form.addEventListener("input", update);
    form.addEventListener("change", update);
    update();
  }
  // Copy buttons.
  document.querySelectorAll("[data-copy]").forEach(function (b) {
    b.addEventListener("click", function () {
      var field = document.getElementById(b.getAttribute("data-copy"));
      var done = document.getElementById("copied");
      var say = function (text) { if (done) { done.textContent = text; } };
      field.select();
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(field.value).then(function () { say("Copied."); }, function () { say("Press Ctrl+C to copy."); });
      } else {
        try { document.execCommand("copy"); say("Copied."); } catch (e) { say("Press Ctrl+C to copy."); }
      }
    });
  });
  // Confirmation before destructive forms.
  document.querySelectorAll("form[data-confirm]").forEach(function (f) {
    f.addEventListener("submit", function (e) {
      if (!window.confirm(f.getAttribute("data-confirm"))) { e.preventDefault(); }
    });
  });
})();
