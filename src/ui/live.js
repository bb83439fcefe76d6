// fleming ui: keeps the statuses on the page current while a `fleming run` goes on
// elsewhere, without reloading. Every element with `data-stage` gets the stage's
// `data-status`; boxes of the graph and status cells are recoloured, `why` cells
// show the progress of running stages.
(function () {
  "use strict";
  if (!document.querySelector("[data-stage]") && !document.getElementById("summary")) return;
  var conn = document.getElementById("conn");
  function apply(status) {
    var byName = {};
    status.stages.forEach(function (s) { byName[s.name] = s; });
    document.querySelectorAll("[data-stage]").forEach(function (el) {
      var s = byName[el.getAttribute("data-stage")];
      if (!s) return;
      el.setAttribute("data-status", s.status);
      if (el.matches("g.stage")) {
        var rect = el.querySelector("rect");
        if (rect) rect.setAttribute("fill", s.colour);
        var title = el.querySelector("title");
        if (title) title.textContent = s.name + ": " + s.status + (s.why ? " \u2014 " + s.why : "");
      } else if (el.matches("tr")) {
        var cell = el.querySelector("td.status");
        if (cell) { cell.textContent = s.status; cell.style.background = s.colour; }
        var why = el.querySelector("td.why");
        if (why) why.textContent = s.why;
      } else if (el.matches("td.why")) {
        el.textContent = s.why || s.status;
      } else if (el.matches(".status")) {
        el.textContent = s.status;
        el.style.background = s.colour;
      }
    });
    var summary = document.getElementById("summary");
    if (summary) summary.textContent = status.summary;
  }
  function poll() {
    fetch("/api/status", { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
      .then(function (s) { if (conn) conn.textContent = ""; apply(s); })
      .catch(function () { if (conn) conn.textContent = "not connected to fleming ui"; })
      .then(function () { setTimeout(poll, 1000); });
  }
  setTimeout(poll, 1000);
})();

// Evaluation reports are same-origin documents (srcdoc): show them whole, not in a
// scrolling box.
document.querySelectorAll("iframe[srcdoc]").forEach(function (f) {
  function fit() {
    try { f.style.height = (f.contentDocument.documentElement.scrollHeight + 24) + "px"; } catch (e) { /* keep the default */ }
  }
  f.addEventListener("load", fit);
  fit();
});
