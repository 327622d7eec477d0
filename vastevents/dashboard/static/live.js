// Live updates: each event the journal gets arrives over Server-Sent Events (/stream); the page then fetches
// itself again and swaps in the server-rendered, escaped #live part. Without JavaScript the pages still work.
(function () {
  "use strict";
  var main = document.getElementById("live");
  var status = document.getElementById("live-status");
  if (!main || !status || !window.EventSource || !window.fetch) return;
  var timer = null;
  var busy = false;

  function refresh() {
    timer = null;
    if (busy) { timer = setTimeout(refresh, 500); return; }
    busy = true;
    fetch(location.href, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (html === null) return;
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("live");
        if (fresh) main.replaceChildren.apply(main, Array.prototype.slice.call(fresh.childNodes));
      })
      .catch(function () {})
      .then(function () { busy = false; });
  }

  status.textContent = "connecting…";
  var source = new EventSource("/stream");
  source.onopen = function () { status.textContent = "live"; status.className = "live on"; };
  source.onerror = function () { status.textContent = "reconnecting…"; status.className = "live off"; };
  source.onmessage = function (message) {
    var event = JSON.parse(message.data);
    status.textContent = "live · last #" + event.id + " " + event.name;
    if (main.dataset.live === "1" && timer === null) timer = setTimeout(refresh, 250);
  };
})();
