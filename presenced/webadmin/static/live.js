// Live figures for the overview: poll /live/stats and refresh every element whose data-live
// attribute names a figure ("sessions", "sessions_by_door.xmpp"). Text only (textContent):
// nothing from the server is ever parsed as HTML. Pages work the same without this script.
(function () {
  "use strict";
  var INTERVAL_MS = 2000;

  function lookup(doc, key) {
    return key.split(".").reduce(function (value, part) {
      return value === undefined || value === null ? undefined : value[part];
    }, doc);
  }

  function duration(seconds) {
    var s = Math.floor(seconds), parts = [];
    [[86400, "d"], [3600, "h"], [60, "min"], [1, "s"]].forEach(function (unit) {
      var n = Math.floor(s / unit[0]);
      s -= n * unit[0];
      if (n) { parts.push(n + " " + unit[1]); }
    });
    return (parts.length ? parts : ["0 s"]).slice(0, 2).join(" ");
  }

  function show(doc, previous) {
    if (previous && doc.time > previous.time) {
      var elapsed = doc.time - previous.time;
      doc.events_per_second = (doc.events_sent - previous.events_sent) / elapsed;
      doc.deliveries_per_second = (doc.deliveries - previous.deliveries) / elapsed;
    }
    document.querySelectorAll("[data-live]").forEach(function (element) {
      var key = element.getAttribute("data-live");
      var value = lookup(doc, key);
      if (key === "uptime") { value = duration(value); }
      else if (/_per_second$/.test(key)) { value = Number(value).toFixed(1); }
      else if (value === undefined || value === null) { value = key.indexOf("sessions_by_door.") === 0 ? 0 : "…"; }
      element.textContent = String(value);
    });
  }

  function poll(previous) {
    fetch("/live/stats", {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.json();
      })
      .then(function (doc) {
        show(doc, previous);
        document.body.setAttribute("data-live-updated", String(doc.time));
        setTimeout(function () { poll(doc); }, INTERVAL_MS);
      })
      .catch(function () { setTimeout(function () { poll(previous); }, INTERVAL_MS * 5); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (document.querySelector("[data-live]")) { poll(null); }
  });
})();
