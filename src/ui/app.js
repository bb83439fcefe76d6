// fleming ui's script (the only one; compiled into the binary).
//
// The graph: find a stage, zoom. Live statuses: keeps the statuses on the page current while
// a `fleming run` goes on elsewhere, without reloading. Every element with `data-stage` gets the stage's
// `data-status`; boxes of the graph and status cells are recoloured, `why` cells
// show the progress of running stages.
(function () {
  "use strict";
  // Milliseconds from navigation start to the load event (the page parsed, its graph
  // laid out): the UI benchmark reads it.
  window.addEventListener("load", function () {
    document.body.getBoundingClientRect(); // forces the layout, if not done yet
    document.documentElement.setAttribute("data-load-ms", String(Math.round(performance.now())));
  });
  var svg = document.querySelector(".dagbox svg");
  var zoom = document.getElementById("zoom");
  if (svg && zoom) {
    var w = Number(svg.getAttribute("width")), h = Number(svg.getAttribute("height"));
    var setZoom = function (pct) {
      svg.setAttribute("width", String(w * pct / 100));
      svg.setAttribute("height", String(h * pct / 100));
    };
    zoom.addEventListener("input", function () { setZoom(Number(zoom.value)); });
    // A graph wider than its box starts zoomed out to fit (not below a readable 35%).
    var box = svg.parentNode.clientWidth;
    if (box && w > box) {
      zoom.value = String(Math.max(35, Math.floor(100 * box / w)));
      setZoom(Number(zoom.value));
    }
  }
  var find = document.getElementById("find");
  if (find) {
    find.addEventListener("change", function () {
      document.querySelectorAll("g.stage.found").forEach(function (g) { g.classList.remove("found"); });
      var g = document.querySelector('g.stage[data-stage="' + CSS.escape(find.value) + '"]');
      if (g) {
        g.classList.add("found");
        g.scrollIntoView({ block: "center", inline: "center" });
      }
    });
  }
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
    // How many updates were applied (tests read it).
    var root = document.documentElement;
    root.setAttribute("data-polls", String(Number(root.getAttribute("data-polls") || 0) + 1));
  }
  function poll() {
    fetch("/api/status", { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        // An error with a reason (the pipeline file no longer loads, say) is shown as such.
        return r.json().catch(function () { return { error: "fleming ui answered " + r.status }; });
      })
      .then(function (s) {
        if (s.error) { if (conn) conn.textContent = s.error.split("\n")[0]; return; }
        if (conn) conn.textContent = "";
        apply(s);
      })
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
