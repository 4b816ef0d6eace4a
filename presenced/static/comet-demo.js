// The comet demo: one EventSource on /stream/<user>; now playing per friend, other events
// in a log. ?user=...&token=... in the page address connects at once.
"use strict";

const MAX_LOG = 50;
let source = null;

function $(id) { return document.getElementById(id); }

function setStatus(text, kind) {
  const status = $("status");
  status.textContent = text;
  status.className = "status " + (kind || "");
}

function describeTune(event) {
  if (!event.artist && !event.title) return null;
  let text = [event.artist, event.title].filter(Boolean).join(" — ");
  if (event.source) text += " (" + event.source + ")";
  return text;
}

function showTune(event) {
  const list = $("playing");
  const empty = list.querySelector(".empty");
  if (empty) empty.remove();
  let row = list.querySelector('li[data-from="' + CSS.escape(event.from) + '"]');
  if (!row) {
    row = document.createElement("li");
    row.dataset.from = event.from;
    list.appendChild(row);
  }
  const tune = describeTune(event);
  row.textContent = "";
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = event.from + ": ";
  const what = document.createElement("span");
  what.className = tune ? "tune" : "tune stopped";
  what.textContent = tune || "stopped";
  row.append(who, what);
}

function logEvent(event) {
  const log = $("events");
  const row = document.createElement("li");
  row.textContent = JSON.stringify(event);
  log.prepend(row);
  while (log.children.length > MAX_LOG) log.lastChild.remove();
}

function connect(user, token) {
  if (source) source.close();
  let url = "/stream/" + encodeURIComponent(user);
  if (token) url += "?token=" + encodeURIComponent(token);
  setStatus("connecting…");
  source = new EventSource(url);
  source.onmessage = (message) => {
    const event = JSON.parse(message.data);
    if (event.type === "welcome") setStatus("live as " + event.user, "live");
    else if (event.type === "tune") showTune(event);
    else logEvent(event);
  };
  source.onerror = () => {
    // EventSource retries by itself (resuming from Last-Event-ID); a refused token closes it.
    setStatus(source.readyState === EventSource.CLOSED ? "refused (check user and token)"
                                                       : "reconnecting…", "error");
  };
}

$("connect").addEventListener("submit", (e) => {
  e.preventDefault();
  connect($("user").value.trim(), $("token").value.trim());
});

const params = new URLSearchParams(location.search);
if (params.get("user")) {
  $("user").value = params.get("user");
  $("token").value = params.get("token") || "";
  connect($("user").value, $("token").value);
}
